"""Pieces the benchmark scripts share: a lean train step, results JSON."""

import json
import os
import platform
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf


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


def lean_train_step(model, optimizer=None):
  """A tf.function (images, labels) -> loss: `optimizer` (default SGD with
  momentum), softmax cross-entropy, no metrics; the same step for every
  model compared. A LossScaleOptimizer's loss scaling is applied."""
  optimizer = optimizer or keras.optimizers.SGD(0.01, momentum=0.9)
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


def write_results(path, payload):
  """Writes `payload` plus the machine it ran on as JSON (skip if no path)."""
  if not path:
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  machine = {"platform": platform.platform(), "cpus": os.cpu_count(),
             "cpu": cpu_description(),
             "python": platform.python_version(),
             "tensorflow": tf.__version__}
  with open(path, "w") as f:
    json.dump({"machine": machine, **payload}, f, indent=2)
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
