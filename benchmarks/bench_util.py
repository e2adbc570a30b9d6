"""Pieces the benchmark scripts share: a lean train step, results JSON."""

import json
import os
import platform

import keras
import numpy as np
import tensorflow as tf


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
