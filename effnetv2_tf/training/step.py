"""The train and eval steps both loops run, with their loss and metrics.

main.py runs `make_train_step`'s function in its `train_loop`, main_tf2.py
in `FitModel.train_step`, so the two drivers take the same optimizer step.
A frozen-backbone step (`finetune.py`) trains the head alone.
"""

import keras
import tensorflow as tf

from effnetv2_tf.training import optim

# The model's head (models/model.py): its dropout, then the classifier,
# the one layer with weights a frozen-backbone step trains.
DROPOUT_LAYER = "top_dropout"
HEAD_LAYER = "predictions"


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
  layer = model.get_layer(DROPOUT_LAYER)
  layer.bind_rate(tf.Variable(layer.rate, trainable=False, dtype=tf.float32,
                              name="top_dropout_rate"))


def set_dropout(model, rate):
  """Sets the head dropout rate: read by every traced step once
  `schedule_dropout` bound it, else by steps traced afterwards."""
  layer = model.get_layer(DROPOUT_LAYER)
  layer.rate = float(rate)
  if layer.rate_variable is not None:
    layer.rate_variable.assign(float(rate))


def make_deterministic(seed):
  """--deterministic: seeded Python/NumPy/TF/Keras randomness, and kernels
  that give the same bits every run (tf.data too runs in order)."""
  keras.utils.set_random_seed(seed)
  tf.config.experimental.enable_op_determinism()


def frozen_parts(model):
  """(backbone, head, head variables) of a frozen-backbone step: the
  backbone a model of `model`'s layers up to the head dropout, the head a
  function of its features (dropout, then the classifier)."""
  dropout = model.get_layer(DROPOUT_LAYER)
  classifier = model.get_layer(HEAD_LAYER)
  backbone = keras.Model(model.inputs, dropout.input, name="backbone")

  def head(features):
    return classifier(dropout(features, training=True))

  return backbone, head, classifier.trainable_variables


def make_train_step(model, optimizer, ema, weight_decay, global_batch,
                    replicas, frozen=False):
  """One optimizer step on a per-replica batch -> (loss, skipped images).

  The loss is this replica's share of the global-batch mean (so replicas
  sum to it) plus its share of the kernel weight decay; the EMA follows
  every step. `frozen`: the head alone trains, on the features of the
  backbone in inference mode (batch norm on its moving statistics, no
  stochastic depth; Keras' base_model(x, training=False)); the loss is the
  same, the backbone gets no gradient and its optimizer slots stay as
  they are.
  """
  decay_variables = optim.decay_variables(model)
  if frozen:
    backbone, head, variables = frozen_parts(model)
  else:
    variables = model.trainable_variables

  def train_step(batch):
    images = batch["images"]
    if frozen:  # outside the tape: nothing to differentiate
      images = backbone(images, training=False)
    with tf.GradientTape() as tape:
      logits = head(images) if frozen else model(images, training=True)
      loss = tf.nn.compute_average_loss(
          cross_entropy(batch["labels"], logits),
          global_batch_size=global_batch)
      decay = optim.weight_decay_loss(decay_variables, weight_decay)
      total = loss + decay / replicas
      # Inside the tape: the loss scale's product must be recorded, or
      # mixed_float16's gradients are all None.
      scaled = optimizer.scale_loss(total)
    grads = tape.gradient(scaled, variables)
    optimizer.apply_gradients(zip(grads, variables))
    ema.update(optimizer.iterations)
    return total, batch["skipped"]

  return train_step


def make_eval_step(model):
  """Per-replica eval step: `topk_hits` of a padded batch."""

  def eval_step(batch):
    logits = model(batch["images"], training=False)
    return topk_hits(batch["labels"], logits, batch["mask"])

  return eval_step
