"""Issue 22's first measurement: one train step traced with unknown spatial
dimensions against one traced per image size.

Progressive learning retraces the train step at every stage (about 8.5 s
each for B0 on 2 CPU cores, benchmarks/progressive.py). A step traced once
with `input_signature` [None, None, None, 3] serves every size without it,
if its per-step time is not worse: this script times both in one process,
on the same model, sizes and batch: the trace (first call) and the median
step per size, and prints the polymorphic / static ratios.

  PYTHONPATH=. python benchmarks/polymorphic_step.py [--sizes=128,160,192]
      [--batch_size=8] [--steps=5]
"""

import statistics
import time

from absl import app
from absl import flags
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
import effnetv2_tf

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "efficientnetv2-b0", "Variant.")
flags.DEFINE_list("sizes", ["128", "160", "192"], "Image sizes (stages).")
flags.DEFINE_integer("batch_size", 8, "Batch.")
flags.DEFINE_integer("steps", 5, "Timed steps per size (after one warm-up).")


def _step_body(model, optimizer):
  loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  def step(images, labels):
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(images, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss
  return step


def _time(fn, images, labels, steps):
  started = time.perf_counter()
  float(fn(images, labels))  # traces (or not) and runs once
  first = time.perf_counter() - started
  float(fn(images, labels))
  times = []
  for _ in range(steps):
    started = time.perf_counter()
    float(fn(images, labels))
    times.append(time.perf_counter() - started)
  return first, statistics.median(times)


def main(_):
  import keras  # pylint: disable=g-import-not-at-top
  model = effnetv2_tf.create_model(FLAGS.model)
  optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
  body = _step_body(model, optimizer)
  polymorphic = tf.function(body, input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.float32),
      tf.TensorSpec([None], tf.int64)])
  print(bench_util.cpu_description())
  print(f"{FLAGS.model}, batch {FLAGS.batch_size}: first call (s) and median "
        "step (ms), static (one trace per size) vs polymorphic (one trace)")
  ratios = []
  for size in map(int, FLAGS.sizes):
    images, labels = bench_util.random_batch(size, FLAGS.batch_size)
    labels = labels.astype("int64")
    static = tf.function(body)  # a new trace, as each stage makes
    s_first, s_step = _time(static, images, labels, FLAGS.steps)
    p_first, p_step = _time(polymorphic, images, labels, FLAGS.steps)
    ratios.append(p_step / s_step)
    print(f"{size:4d} px  static: first {s_first:5.1f} s, step "
          f"{s_step * 1000:6.1f} ms | polymorphic: first {p_first:5.1f} s, "
          f"step {p_step * 1000:6.1f} ms | step ratio poly/static "
          f"{p_step / s_step:.3f}")
  print(f"mean step ratio polymorphic / static: "
        f"{statistics.mean(ratios):.3f}")


if __name__ == "__main__":
  app.run(main)
