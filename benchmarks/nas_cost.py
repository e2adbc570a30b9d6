"""What a full-scale training-aware search would cost on this machine.

The paper's search (section 3.3): up to 1000 models, each trained about 10
epochs at a reduced image size on ImageNet's training set less its minival
(1,256,144 images, the reference's files 20 onward). This times the
backbone of the paper's space (configs/nas.py: EfficientNet-B0) at the
proxy's 128 px with the lean train step (batch 32, SGD), takes the images/s
as the trial's rate (smaller and faster candidates cost less, larger more)
and prints the estimate beside the digits demo's measured cost per trial
(from runs/nas-digits/results.json when it exists).

  PYTHONPATH=. python benchmarks/nas_cost.py [--batch_size=32] [--steps=5]
"""

import json
import os
import statistics
import time

from absl import app
from absl import flags

import bench_util  # pylint: disable=g-bad-import-order
from configs import nas as nas_configs
import effnetv2_tf

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 32, "Batch of the timed step.")
flags.DEFINE_integer("steps", 5, "Timed steps (after two untimed).")
flags.DEFINE_string("demo_dir", "runs/nas-digits", "A digits search.")

TRAIN_IMAGES = 1_256_144  # ImageNet train files 20 onward (reference)
TRIALS, EPOCHS = 1000, 10  # paper section 3.3


def main(_):
  config = nas_configs.get_config("paper")
  size = config.proxy.image_size
  model = effnetv2_tf.create_model(config.space.backbone)
  step = bench_util.lean_train_step(model)
  images, labels = bench_util.random_batch(size, FLAGS.batch_size)
  for _ in range(2):
    float(step(images, labels))
  times = []
  for _ in range(FLAGS.steps):
    started = time.perf_counter()
    float(step(images, labels))
    times.append(time.perf_counter() - started)
  rate = FLAGS.batch_size / statistics.median(times)
  trial_s = EPOCHS * TRAIN_IMAGES / rate
  print(f"{bench_util.cpu_description()}")
  print(f"{config.space.backbone} at {size} px, batch {FLAGS.batch_size}: "
        f"{rate:.1f} train images/s")
  print(f"one proxy trial ({EPOCHS} epochs of {TRAIN_IMAGES:,} images): "
        f"{trial_s / 3600:.1f} h; {TRIALS} trials: "
        f"{TRIALS * trial_s / 86400 / 365:.1f} years on this machine")
  results = os.path.join(FLAGS.demo_dir, "results.json")
  if os.path.exists(results):
    with open(results) as f:
      rows = json.load(f)
    seconds = [row.get("seconds", float("nan")) for row in rows[1:]]
    print(f"digits demo ({FLAGS.demo_dir}): {len(seconds)} trials, "
          f"{statistics.mean(seconds):.1f} s per trial on average "
          f"(backbone {rows[0].get('seconds', float('nan')):.1f} s)")


if __name__ == "__main__":
  app.run(main)
