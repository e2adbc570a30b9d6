"""Inference speed of the exported SavedModel against keras.applications'.

For each variant, at the model's eval size, exports and reloads (in this
process):

- keras.applications' EfficientNetV2B0/S, exported with `Model.export`
  (its `serve` endpoint: logits);
- ours through `effnetv2_tf.export.export_saved_model` (its `preprocessed`
  signature: probabilities and top-5 of already scaled images), which
  serves the model with its batch norms folded into their convolutions
  (`effnetv2_tf.models.fold_bn`).

and times batch 1 latency (ms per call) and batch 32 throughput (images/s)
of the reloaded SavedModels, in interleaved rounds (drift in the machine's
speed hits all models alike), median round reported with the ratio to
keras.applications.

  PYTHONPATH=. python benchmarks/inference.py [--models=b0,s]
      [--batch_sizes=1,32] [--rounds=3] [--images_per_round=32]
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
import effnetv2_tf
from effnetv2_tf import export
from effnetv2_tf.data import preprocessing
from effnetv2_tf.models import registry

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["b0", "s"], "Variants: b0, s (at eval size).")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes to time.")
flags.DEFINE_integer("rounds", 3, "Rounds; each times every model in turn.")
flags.DEFINE_integer("images_per_round", 32,
                     "Images per model, batch size and round (at least one "
                     "batch).")
flags.DEFINE_string("json_out", "benchmarks/results/inference.json",
                    "Where to write the results ('' to skip).")

OURS = {"b0": "efficientnetv2-b0", "s": "efficientnetv2-s"}


def _exported(variant, tmp):
  """Yields (name, params, loaded, predict fn) of each reloaded SavedModel."""
  ours = OURS[variant]
  spec = registry.get_model_spec(ours)
  size = spec.eval_size
  reference = bench_util.applications_model(ours, (size, size, 3))
  path = os.path.join(tmp, f"{variant}_applications")
  reference.export(path, verbose=False)
  # A signature function keeps no reference to its loaded object, whose
  # variables it reads: keep the object (`loaded`) alive beside it.
  loaded = tf.saved_model.load(path)
  yield "keras.applications", reference.count_params(), loaded, loaded.serve
  model = effnetv2_tf.create_model(ours, input_shape=(size, size, 3))
  path = os.path.join(tmp, f"{variant}_ours")
  export.export_saved_model(model, path, size,
                            preprocessing.get_row(spec.preprocessing))
  loaded = tf.saved_model.load(path)
  yield "ours (BN folded)", model.count_params(), loaded, loaded.preprocessed


def _runner(predict, size, batch):
  """Returns run() -> seconds per call on a fixed batch, warmed up."""
  images = tf.constant(bench_util.random_batch(size, batch)[0])
  calls = max(1, FLAGS.images_per_round // batch)

  def run():
    started = time.perf_counter()
    for _ in range(calls):
      outputs = predict(images)
    tf.nest.map_structure(lambda t: t.numpy(), outputs)
    return (time.perf_counter() - started) / calls

  run()  # traces and warms up
  return run


def main(argv):
  del argv
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for variant in FLAGS.models:
      size = registry.get_model_spec(OURS[variant]).eval_size
      models = list(_exported(variant, tmp))
      for batch in map(int, FLAGS.batch_sizes):
        runners = [(name, params, _runner(predict, size, batch))
                   for name, params, _, predict in models]
        seconds = [[] for _ in runners]
        for round_index in range(FLAGS.rounds):
          for times, (name, _, run) in zip(seconds, runners):
            times.append(run())
            print(f"round {round_index + 1} {variant} b{batch} {name}: "
                  f"{1000 * times[-1]:.1f} ms per call", flush=True)
        base = float(np.median(seconds[0]))
        for times, (name, params, _) in zip(seconds, runners):
          median = float(np.median(times))
          rows.append({"variant": variant, "size": size, "batch": batch,
                       "model": name, "params": params,
                       "ms_per_call": 1000 * median,
                       "images_per_sec": batch / median,
                       "speedup": base / median, "rounds_seconds": times})
  print(f"\n{os.cpu_count()} CPUs, TensorFlow {tf.__version__}, float32, "
        f"reloaded SavedModels, median of {FLAGS.rounds} rounds\n")
  print("| variant | batch | model | params | ms per call | images/s | "
        "speedup |")
  print("|---|---:|---|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['variant']} {r['size']} px | {r['batch']} | {r['model']} | "
          f"{r['params']:,} | {r['ms_per_call']:.1f} | "
          f"{r['images_per_sec']:.1f} | {r['speedup']:.2f} |")
  bench_util.write_results(FLAGS.json_out, {
      "rounds": FLAGS.rounds, "images_per_round": FLAGS.images_per_round,
      "results": rows})


if __name__ == "__main__":
  app.run(main)
