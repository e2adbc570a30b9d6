"""Training throughput: our EfficientNetV2 against keras.applications'.

For each model (keras.applications' EfficientNetV2B0/S and ours: with all
its TensorFlow fast paths, fused batch norm (`fused_bn.py`), 1x1
convolutions as matmuls in training (`pointwise_conv.py`) and the fused
optimizer kernel (`fused_optim.py`); with Keras' optimizer; with fused BN
only; with Keras' plain layers), times the same variant at the same size,
batch and optimizer algorithm (--optimizer: the paper's RMSProp, or SGD
with momentum) in this process. keras.applications trains with Keras'
optimizer class, ours with our default one, as main.py does:

- `fit`: keras `Model.fit` on a repeated in-memory batch, how most users
  train keras.applications models;
- `step`: one lean `tf.function` train step (forward, cross-entropy,
  gradients, optimizer update) called in a Python loop.

It prints train images/s and the ratio to keras.applications with `fit`
(the baseline) beside the parameter counts, which must be equal.

  PYTHONPATH=. python benchmarks/train_step.py [--models=b0,s] [--steps=4]
      [--rounds=3] [--optimizer=rmsprop|sgd]
      [--ours=default,keras_optimizer,fused_bn_only,plain]
      [--image_size=300 --batch_size=64 --dtype_policy=mixed_float16]

The last line is issue 7's GPU comparison (V2-S at 300 px, mixed
precision); on CPU, mixed_bfloat16 is the mixed policy to try.
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
# --ours key -> (row name, create_model overrides, fused optimizer kernel)
OURS = {
    "default": ("ours", {}, True),  # every fast path
    "keras_optimizer": ("ours (Keras optimizer)", {}, False),
    "fused_bn_only": ("ours (fused BN only)", {"pointwise_matmul": False},
                      False),
    "plain": ("ours (plain Keras layers)", {"bn_fused": False,
                                            "pointwise_matmul": False}, False),
}
# --optimizer -> the library's `train.optimizer` (bench_util.build_optimizer:
# the paper's RMSProp values, as main.py trains; SGD with its momentum)
OPTIMIZERS = {"rmsprop": "rmsprop", "sgd": "momentum"}
flags.DEFINE_list("models", ["b0", "s"], "Variants: b0 (224 px, batch 32), "
                  "s (128 px, batch 16), as measured in issue 7.")
flags.DEFINE_list("ours", ["default", "keras_optimizer"],
                  "Our builds to time beside keras.applications: default "
                  "(fused BN, 1x1 as matmuls, fused optimizer), "
                  "keras_optimizer, fused_bn_only, plain.")
flags.DEFINE_enum("optimizer", "rmsprop", sorted(OPTIMIZERS),
                  "rmsprop: the paper's (rho 0.9, momentum 0.9, epsilon "
                  "1e-3); sgd: momentum 0.9.")
flags.register_validator(
    "ours", lambda keys: set(keys) <= set(OURS),
    f"--ours takes a comma-separated list of {', '.join(OURS)}.")
flags.DEFINE_integer("image_size", 0, "Image size for every variant (0: "
                     "the variant's, 224 for b0, 128 for s).")
flags.DEFINE_integer("batch_size", 0, "Batch size for every variant (0: the "
                     "variant's, 32 for b0, 16 for s).")
flags.DEFINE_enum("dtype_policy", "float32",
                  ["float32", "mixed_float16", "mixed_bfloat16"],
                  "Keras' global dtype policy for every model; under "
                  "mixed_float16 both optimizers are wrapped in Keras' "
                  "LossScaleOptimizer (as Model.compile does).")
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
  """(row name, model builder, optimizer builder) of each compared model."""
  ours, size, _ = _setting(variant)
  shape = (size, size, 3)
  # Under mixed_float16 the library wraps it in a LossScaleOptimizer.
  optimizer = functools.partial(bench_util.build_optimizer,
                                OPTIMIZERS[FLAGS.optimizer])
  yield ("keras.applications",
         functools.partial(bench_util.applications_model, ours, shape),
         optimizer)
  for key in FLAGS.ours:
    name, options, fused = OURS[key]
    yield (name, functools.partial(effnetv2_tf.create_model, ours,
                                   input_shape=shape, **options),
           functools.partial(optimizer, fused=fused))


def _setting(variant):
  """(our model name, image size, batch size) after --image_size and
  --batch_size."""
  ours, size, batch = SETTINGS[variant]
  return ours, FLAGS.image_size or size, FLAGS.batch_size or batch


def fit_runner(model, optimizer, images, labels):
  """Returns run(steps) -> images/s of `fit`, traced and warmed up."""
  model.compile(optimizer=optimizer,
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


def step_runner(model, optimizer, images, labels):
  """Returns run(steps) -> images/s of a lean tf.function train step."""
  step = bench_util.lean_train_step(model, optimizer)
  x, y = tf.constant(images), tf.constant(labels)
  run = bench_util.rate_runner(lambda: step(x, y), len(images))
  run(WARMUP)
  return run


def main(argv):
  del argv
  keras.mixed_precision.set_global_policy(FLAGS.dtype_policy)
  rows = []
  for variant in FLAGS.models:
    _, size, batch = _setting(variant)
    images, labels = bench_util.random_batch(size, batch)
    runners = []
    for name, build, build_optimizer in _models(variant):
      for loop, make_runner in (("fit", fit_runner), ("step", step_runner)):
        model = build()
        runners.append((name, loop, model.count_params(),
                        make_runner(model, build_optimizer(), images,
                                    labels)))
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
  print(f"\n{os.cpu_count()} CPUs, TensorFlow {tf.__version__}, "
        f"{FLAGS.dtype_policy}, "
        f"{FLAGS.optimizer}, median of {FLAGS.rounds} rounds of "
        f"{FLAGS.steps} steps\n")
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
      "steps": FLAGS.steps, "rounds": FLAGS.rounds,
      "optimizer": FLAGS.optimizer, "dtype_policy": FLAGS.dtype_policy,
      "devices": [d.name for d in tf.config.list_logical_devices()],
      "results": rows})


if __name__ == "__main__":
  app.run(main)
