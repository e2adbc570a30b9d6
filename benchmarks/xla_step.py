"""The drivers' train step with and without XLA (`runtime.jit_compile`).

Builds main.py's `Trainer` for a model (digits data, the run's optimizer,
EMA and weight decay), then times its per-replica step (`make_step_fn`) as
a plain tf.function and as the XLA-compiled one (`make_compiled_step`) on
the same batch, in alternating rounds in this process, after one call each
that traces (and compiles). Prints images/s and the XLA/plain ratio; the
default of `runtime.jit_compile` off CPU and GPU rests on this ratio.

  PYTHONPATH=. python benchmarks/xla_step.py [--model=efficientnetv2-b0]
      [--image_size=128] [--batch_size=16] [--steps=4] [--rounds=3]
"""

import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
from effnetv2_tf import config as config_lib
from effnetv2_tf.training import custom_loop

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "efficientnetv2-b0", "Registered model name.")
flags.DEFINE_integer("image_size", 128, "Training image size.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_integer("steps", 4, "Timed steps per round and variant.")
flags.DEFINE_integer("rounds", 3, "Rounds; each times both variants.")
flags.DEFINE_string("json_out", "benchmarks/results/xla_step.json",
                    "Where the results go ('' for nowhere).")


def main(argv):
  del argv
  size = FLAGS.image_size
  config = config_lib.build_config(FLAGS.model, "digits", ",".join([
      f"train.batch_size={FLAGS.batch_size}", "train.steps=1000",
      "progressive.num_stages=1", f"progressive.max_image_size={size}",
      f"model.eval_size={size}", "train.warmup_epochs=0"]))
  trainer = custom_loop.CustomLoopTrainer(config, tempfile.mkdtemp(),
                                          tf.distribute.get_strategy())
  batch = next(iter(trainer.train_dataset(trainer.stages[0])))
  trainer.jit_compile = True
  steps = {"plain": tf.function(trainer.make_step_fn()),
           "xla": trainer.make_compiled_step()}
  first = {}
  for name, step in steps.items():
    started = time.time()
    float(step(batch)[0])
    first[name] = time.time() - started
  rates = {name: [] for name in steps}
  for _ in range(FLAGS.rounds):
    for name, step in steps.items():
      started = time.time()
      for _ in range(FLAGS.steps):
        loss, _ = step(batch)
      float(loss)
      rates[name].append(FLAGS.steps * FLAGS.batch_size /
                         (time.time() - started))
  median = {name: float(np.median(r)) for name, r in rates.items()}
  print(f"{FLAGS.model} {size} px batch {FLAGS.batch_size} on "
        f"{bench_util.cpu_description()}")
  for name in steps:
    print(f"  {name:5s} {median[name]:7.1f} images/s (rounds "
          f"{', '.join(f'{r:.1f}' for r in rates[name])}); first call "
          f"(trace{' + XLA compile' if name == 'xla' else ''}) "
          f"{first[name]:.1f} s")
  print(f"  XLA / plain: {median['xla'] / median['plain']:.2f}x")
  if FLAGS.json_out:
    bench_util.write_results(FLAGS.json_out, dict(
        model=FLAGS.model, image_size=size, batch_size=FLAGS.batch_size,
        images_per_sec=median, rounds=rates, first_call_seconds=first,
        ratio=median["xla"] / median["plain"],
        devices=[d.name for d in tf.config.list_logical_devices()]))


if __name__ == "__main__":
  app.run(main)
