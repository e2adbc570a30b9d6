"""EfficientNetV2 training with a custom tf.distribute loop (paper Algorithm 1).

  # The built-in demo: 4 progressive stages on scikit-learn's digits, CPU.
  python main.py --model=efficientnetv2-b0 --dataset_cfg=digits \
      --model_dir=runs/digits --export_dir=runs/digits/export
  # ImageNet on a Cloud TPU VM.
  python main.py --use_tpu --model=efficientnetv2-s --dataset_cfg=imagenet \
      --data_dir=gs://BUCKET/imagenet --model_dir=gs://BUCKET/runs/s

Modes: train, eval (latest checkpoint in --model_dir, or
--checkpoint=best|PREFIX; EMA weights) and train_and_eval (evaluates after
every stage). Rerunning the same command resumes from the latest checkpoint
in the right stage and step. main_tf2.py takes the same flags and trains
through keras.Model.fit instead.
"""

from effnetv2_tf import startup

# Run as a program, start up before the imports below load TensorFlow
# (see startup); imported as a module, this changes nothing.
if __name__ == "__main__":
  startup.exit_on_signals("main.py")
  startup.start()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags

from effnetv2_tf import cli
from effnetv2_tf import driver
from effnetv2_tf.training import custom_loop

cli.define_flags()
flags.adopt_module_key_flags(cli)  # --help lists the drivers' flags
FLAGS = flags.FLAGS


def run(values):
  """Runs the configured mode; returns the summary dict."""
  return driver.run(values, custom_loop.CustomLoopTrainer)


def main(argv):
  driver.main(argv, FLAGS, custom_loop.CustomLoopTrainer, "main.py")


if __name__ == "__main__":
  app.run(main)
