"""Pieces the benchmark scripts share: a lean train step, results JSON."""

import json
import os
import platform

import keras
import tensorflow as tf


def lean_train_step(model):
  """A tf.function (images, labels) -> loss: SGD with momentum, softmax
  cross-entropy, no metrics; the same step for every model compared."""
  optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function
  def step(images, labels):
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(images, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  return step


def write_results(path, payload):
  """Writes `payload` plus the machine it ran on as JSON (skip if no path)."""
  if not path:
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  machine = {"platform": platform.platform(), "cpus": os.cpu_count(),
             "python": platform.python_version(),
             "tensorflow": tf.__version__}
  with open(path, "w") as f:
    json.dump({"machine": machine, **payload}, f, indent=2)
  print(f"Wrote {path}")
