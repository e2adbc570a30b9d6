"""Small JSON/text files on any filesystem TensorFlow reaches (local, gs://).

Written atomically (a temporary file, then a rename), so an interrupted run
never leaves a half-written config.json, summary.json or dataset_info.json.
"""

import json
import os

import tensorflow as tf


def temp_path(path):
  """Where `path` is written before its rename: `dir/.<name>.tmp`.

  The leading dot keeps an interrupted write out of `train-*` globs.
  """
  return os.path.join(os.path.dirname(path),
                      f".{os.path.basename(path)}.tmp")


def write_atomic(path, text):
  """Writes a small text file via a temporary file and a rename."""
  tmp = temp_path(path)
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def read_json(path):
  """The parsed JSON file at `path`, or None when there is none."""
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
