"""Progressive learning speedup: 4 stages (128 px up) vs the fixed final size.

Trains the same model for the same number of steps twice in this process
with main.py's `Trainer`: once with the progressive schedule (stage sizes
from 128 px to the model's train size) and once at the train size from the
first step. Prints, per stage, the size, images/s and the seconds spent
retracing the train step at the stage start, then the wall-time ratio
fixed / progressive with and without the retracing (the paper's speedup is
about the steps; the retraces are what a short run pays for it).

  PYTHONPATH=. python benchmarks/progressive.py [--model=efficientnetv2-b0]
      [--steps=48] [--batch_size=16] [--dataset_cfg=digits]

The default data are scikit-learn's digits resized to each stage size (the
step's cost depends on the size, not the content); pass --dataset_cfg and
--data_dir for real images.
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
from effnetv2_tf import config as config_lib
from effnetv2_tf.models import registry
from effnetv2_tf.training import custom_loop

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "efficientnetv2-b0", "Model to train.")
flags.DEFINE_string("dataset_cfg", "digits", "Dataset config.")
flags.DEFINE_string("data_dir", None, "Dataset location, if it needs one.")
flags.DEFINE_integer("steps", 48, "Train steps of each run (4 stages).")
flags.DEFINE_integer("batch_size", 16, "Global batch size.")
flags.DEFINE_integer("min_size", 128, "First stage's image size.")
flags.DEFINE_integer("steps_per_loop", 4, "Steps per device call.")
flags.DEFINE_string("json_out", "benchmarks/results/progressive.json",
                    "Where to write the results ('' to skip).")


def train(name, num_stages, min_size, max_size, model_dir):
  """Runs one schedule; returns its wall time and per-stage records."""
  hparams = ",".join([
      f"train.steps={FLAGS.steps}", f"train.batch_size={FLAGS.batch_size}",
      f"progressive.num_stages={num_stages}",
      f"progressive.min_image_size={min_size}",
      f"progressive.max_image_size={max_size}",
      f"runtime.steps_per_loop={FLAGS.steps_per_loop}",
      "train.log_every=1000000"])
  config = config_lib.build_config(
      model_name=FLAGS.model, dataset_cfg=FLAGS.dataset_cfg,
      hparam_str=hparams, data_dir=FLAGS.data_dir)
  trainer = custom_loop.CustomLoopTrainer(config, model_dir,
                                          tf.distribute.get_strategy())
  started = time.time()
  summary = trainer.train()
  seconds = time.time() - started
  stages = [{k: s[k] for k in ("image_size", "steps", "images_per_sec",
                               "retrace_seconds")} for s in summary["stages"]]
  retrace = sum(s["retrace_seconds"] for s in stages)
  return {"schedule": name, "seconds": seconds, "retrace_seconds": retrace,
          "seconds_without_retrace": seconds - retrace, "stages": stages}


def main(argv):
  del argv
  train_size = registry.get_model_spec(FLAGS.model).train_size
  with tempfile.TemporaryDirectory() as tmp:
    progressive = train("progressive", 4, FLAGS.min_size, train_size,
                        os.path.join(tmp, "progressive"))
    fixed = train("fixed", 1, train_size, train_size,
                  os.path.join(tmp, "fixed"))
  print(f"\n{FLAGS.model}, {FLAGS.steps} steps at batch {FLAGS.batch_size}"
        f" ({FLAGS.dataset_cfg}), {os.cpu_count()} CPUs\n")
  print("| schedule | stage | image size | steps | images/s | retrace (s) |")
  print("|---|---:|---:|---:|---:|---:|")
  for run in (progressive, fixed):
    for index, s in enumerate(run["stages"]):
      print(f"| {run['schedule']} | {index + 1} | {s['image_size']} | "
            f"{s['steps']} | {s['images_per_sec']:.1f} | "
            f"{s['retrace_seconds']:.1f} |")
  ratios = {
      "wall": fixed["seconds"] / progressive["seconds"],
      "wall_without_retrace": (fixed["seconds_without_retrace"] /
                               progressive["seconds_without_retrace"])}
  print("\n| schedule | wall (s) | retrace (s) | wall without retrace (s) |")
  print("|---|---:|---:|---:|")
  for run in (progressive, fixed):
    print(f"| {run['schedule']} | {run['seconds']:.1f} | "
          f"{run['retrace_seconds']:.1f} | "
          f"{run['seconds_without_retrace']:.1f} |")
  print(f"\nspeedup fixed / progressive: {ratios['wall']:.2f}x wall, "
        f"{ratios['wall_without_retrace']:.2f}x without retracing")
  bench_util.write_results(FLAGS.json_out, {
      "model": FLAGS.model, "steps": FLAGS.steps,
      "batch_size": FLAGS.batch_size, "dataset_cfg": FLAGS.dataset_cfg,
      "results": [progressive, fixed], "ratios": ratios})


if __name__ == "__main__":
  app.run(main)
