"""The PyTorch side of peers.py: timm's EfficientNetV2 in a worker process.

Started by benchmarks/peers.py with the Python of --torch_python (one that
imports torch and timm; TensorFlow is not needed). It reads one JSON
command a line on stdin and answers each with one JSON line on stdout:

- {"cmd": "setup", "task": "train"|"train_rmsprop"|"inference",
   "model": timm name,
   "batch_file": .npz of images (NHWC float32) and labels, "warmup": N,
   "optimizer": {"learning_rate", "momentum", "rho", "epsilon"}}
  builds `timm.create_model(model, num_classes=1000)` (dropout and drop
  path 0.2, as ours) twice, as is
  (NCHW) and in channels-last memory format, runs N untimed steps of
  each, answers {"rows": [{"model", "params", "trainable"}, ...],
  "torch": version, "timm": version};
- {"cmd": "round", "steps": N} times N steps of each model in turn and
  answers {"rates": [images/s, ...]};
- {"cmd": "profile", "steps": N} runs N steps of the channels-last model
  of the last setup under `torch.profiler` (CPU) and answers {"ops":
  {op name: self time in ms per step}, "wall_ms": ms per step};
- end of input exits.

The train step is peers.py's on the TensorFlow side: SGD with momentum or
timm's RMSpropTF (decay `rho`, momentum, epsilon inside the square root, as
Keras' RMSprop), with the setup's optimizer values (the library's, from
benchmarks/bench_util.py `optimizer_values`), softmax cross-entropy,
float32; inference is the model in eval mode under
torch.inference_mode().
"""

import json
import os
import sys
import time

import numpy as np
import timm
from timm.optim import RMSpropTF
import torch


def _runner(task, model_name, images, labels, channels_last, values):
  """Returns run(steps) -> images/s of one model; `images` NCHW, `values`
  the setup's optimizer values."""
  torch.manual_seed(0)
  # Dropout 0.2 and stochastic depth up to 0.2, as ours (B0 and S: survival
  # 0.8) and keras.applications train, so every step does the same work.
  model = timm.create_model(model_name, num_classes=1000, drop_rate=0.2,
                            drop_path_rate=0.2)
  x = images.clone()
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  if task.startswith("train"):
    model.train()
    lr, momentum = values["learning_rate"], values["momentum"]
    if task == "train_rmsprop":  # TensorFlow's RMSProp, as Keras' in peers.py
      optimizer = RMSpropTF(model.parameters(), lr=lr, alpha=values["rho"],
                            eps=values["epsilon"], momentum=momentum)
    else:
      optimizer = torch.optim.SGD(model.parameters(), lr=lr,
                                  momentum=momentum)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
      optimizer.zero_grad(set_to_none=True)
      loss = loss_fn(model(x), labels)
      loss.backward()
      optimizer.step()
  else:
    model.eval()

    def step():
      with torch.inference_mode():
        model(x)

  def run(steps):
    step()  # untimed: warms up again after the other models ran
    started = time.perf_counter()
    for _ in range(steps):
      step()
    return steps * len(x) / (time.perf_counter() - started)

  run.step = step  # for the profile command

  # Keras' count_params() includes batch norm's moving statistics, which
  # torch keeps as buffers: count them too, so the columns compare.
  stats = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
  trainable = sum(p.numel() for p in model.parameters())
  name = "timm channels-last" if channels_last else "timm"
  return {"model": name, "params": trainable + stats,
          "trainable": trainable}, run


def _profile(step, steps):
  """{"ops": {name: self ms per step}, "wall_ms"} of `steps` calls."""
  step()
  with torch.profiler.profile(
      activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    started = time.perf_counter()
    for _ in range(steps):
      step()
    wall = time.perf_counter() - started
  ops = {e.key: e.self_cpu_time_total / 1e3 / steps
         for e in prof.key_averages()}
  return {"ops": ops, "wall_ms": 1e3 * wall / steps}


def main():
  torch.set_num_threads(os.cpu_count())
  runners = []
  for line in sys.stdin:
    command = json.loads(line)
    if command["cmd"] == "setup":
      batch = np.load(command["batch_file"])
      images = torch.from_numpy(
          np.ascontiguousarray(batch["images"].transpose(0, 3, 1, 2)))
      labels = torch.from_numpy(batch["labels"].astype(np.int64))
      runners = [_runner(command["task"], command["model"], images, labels,
                         channels_last, command["optimizer"])
                 for channels_last in (False, True)]
      for _, run in runners:
        run(command["warmup"])
      answer = {"rows": [row for row, _ in runners],
                "torch": torch.__version__, "timm": timm.__version__}
    elif command["cmd"] == "profile":
      answer = _profile(runners[-1][1].step, command["steps"])
    elif command["cmd"] == "round":
      answer = {"rates": [run(command["steps"]) for _, run in runners]}
    else:
      raise ValueError(f"unknown command {command['cmd']!r}")
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
  main()
