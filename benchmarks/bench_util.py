"""Pieces the benchmark scripts share: a lean train step with the library's
optimizer, the machine description and the results JSON."""

import json
import os
import platform
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf.training import optim


# The shared ImageNet photos, ../shared beside the checkout.
SAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                           "..", "shared", "data", "imagenet-samples")


def applications_model(name, input_shape):
  """keras.applications' model of our variant `name` (efficientnetv2-b0 ->
  EfficientNetV2B0): random weights, logits, no preprocessing layers, as
  ours is built."""
  class_name = "EfficientNetV2" + name.split("-", 1)[1].upper()
  return getattr(keras.applications, class_name)(
      weights=None, input_shape=input_shape, include_preprocessing=False,
      classifier_activation=None)


def random_batch(size, batch):
  """Seeded float32 images in [-1, 1] and labels of 1000 classes (NumPy)."""
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32")
  labels = rng.integers(0, 1000, batch)
  return images, labels


# The learning rate of every compared step, TensorFlow's and timm's.
LEARNING_RATE = 0.01


def train_config(name="momentum", fused=False):
  """The ImageNet config's `train` section (the paper's RMSProp rho,
  momentum and epsilon) with `train.optimizer` = `name` (optim.OPTIMIZERS)
  and `train.fused_optimizer` = `fused`."""
  return config_lib.build_config(
      dataset_cfg="imagenet", hparam_str=(
          f"train.optimizer={name},"
          f"train.fused_optimizer={str(bool(fused)).lower()}")).train


def build_optimizer(name="momentum", fused=False):
  """The library's optimizer `name` (`optim.build_optimizer` of
  `train_config`) at LEARNING_RATE: default SGD with momentum, Keras'
  class; wrapped for loss scaling under a mixed_float16 policy."""
  return optim.build_optimizer(train_config(name, fused), LEARNING_RATE)


def optimizer_values():
  """{learning_rate, momentum, rho, epsilon} of `build_optimizer`, for timm's
  side (benchmarks/peers_torch.py), which cannot import the library."""
  train = train_config()
  return {"learning_rate": LEARNING_RATE, "momentum": train.momentum,
          "rho": train.rmsprop_rho, "epsilon": train.epsilon}


def lean_train_step(model, optimizer=None):
  """A tf.function (images, labels) -> loss: `optimizer` (default
  `build_optimizer()`: SGD with momentum), softmax cross-entropy, no
  metrics; the same step for every model compared. A LossScaleOptimizer's
  loss scaling is applied."""
  optimizer = optimizer or build_optimizer()
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function
  def step(images, labels):
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(images, training=True))
      scaled = optimizer.scale_loss(loss)  # the identity unless scaling
    grads = tape.gradient(scaled, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  return step


def rate_runner(call, batch):
  """run(steps) -> images/s of `steps` calls of `call` (no arguments,
  returns a tensor), `batch` images each, timed until the last result is
  ready, after one untimed call (warm again after other models ran)."""
  def run(steps):
    call().numpy()
    started = time.perf_counter()
    for _ in range(steps):
      out = call()
    out.numpy()
    return steps * batch / (time.perf_counter() - started)

  return run


def cpu_description():
  """'model, cores, cache, AVX-512 yes/no' from /proc/cpuinfo (elsewhere:
  platform.processor()).

  Ratios between TensorFlow kernels depend on the CPU: fused batch norm
  gave our B0 step 1.03x keras.applications' on one 2-core machine and
  1.34x on another of the same kind, so results name it.
  """
  try:
    with open("/proc/cpuinfo") as f:
      info = f.read()
  except OSError:
    return platform.processor()
  fields = dict(line.split(":", 1) for line in info.splitlines()
                if ":" in line)
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  avx512 = "avx512f" in fields.get("flags", "").split()
  return (f"{fields.get('model name', '?')}, {os.cpu_count()} cores, "
          f"cache {fields.get('cache size', '?')}, "
          f"AVX-512 {'yes' if avx512 else 'no'}")


def machine():
  """What a benchmark ran on: platform, CPUs (all, usable by this
  process), `cpu_description`, Python, TensorFlow, GPUs."""
  usable = (len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else None)
  return {"platform": platform.platform(), "cpus": os.cpu_count(),
          "cpus_usable": usable, "cpu": cpu_description(),
          "python": platform.python_version(),
          "tensorflow": tf.__version__,
          "gpus": len(tf.config.list_physical_devices("GPU"))}


def write_results(path, payload):
  """Writes `payload` plus the `machine` it ran on as JSON (skip if no
  path)."""
  if not path:
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump({"machine": machine(), **payload}, f, indent=2)
    f.write("\n")
  print(f"Wrote {path}")


# (group, name fragments): an op (TensorFlow op type or PyTorch operator,
# lowercased, '_' removed) joins the first group one of whose fragments
# it contains. PyTorch runs depthwise convolutions through the same
# operators as dense ones, so both are one group on both sides.
KERNEL_GROUPS = (
    ("convolutions and matmuls", ("conv", "matmul", "aten::mm", "addmm")),
    ("batch norm", ("batchnorm",)),
    ("swish (sigmoid, silu)", ("sigmoid", "swish", "silu")),
    ("threads waiting (TensorFlow's IDLE)", ("idle",)),
    ("other (element-wise, copies, optimizer, loss)", ("",)),
)


def kernel_groups(ms_per_op):
  """{group: ms per step} of {op name: ms per step} (KERNEL_GROUPS)."""
  totals = {group: 0.0 for group, _ in KERNEL_GROUPS}
  for name, ms in ms_per_op.items():
    key = name.lower().replace("_", "")
    group = next(g for g, parts in KERNEL_GROUPS
                 if any(p in key for p in parts))
    totals[group] += ms
  return totals


TORCH_INSTALL = ("python3.11 -m venv ../peers-venv && ../peers-venv/bin/pip "
                 "install torch==2.14.1 torchvision==0.29.1 timm, then "
                 "--torch_python=../peers-venv/bin/python (benchmarks/"
                 "README.md)")


def torch_python(requested):
  """The Python for timm's side: `requested` (an error if it cannot import
  torch and timm), else this one if it can, else None after one line."""
  python = requested or sys.executable
  found = subprocess.run([python, "-c", "import torch, timm"],
                         capture_output=True, check=False).returncode == 0
  if found:
    return python
  if requested:
    raise SystemExit(f"--torch_python={python} cannot import torch and timm.")
  print(f"timm rows skipped: {python} cannot import torch and timm; "
        f"install them with: {TORCH_INSTALL}", flush=True)
  return None


class TorchWorker:
  """benchmarks/peers_torch.py in `python` (one that imports torch and
  timm): one JSON command line each way (see that file)."""

  SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "peers_torch.py")

  def __init__(self, python):
    self.process = subprocess.Popen([python, self.SCRIPT],
                                    stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)

  def setup(self, **command):
    """The setup command (see peers_torch.py) with `optimizer_values`."""
    return self.ask(cmd="setup", optimizer=optimizer_values(), **command)

  def ask(self, **command):
    self.process.stdin.write(json.dumps(command) + "\n")
    self.process.stdin.flush()
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"{self.SCRIPT} ended (exit {self.process.wait()})")
    return json.loads(line)

  def close(self):
    self.process.stdin.close()
    self.process.wait()
