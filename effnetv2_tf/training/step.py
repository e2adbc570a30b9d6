"""The train and eval steps both loops run, with their loss and metrics.

main.py runs `make_train_step`'s function in its `train_loop`, main_tf2.py
in `FitModel.train_step`, so the two drivers take the same optimizer step.
"""

import keras
import tensorflow as tf

from effnetv2_tf.training import optim


def cross_entropy(labels, logits):
  """Per-example softmax cross-entropy in float32 (soft targets allowed)."""
  return keras.losses.categorical_crossentropy(
      tf.cast(labels, tf.float32), tf.cast(logits, tf.float32),
      from_logits=True)


def topk_hits(labels, logits, mask):
  """[acc_top1, acc_top5, precision@1 hits, examples] of a batch, weighted
  by mask, as the reference's eval metrics (main.py L262-283):

  - acc_top1 / acc_top5: the target is the lowest-index label (`tf.argmax`
    of the multi-hot vector, main.py L279-283); for one-hot data, the label;
  - precision@1: the arg-max counts when it is any of the labels (the
    reference's label sets, main.py L263-270, for multi-label data).

  For one-hot labels acc_top1 and precision@1 are the same count.
  """
  logits = tf.cast(logits, tf.float32)
  k = min(5, logits.shape[-1])
  top = tf.math.top_k(logits, k).indices
  first_label = tf.argmax(labels, axis=-1, output_type=top.dtype)
  in_top = tf.equal(top, first_label[:, None])
  any_label_first = tf.gather(labels > 0, top[:, 0], batch_dims=1)
  mask = tf.cast(mask, tf.float32)

  def count(hits):
    return tf.reduce_sum(tf.cast(hits, tf.float32) * mask)

  return tf.stack([count(in_top[:, 0]), count(tf.reduce_any(in_top, 1)),
                   count(any_label_first), tf.reduce_sum(mask)])


def schedule_dropout(model):
  """Gives the head dropout a rate variable (create it under the strategy's
  scope), so `set_dropout` reaches steps traced before it (paper
  Algorithm 1's per-stage dropout without a retrace)."""
  layer = model.get_layer("top_dropout")
  layer.bind_rate(tf.Variable(layer.rate, trainable=False, dtype=tf.float32,
                              name="top_dropout_rate"))


def set_dropout(model, rate):
  """Sets the head dropout rate: read by every traced step once
  `schedule_dropout` bound it, else by steps traced afterwards."""
  layer = model.get_layer("top_dropout")
  layer.rate = float(rate)
  if layer.rate_variable is not None:
    layer.rate_variable.assign(float(rate))


def make_deterministic(seed):
  """--deterministic: seeded Python/NumPy/TF/Keras randomness, and kernels
  that give the same bits every run (tf.data too runs in order)."""
  keras.utils.set_random_seed(seed)
  tf.config.experimental.enable_op_determinism()


def make_train_step(model, optimizer, ema, weight_decay, global_batch,
                    replicas):
  """One optimizer step on a per-replica batch -> (loss, skipped images).

  The loss is this replica's share of the global-batch mean (so replicas
  sum to it) plus its share of the kernel weight decay; the EMA follows
  every step.
  """
  decay_variables = optim.decay_variables(model)

  def train_step(batch):
    with tf.GradientTape() as tape:
      logits = model(batch["images"], training=True)
      loss = tf.nn.compute_average_loss(
          cross_entropy(batch["labels"], logits),
          global_batch_size=global_batch)
      decay = optim.weight_decay_loss(decay_variables, weight_decay)
      total = loss + decay / replicas
      # Inside the tape: the loss scale's product must be recorded, or
      # mixed_float16's gradients are all None.
      scaled = optimizer.scale_loss(total)
    grads = tape.gradient(scaled, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    ema.update(optimizer.iterations)
    return total, batch["skipped"]

  return train_step


def make_eval_step(model):
  """Per-replica eval step: `topk_hits` of a padded batch."""

  def eval_step(batch):
    logits = model(batch["images"], training=False)
    return topk_hits(batch["labels"], logits, batch["mask"])

  return eval_step
