"""EfficientNetV2 training through keras.Model.fit (paper Algorithm 1).

The same flags, configs, config.json, summary.json, checkpoints and export
as main.py; each progressive stage is one `Model.fit` call whose epochs
continue the previous stage's (`initial_epoch`), with a stage-aware
checkpoint callback, a NaN guard, TensorBoard and progress lines.

  python main_tf2.py --model=efficientnetv2-b0 --dataset_cfg=digits \
      --model_dir=runs/digits_fit --export_dir=runs/digits_fit/export
  python main_tf2.py --use_tpu --steps_per_loop=100 \
      --model=efficientnetv2-s --dataset_cfg=imagenet \
      --data_dir=gs://BUCKET/imagenet --model_dir=gs://BUCKET/runs/s_fit

`--steps_per_loop` is fit's `steps_per_execution` (kept to a divisor of the
epoch so every execution ends on an epoch or stage boundary).
"""

from effnetv2_tf import startup

# Run as a program, start up before the imports below load TensorFlow
# (see startup); imported as a module, this changes nothing.
if __name__ == "__main__":
  startup.exit_on_signals("main_tf2.py")
  startup.start()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags

from effnetv2_tf import cli
from effnetv2_tf import driver
from effnetv2_tf.training import fit_loop

cli.define_flags()
flags.adopt_module_key_flags(cli)  # --help lists the drivers' flags
FLAGS = flags.FLAGS


def run(values):
  """Runs the configured mode; returns the summary dict."""
  return driver.run(values, fit_loop.FitTrainer)


def main(argv):
  driver.main(argv, FLAGS, fit_loop.FitTrainer, "main_tf2.py")


if __name__ == "__main__":
  app.run(main)
