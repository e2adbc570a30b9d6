"""Pieces shared by both drivers: data source, model, step counts, metrics.

The custom loop itself lives in `effnetv2_tf.trainer`; `main_tf2.py` reuses
everything here so the two drivers train the same thing.
"""

import json
import math
import os

import keras
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf import fileio
from effnetv2_tf import registry
from effnetv2_tf.data import recipes
from effnetv2_tf.data import sources
from effnetv2_tf.model import create_model

SUMMARY_FILENAME = "summary.json"


def build_source(config):
  """The `sources.Source` a config's data section names."""
  data_config = config.data
  kind = data_config.source
  if kind in ("tfrecord", "folder") and not data_config.data_dir:
    raise config_lib.ConfigError(
        f"--data_dir (data.data_dir) is required for {data_config.name!r} "
        f"({kind} source).")
  source = sources.FROM_CONFIG[kind](data_config, config.model.num_classes)
  overrides = {"train": data_config.train_examples,
               data_config.eval_split: data_config.eval_examples}
  source.split_sizes.update({k: v for k, v in overrides.items() if v})
  return source


def model_overrides(model_config, dropout, replicas=1):
  """create_model keyword overrides from a `config.model` section."""
  overrides = dict(dropout_rate=dropout,
                   survival_prob=model_config.survival_prob,
                   bn_momentum=model_config.bn_momentum,
                   bn_epsilon=model_config.bn_epsilon,
                   bn_synchronized=replicas > 1)
  for key in ("width_coefficient", "depth_coefficient"):
    if model_config[key] is not None:
      overrides[key] = model_config[key]
  return overrides


def build_model(config, num_classes, dropout, replicas=1):
  """The configured model; synchronised BN with more than one replica."""
  return create_model(config.model.name, num_classes=num_classes,
                      **model_overrides(config.model, dropout, replicas))


def make_deterministic(seed):
  """--deterministic: seeded Python/NumPy/TF/Keras randomness, and kernels
  that give the same bits every run (tf.data too runs in order)."""
  keras.utils.set_random_seed(seed)
  tf.config.experimental.enable_op_determinism()


def set_dropout(model, rate):
  """Sets the head dropout rate; a train step traced afterwards uses it."""
  model.get_layer("top_dropout").rate = float(rate)


def preprocessing(config):
  """The run's `recipes.Preprocessing` (its resolved `data` section)."""
  return recipes.from_config(
      config.data, registry.get_model_spec(config.model.name).preprocessing)


def step_counts(config, num_train_examples, global_batch_size):
  """(steps per epoch, total steps) of a run."""
  steps_per_epoch = max(1, num_train_examples // global_batch_size)
  total = config.train.steps or int(
      math.ceil(config.train.epochs * steps_per_epoch))
  return steps_per_epoch, max(total, config.train.min_steps)


def cross_entropy(labels, logits):
  """Per-example softmax cross-entropy in float32 (soft targets allowed)."""
  return keras.losses.categorical_crossentropy(
      tf.cast(labels, tf.float32), tf.cast(logits, tf.float32),
      from_logits=True)


def topk_hits(labels, logits, mask):
  """[top-1 hits, top-5 hits, examples] of a batch, weighted by mask.

  A hit is a predicted class whose target weight is positive, so for
  multi-label data top-1 counts when the arg-max is one of the labels.
  """
  k = min(5, logits.shape[-1])
  top = tf.math.top_k(tf.cast(logits, tf.float32), k).indices
  hit = tf.gather(labels > 0, top, batch_dims=1)
  mask = tf.cast(mask, tf.float32)
  top1 = tf.reduce_sum(tf.cast(hit[:, 0], tf.float32) * mask)
  top5 = tf.reduce_sum(tf.cast(tf.reduce_any(hit, 1), tf.float32) * mask)
  return tf.stack([top1, top5, tf.reduce_sum(mask)])


def read_summary(model_dir):
  return fileio.read_json(os.path.join(model_dir, SUMMARY_FILENAME))


def write_summary(model_dir, summary):
  fileio.write_atomic(os.path.join(model_dir, SUMMARY_FILENAME),
                      json.dumps(summary, indent=2))
