"""Where a training step's time goes: TensorFlow profiler, time per op type.

Traces `--steps` lean train steps (SGD, cross-entropy) of a model with
`tf.profiler` into --logdir, then, if the `xprof` package is importable
(`pip install xprof`; not a dependency of this project), prints the
self-time per TensorFlow op type from its framework_op_stats tool. The
trace also opens in TensorBoard's or xprof's profile viewer.

  PYTHONPATH=. python benchmarks/profile_step.py [--model=efficientnetv2-b0]
      [--size=224] [--batch_size=32] [--bn_fused=false]
"""

import json

from absl import app
from absl import flags
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
import effnetv2_tf

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "efficientnetv2-b0", "Model to profile.")
flags.DEFINE_integer("size", 224, "Image size.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("steps", 3, "Profiled steps (after 2 warm-up steps).")
flags.DEFINE_bool("bn_fused", True, "TensorFlow's fused batch norm.")
flags.DEFINE_string("logdir", "/tmp/effnetv2_profile", "Trace output.")


def op_type_table(logdir, steps):
  """[(op type, ms per step, share)] from xprof, or None without xprof."""
  try:
    from xprof.convert import raw_to_tool_data  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  paths = tf.io.gfile.glob(f"{logdir}/plugins/profile/*/*.xplane.pb")
  data, _ = raw_to_tool_data.xspace_to_tool_data(
      [sorted(paths)[-1]], "framework_op_stats", {})
  table = json.loads(data)[0]
  ids = [c["id"] for c in table["cols"]]
  kind, self_time = ids.index("type"), ids.index("total_self_time")
  totals = {}
  for row in table["rows"]:
    cells = [c["v"] if c else None for c in row["c"]]
    totals[cells[kind]] = totals.get(cells[kind], 0.0) + cells[self_time]
  everything = sum(totals.values())
  return [(name, us / 1e3 / steps, us / everything)
          for name, us in sorted(totals.items(), key=lambda kv: -kv[1])]


def main(argv):
  del argv
  size = FLAGS.size
  model = effnetv2_tf.create_model(FLAGS.model, input_shape=(size, size, 3),
                                   bn_fused=FLAGS.bn_fused)
  step = bench_util.lean_train_step(model)
  x = tf.random.uniform([FLAGS.batch_size, size, size, 3], -1.0, 1.0)
  y = tf.zeros([FLAGS.batch_size], tf.int32)
  for _ in range(2):
    step(x, y).numpy()
  tf.profiler.experimental.start(FLAGS.logdir)
  for _ in range(FLAGS.steps):
    step(x, y).numpy()
  tf.profiler.experimental.stop()
  print(f"Trace in {FLAGS.logdir}")
  table = op_type_table(FLAGS.logdir, FLAGS.steps)
  if table is None:
    print("pip install xprof for the per-op-type table.")
    return
  print("| op type | self time (ms/step, summed over threads) | share |")
  print("|---|---:|---:|")
  for name, ms, share in table[:16]:
    print(f"| {name} | {ms:.0f} | {100 * share:.1f}% |")


if __name__ == "__main__":
  app.run(main)
