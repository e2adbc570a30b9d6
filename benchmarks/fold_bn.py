"""Inference with batch norm folded into the convolutions, against without.

Builds a model, gives its batch norms statistics near the identity (as
trained ones are; random ones far from it make a deep network's logits
chaotic, where any rounding difference grows), folds them
(`effnetv2_tf.models.fold_bn`, what export and infer.py serve) and times a
`tf.function` forward of both in the same process, alternating rounds.
Prints the largest logit difference and images/s, with the ratio.

  PYTHONPATH=. python benchmarks/fold_bn.py [--model=efficientnetv2-b0]
      [--size=224] [--batch_size=32] [--rounds=5] [--calls=3]
"""

import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

import effnetv2_tf
from effnetv2_tf.models import fold_bn

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "efficientnetv2-b0", "Model to time.")
flags.DEFINE_integer("size", 224, "Image size.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("rounds", 5, "Rounds; each times both models.")
flags.DEFINE_integer("calls", 3, "Timed calls per model and round.")


def main(argv):
  del argv
  model = effnetv2_tf.create_model(FLAGS.model)
  rng = np.random.default_rng(0)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.set_weights([rng.uniform(0.9, 1.1, n), rng.uniform(-0.05, 0.05, n),
                         rng.uniform(-0.05, 0.05, n), rng.uniform(0.9, 1.1, n)])
  folded = fold_bn.fold_batch_norms(model)
  images = tf.random.uniform([FLAGS.batch_size, FLAGS.size, FLAGS.size, 3],
                             -1, 1, seed=1)
  calls = {"batch norm": tf.function(lambda x: model(x, training=False)),
           "folded": tf.function(lambda x: folded(x, training=False))}
  logits = {name: fn(images).numpy() for name, fn in calls.items()}
  diff = np.abs(logits["batch norm"] - logits["folded"]).max()
  rates = {name: [] for name in calls}
  for _ in range(FLAGS.rounds):
    for name, fn in calls.items():
      fn(images).numpy()  # untimed: warm again after the other one ran
      started = time.perf_counter()
      for _ in range(FLAGS.calls):
        fn(images).numpy()
      rates[name].append(FLAGS.calls * FLAGS.batch_size /
                         (time.perf_counter() - started))
  median = {name: float(np.median(r)) for name, r in rates.items()}
  print(f"{FLAGS.model}, {FLAGS.size} px, batch {FLAGS.batch_size}: largest "
        f"logit difference {diff:.2e} (largest logit "
        f"{np.abs(logits['batch norm']).max():.2f})")
  for name, rate in median.items():
    print(f"  {name}: {rate:.1f} images/s")
  print(f"  folded / batch norm: {median['folded'] / median['batch norm']:.3f}")


if __name__ == "__main__":
  app.run(main)
