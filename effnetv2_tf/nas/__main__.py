"""Training-aware architecture search (paper section 3.3) from the command line.

  python -m effnetv2_tf.nas --trials=12                  # digits demo
  python -m effnetv2_tf.nas --space=paper --data_dir=/data/imagenet \\
      --trials=1000 --out_dir=runs/nas-imagenet
  # More workers on the same search: the same command with one --storage.
  python -m effnetv2_tf.nas --storage=postgresql://user@db/nas ...

Writes `<out_dir>/results.csv` (every finished trial and the backbone),
`results.json`, `results.png` and `best.json`, the winner's network as a
config file (its blocks, width and depth; the class count is the data's):
`python main.py --config_file=<out_dir>/best.json --dataset_cfg=digits`
trains it with progressive learning. Rerunning the command resumes.
"""

from effnetv2_tf import startup

# Run as a program, start up before the imports below load TensorFlow
# (see startup); imported as a module, this changes nothing.
if __name__ == "__main__":
  startup.start()

# pylint: disable=g-import-not-at-top,wrong-import-position
import os

from absl import app
from absl import flags
import optuna
import tensorflow as tf

from configs import nas as nas_configs
from effnetv2_tf import errors
from effnetv2_tf import quiet_start
from effnetv2_tf.nas import search

flags.DEFINE_enum("space", "digits", tuple(nas_configs.SPACES),
                  "Search space and proxy (configs/nas.py).")
flags.DEFINE_integer("trials", 12, "Finished trials to reach.", lower_bound=1)
flags.DEFINE_string("out_dir", None, "Results, trials and (by default) the "
                    "SQLite study; default runs/nas-<space>.")
flags.DEFINE_string("storage", None, "Optuna storage URL shared by workers; "
                    "default sqlite:///<out_dir>/study.db.")
flags.DEFINE_string("dataset_cfg", None, "Proxy dataset config instead of "
                    "the space's.")
flags.DEFINE_string("data_dir", None, "The proxy dataset's data_dir.")
flags.DEFINE_integer("proxy_image_size", None, "Proxy image size (>= 8).")
flags.DEFINE_float("proxy_epochs", None, "Proxy training epochs.")
flags.DEFINE_integer("proxy_steps", None, "Proxy training steps (instead "
                     "of epochs).")
flags.DEFINE_integer("seed", 0, "Sampler seed.")
FLAGS = flags.FLAGS


class NasError(errors.UserError, ValueError):
  """A bad flag; the message names it."""


def search_config(values):
  config = nas_configs.get_config(values.space)
  proxy = config.proxy
  if values.dataset_cfg:
    proxy.dataset_cfg = values.dataset_cfg
  if values.proxy_image_size is not None:
    if values.proxy_image_size < 8:
      raise NasError(f"--proxy_image_size={values.proxy_image_size}: the "
                     "proxy image size must be at least 8 pixels.")
    proxy.image_size = values.proxy_image_size
  if values.proxy_epochs is not None:
    proxy.epochs = values.proxy_epochs
  if values.proxy_steps is not None:
    proxy.steps = values.proxy_steps
  if values.data_dir:
    proxy.hparams = ",".join(filter(None, (proxy.hparams,
                                           f"data.data_dir={values.data_dir}")))
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  quiet_start.quiet_info_logs(FLAGS)
  optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial: ours
  # Every trial is a new model, so tf.function's retracing warnings are
  # expected here.
  tf.get_logger().setLevel("ERROR")
  out_dir = FLAGS.out_dir or os.path.join("runs", f"nas-{FLAGS.space}")
  with errors.reported("effnetv2_tf.nas"):
    config = search_config(FLAGS)
    rows = search.run(config, out_dir, FLAGS.trials, storage=FLAGS.storage,
                      seed=FLAGS.seed)
  best = next(row for row in rows if row["best"])
  print(f"best: trial {best['trial']}, reward {best['reward']:.4f} "
        f"(backbone {rows[0]['reward']:.4f}); {len(rows) - 1} trials in "
        f"{out_dir}/results.csv; train the winner: python main.py "
        f"--config_file={out_dir}/best.json "
        f"--dataset_cfg={config.proxy.dataset_cfg}"
        + (f" --data_dir={FLAGS.data_dir}" if FLAGS.data_dir else ""),
        flush=True)


if __name__ == "__main__":
  app.run(main)
