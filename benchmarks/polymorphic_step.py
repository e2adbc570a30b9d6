"""Issue 22's measurement: the drivers' train step traced once with unknown
spatial dimensions against one traced per image size.

Progressive learning used to retrace the train step at every stage (about
8.5 s each for B0 on 2 CPU cores, benchmarks/progressive.py). A step traced
once with images of shape [None, None, None, 3] serves every size without
it, if its per-step time is not worse. This builds the step both drivers
run (`step.make_train_step`: the config's model, optimizer and schedule,
EMA and weight decay; default the smoke config's tiny B0), traces it both
ways in one process and times, per size, the first call (the trace, or
none) and the median step, a step of each in turn, and prints the
polymorphic / static ratios.

  PYTHONPATH=. python benchmarks/polymorphic_step.py [--sizes=128,160,192]
      [--batch_size=8] [--steps=5] [--dataset_cfg=smoke]
"""

import os
import statistics
import time

from absl import app
from absl import flags
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
from effnetv2_tf import config as config_lib
from effnetv2_tf.models import ema as ema_lib
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import optim
from effnetv2_tf.training import step as step_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "efficientnetv2-b0", "Variant.")
flags.DEFINE_string("dataset_cfg", "smoke", "Dataset config: its model "
                    "scaling, class count and train section (smoke: B0 at "
                    "width 0.25, depth 0.34, 10 classes).")
flags.DEFINE_list("sizes", ["128", "160", "192"], "Image sizes (stages).")
flags.DEFINE_integer("batch_size", 8, "Batch.")
flags.DEFINE_integer("steps", 5, "Timed steps per size (after one warm-up).")
flags.DEFINE_string("json_out", "benchmarks/results/polymorphic_step.json",
                    "Where to write the results ('' to skip).")


def train_step(config):
  """`step.make_train_step` on one replica, as the drivers build it from
  `config` (the schedule's values do not change the step's work)."""
  model = run_dir.model_from_config(config.model, config.model.num_classes,
                                    dropout_rate=config.progressive.min_dropout)
  step_lib.schedule_dropout(model)
  batch = config.train.batch_size
  schedule = optim.build_schedule(config.train, batch, steps_per_epoch=100,
                                  total_steps=10_000)
  optimizer = optim.build_optimizer(config.train, schedule)
  optimizer.build(model.trainable_variables)
  ema = ema_lib.ExponentialMovingAverage(model, config.train.ema_decay)
  return step_lib.make_train_step(model, optimizer, ema,
                                  config.train.weight_decay, batch, 1)


def batch_of(size, num_classes):
  """A seeded batch as the training input gives it: images, one-hot
  labels, skipped count."""
  images, labels = bench_util.random_batch(size, FLAGS.batch_size)
  return {"images": tf.constant(images),
          "labels": tf.one_hot(labels % num_classes, num_classes),
          "skipped": tf.constant(0, tf.int64)}


def time_both(functions, batch, steps):
  """([first call (s)], [median step (s)]) of each function: first calls
  in order, then one untimed and `steps` timed rounds of a step each, the
  order reversed every round (neither always runs first)."""
  def call(fn):
    started = time.perf_counter()
    float(fn(batch)[0])
    return time.perf_counter() - started

  first = [call(fn) for fn in functions]
  times = [[] for _ in functions]
  for round_index in range(steps + 1):
    order = list(zip(functions, times))
    for fn, seconds in order[::-1] if round_index % 2 else order:
      seconds.append(call(fn))
  return first, [statistics.median(seconds[1:]) for seconds in times]


def main(_):
  load = [os.getloadavg()[0]]  # other work on the cores skews the ratios
  config = config_lib.build_config(
      model_name=FLAGS.model, dataset_cfg=FLAGS.dataset_cfg,
      hparam_str=f"train.batch_size={FLAGS.batch_size}")
  classes = config.model.num_classes
  step = train_step(config)
  polymorphic = tf.function(step, input_signature=[{
      "images": tf.TensorSpec([None, None, None, 3], tf.float32),
      "labels": tf.TensorSpec([None, classes], tf.float32),
      "skipped": tf.TensorSpec([], tf.int64)}])
  print(bench_util.cpu_description())
  print(f"{FLAGS.model} ({FLAGS.dataset_cfg} config, {config.train.optimizer},"
        f" EMA), batch {FLAGS.batch_size}: first call (s) and median step "
        "(ms), static (one trace per size) vs polymorphic (one trace)")
  rows = []
  for size in map(int, FLAGS.sizes):
    static = tf.function(step)  # a new trace, as each stage made
    (s_first, p_first), (s_step, p_step) = time_both(
        (static, polymorphic), batch_of(size, classes), FLAGS.steps)
    rows.append({"size": size, "static_first_s": s_first,
                 "static_step_ms": s_step * 1000,
                 "polymorphic_first_s": p_first,
                 "polymorphic_step_ms": p_step * 1000,
                 "ratio": p_step / s_step})
    print(f"{size:4d} px  static: first {s_first:5.1f} s, step "
          f"{s_step * 1000:6.1f} ms | polymorphic: first {p_first:5.1f} s, "
          f"step {p_step * 1000:6.1f} ms | step ratio poly/static "
          f"{p_step / s_step:.3f}")
  mean = statistics.mean(r["ratio"] for r in rows)
  print(f"mean step ratio polymorphic / static: {mean:.3f}")
  load.append(os.getloadavg()[0])
  bench_util.write_results(FLAGS.json_out, {
      "model": FLAGS.model, "dataset_cfg": FLAGS.dataset_cfg,
      "optimizer": config.train.optimizer, "batch_size": FLAGS.batch_size,
      "steps": FLAGS.steps,
      "polymorphic_traces": polymorphic.experimental_get_tracing_count(),
      "load_average_start_end": load, "results": rows,
      "mean_ratio": mean})


if __name__ == "__main__":
  app.run(main)
