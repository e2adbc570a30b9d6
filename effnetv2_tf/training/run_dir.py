"""A run directory and what it says about its run.

  config.json    the resolved config (`read_config`; `config.save_config`
                 writes it)
  summary.json   stages, loss history and evaluation (`read_summary`)
  labels.txt     class names, when the source has them
  ckpt-N.*       checkpoints (`checkpoint_prefix`)

Export, infer.py and plot read runs through this module, so it imports no
training loop, step or optimizer.
"""

import json
import os

import tensorflow as tf

from effnetv2_tf import fileio
from effnetv2_tf.data import recipes
from effnetv2_tf.models import registry

CONFIG_FILENAME = "config.json"
SUMMARY_FILENAME = "summary.json"


class RunDirError(OSError):
  """A directory that cannot take a run's files; the message says why."""


def check_writable(path, flag):
  """Makes sure `path` is a directory this process can write, up front.

  Creates it if missing; a file in its place, or no permission to write,
  is a RunDirError naming `flag`. Nothing already in it is touched (the
  probe file has a name of its own and is removed).
  """
  if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
    raise RunDirError(f"{flag} {path} is a file, not a directory.")
  probe = os.path.join(path, f".write_probe_{os.getpid()}")
  try:
    tf.io.gfile.makedirs(path)
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("")
    tf.io.gfile.remove(probe)
  except (OSError, tf.errors.OpError) as err:
    reason = getattr(err, "message", None) or err.strerror or str(err)
    raise RunDirError(f"{flag} {path} is not writable: {reason}") from None


def read_config(model_dir):
  """config.json of `model_dir` as a dict, or None."""
  return fileio.read_json(os.path.join(model_dir, CONFIG_FILENAME))


def preprocessing(run_config):
  """The run's `recipes.Preprocessing`.

  `run_config`: a run's ConfigDict or its config.json dict. Fields that
  config.json lacks (runs written before a field existed) take the model's
  row.
  """
  return recipes.from_config(
      run_config["data"],
      registry.get_model_spec(run_config["model"]["name"]).preprocessing)


def checkpoint_prefix(path, what="--init_checkpoint"):
  """The checkpoint `path` names: a prefix, or a directory's latest one."""
  if tf.io.gfile.isdir(path):
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
      raise FileNotFoundError(f"{what} {path}: no checkpoint in this "
                              "directory.")
    return prefix
  if tf.io.gfile.exists(path + ".index"):
    return path
  raise FileNotFoundError(f"{what} {path} does not exist.")


def read_summary(model_dir):
  """summary.json of `model_dir` as a dict, or None."""
  return fileio.read_json(os.path.join(model_dir, SUMMARY_FILENAME))


def write_summary(model_dir, summary):
  fileio.write_atomic(os.path.join(model_dir, SUMMARY_FILENAME),
                      json.dumps(summary, indent=2))
