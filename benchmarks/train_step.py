"""Training throughput: our EfficientNetV2 against keras.applications'.

For each model (keras.applications' EfficientNetV2B0/S and ours: with its
default TensorFlow fast paths, fused batch norm (`fused_bn.py`) and 1x1
convolutions as matmuls in training (`pointwise_conv.py`); with fused BN
only; with Keras' plain layers), times the same variant at the same size,
batch and optimizer (SGD with momentum) in this process:

- `fit`: keras `Model.fit` on a repeated in-memory batch, how most users
  train keras.applications models;
- `step`: one lean `tf.function` train step (forward, cross-entropy,
  gradients, SGD update) called in a Python loop.

It prints train images/s and the ratio to keras.applications with `fit`
(the baseline) beside the parameter counts, which must be equal.

  PYTHONPATH=. python benchmarks/train_step.py [--models=b0,s] [--steps=4]
      [--rounds=3] [--ours=default,fused_bn_only,plain]
"""

import functools
import os
import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
import effnetv2_tf

FLAGS = flags.FLAGS
OURS = {  # --ours key -> (row name, create_model overrides)
    "default": ("ours", {}),  # fused BN, 1x1 convolutions as matmuls
    "fused_bn_only": ("ours (fused BN only)", {"pointwise_matmul": False}),
    "plain": ("ours (plain Keras layers)", {"bn_fused": False,
                                            "pointwise_matmul": False}),
}
flags.DEFINE_list("models", ["b0", "s"], "Variants: b0 (224 px, batch 32), "
                  "s (128 px, batch 16), as measured in issue 7.")
flags.DEFINE_list("ours", ["default", "fused_bn_only", "plain"],
                  "Our builds to time beside keras.applications: default "
                  "(fused BN, 1x1 as matmuls), fused_bn_only, plain.")
flags.register_validator(
    "ours", lambda keys: set(keys) <= set(OURS),
    f"--ours takes a comma-separated list of {', '.join(OURS)}.")
flags.DEFINE_integer("steps", 4, "Timed steps per round and model.")
flags.DEFINE_integer("rounds", 3, "Rounds; each times every model in turn.")
flags.DEFINE_string("json_out", "benchmarks/results/train_step.json",
                    "Where to write the results ('' to skip).")

SETTINGS = {  # variant -> (ours, size, batch)
    "b0": ("efficientnetv2-b0", 224, 32),
    "s": ("efficientnetv2-s", 128, 16),
}
WARMUP = 2  # untimed steps that trace and warm up each model


def _models(variant):
  ours, size, _ = SETTINGS[variant]
  shape = (size, size, 3)
  yield "keras.applications", functools.partial(
      bench_util.applications_model, ours, shape)
  for key in FLAGS.ours:
    name, options = OURS[key]
    yield name, functools.partial(effnetv2_tf.create_model, ours,
                                  input_shape=shape, **options)


def fit_runner(model, images, labels):
  """Returns run(steps) -> images/s of `fit`, traced and warmed up."""
  model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
  data = tf.data.Dataset.from_tensors((images, labels)).repeat()

  def run(steps):
    ends = []
    timer = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    # One extra step: the clock starts when the call's first step ends.
    model.fit(data, steps_per_epoch=steps + 1, epochs=1, verbose=0,
              callbacks=[timer])
    return steps * len(images) / (ends[-1] - ends[0])

  run(WARMUP)
  return run


def step_runner(model, images, labels):
  """Returns run(steps) -> images/s of a lean tf.function train step."""
  step = bench_util.lean_train_step(model)
  x, y = tf.constant(images), tf.constant(labels)

  def run(steps):
    step(x, y).numpy()
    started = time.perf_counter()
    for _ in range(steps):
      loss = step(x, y)
    loss.numpy()
    return steps * len(images) / (time.perf_counter() - started)

  run(WARMUP)
  return run


def main(argv):
  del argv
  rows = []
  for variant in FLAGS.models:
    _, size, batch = SETTINGS[variant]
    images, labels = bench_util.random_batch(size, batch)
    runners = []
    for name, build in _models(variant):
      for loop, make_runner in (("fit", fit_runner), ("step", step_runner)):
        model = build()
        runners.append((name, loop, model.count_params(),
                        make_runner(model, images, labels)))
    # Rounds interleave the models, so drift in the machine's speed hits
    # all of them alike; the median round is reported.
    rates = [[] for _ in runners]
    for round_index in range(FLAGS.rounds):
      for rate, (name, loop, _, run) in zip(rates, runners):
        rate.append(run(FLAGS.steps))
        print(f"round {round_index + 1} {variant} {name} {loop}: "
              f"{rate[-1]:.1f} images/s", flush=True)
    for rate, (name, loop, params, _) in zip(rates, runners):
      rows.append({"variant": variant, "model": name, "loop": loop,
                   "size": size, "batch": batch, "params": params,
                   "images_per_sec": float(np.median(rate)),
                   "rounds": rate})
  print(f"\n{os.cpu_count()} CPUs, TensorFlow {tf.__version__}, float32, "
        f"median of {FLAGS.rounds} rounds of {FLAGS.steps} steps\n")
  print("| variant | model | loop | params | train images/s | ratio |")
  print("|---|---|---|---:|---:|---:|")
  for row in rows:
    base = next(r for r in rows if r["variant"] == row["variant"] and
                r["model"] == "keras.applications" and r["loop"] == "fit")
    row["ratio"] = row["images_per_sec"] / base["images_per_sec"]
    print(f"| {row['variant']} {row['size']} px b{row['batch']} | "
          f"{row['model']} | {row['loop']} | {row['params']:,} | "
          f"{row['images_per_sec']:.1f} | {row['ratio']:.2f} |")
  bench_util.write_results(FLAGS.json_out, {
      "steps": FLAGS.steps, "rounds": FLAGS.rounds, "results": rows})


if __name__ == "__main__":
  app.run(main)
