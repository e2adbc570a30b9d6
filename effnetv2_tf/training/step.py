"""The train and eval steps both loops run, with their loss and metrics.

main.py runs `make_train_step`'s function in its `train_loop`, main_tf2.py
in `FitModel.train_step`, so the two drivers take the same optimizer step.
A frozen-backbone step (`finetune.py`) trains the head alone.
"""

import functools

import keras
import tensorflow as tf

from effnetv2_tf.models import fused_bn
from effnetv2_tf.models import names
from effnetv2_tf.models import recompute as recompute_lib
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
  layer = model.get_layer(names.DROPOUT_LAYER)
  layer.bind_rate(tf.Variable(layer.rate, trainable=False, dtype=tf.float32,
                              name="top_dropout_rate"))


def set_dropout(model, rate):
  """Sets the head dropout rate: read by every traced step once
  `schedule_dropout` bound it, else by steps traced afterwards."""
  layer = model.get_layer(names.DROPOUT_LAYER)
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
  dropout = model.get_layer(names.DROPOUT_LAYER)
  classifier = model.get_layer(names.CLASSIFIER_LAYER)
  backbone = keras.Model(model.inputs, dropout.input, name="backbone")

  def head(features):
    return classifier(dropout(features, training=True))

  return backbone, head, classifier.trainable_variables


def make_train_step(model, optimizer, ema, weight_decay, global_batch,
                    replicas, frozen=False, accum_steps=1, recompute=False):
  """One optimizer step on a per-replica batch -> (loss, skipped images).

  The loss is this replica's share of the global-batch mean (so replicas
  sum to it) plus its share of the kernel weight decay; the EMA follows
  every step. `frozen`: the head alone trains, on the features of the
  backbone in inference mode (batch norm on its moving statistics, no
  stochastic depth; Keras' base_model(x, training=False)); the loss is the
  same, the backbone gets no gradient and its optimizer slots stay as
  they are.

  `accum_steps` K > 1 (train.grad_accum_steps): gradient accumulation
  within this one step (`accumulate_gradients`): the per-replica batch is
  split into K micro-batches, each run forward and backward in turn, and
  the sum of their gradients (the whole batch's mean gradient) goes to one
  `apply_gradients` and one EMA update, so the optimizer's step counter,
  the learning-rate schedule and the EMA advance once per step whatever K
  is, and both drivers, which run this step, count alike. A checkpoint
  is never taken mid-accumulation (there is nothing to refuse or resume:
  the accumulated gradients live only inside the step). K = 1 runs the
  plain step below, unchanged.

  `recompute` (train.recompute): the stem's and each block's activations
  are recomputed in the backward pass instead of kept
  (`recompute.training_forward`): the same gradients and state updates,
  far less activation memory, about one more forward pass of compute. A
  frozen step keeps no backbone activations, so it does not apply there.
  """
  decay_variables = optim.decay_variables(model)
  if recompute and not frozen:
    forward = recompute_lib.training_forward(model)
  else:
    forward = functools.partial(model, training=True)
  if frozen:
    backbone, head, variables = frozen_parts(model)
  else:
    variables = model.trainable_variables

  def features(images):
    """The inputs of the trained part (outside the tape: nothing of the
    frozen backbone to differentiate)."""
    return backbone(images, training=False) if frozen else images

  def data_loss(inputs, labels):
    """This replica's share of the global-batch mean cross-entropy of a
    (micro-)batch."""
    logits = head(inputs) if frozen else forward(inputs)
    return tf.nn.compute_average_loss(cross_entropy(labels, logits),
                                      global_batch_size=global_batch)

  def decay_loss():
    """This replica's share of the kernel weight decay."""
    return optim.weight_decay_loss(decay_variables, weight_decay) / replicas

  def train_step(batch):
    if accum_steps > 1:
      total, grads = accumulate_gradients(
          batch, accum_steps, variables, optimizer.scale_loss, features,
          data_loss, decay_loss, fused_bn.statistics_layers(model))
    else:
      inputs = features(batch["images"])
      with tf.GradientTape() as tape:
        total = data_loss(inputs, batch["labels"]) + decay_loss()
        # Inside the tape: the loss scale's product must be recorded, or
        # mixed_float16's gradients are all None.
        scaled = optimizer.scale_loss(total)
      grads = tape.gradient(scaled, variables)
    optimizer.apply_gradients(zip(grads, variables))
    ema.update(optimizer.iterations)
    return total, batch["skipped"]

  return train_step


def micro_batches(batch, k):
  """`batch` with each per-example value (rank >= 1) reshaped to
  [k, batch / k, ...]; scalars (`skipped`) as they are. Static dimensions
  stay static (the model's layers need the channel count)."""

  def split(value):
    if value.shape.rank == 0:
      return value
    rest = [d if d is not None else tf.shape(value)[j + 1]
            for j, d in enumerate(value.shape[1:])]
    return tf.reshape(value, [k, -1] + rest)

  return {key: split(value) for key, value in batch.items()}


def accumulate_gradients(batch, k, variables, scale_loss, features_fn,
                         loss_fn, decay_fn, statistics_layers=()):
  """(loss, gradients) of a per-replica batch run as `k` micro-batches.

  `features_fn(images)`: what the trained part takes (the frozen backbone's
  features, run outside the tape; else the images); `loss_fn(inputs,
  labels)`: a micro-batch's share of the global-batch mean loss
  (`compute_average_loss` with the global batch), so the micro-batches'
  losses, and their gradients, SUM to the whole batch's; `decay_fn()`: the
  weight-decay term, whose gradient is added once. The gradients are of
  `scale_loss(loss)` (mixed_float16's loss scale, per micro-batch inside
  its tape; the optimizer unscales the sum and skips the step when any of
  it is not finite, as for one batch). The micro-batches run in one
  `tf.while_loop`, one iteration at a time, so the traced graph does not
  grow with `k` and one micro-batch's activations are alive at a time.
  Gradients no loss reaches are None, as `GradientTape.gradient` gives
  them.

  Batch norm normalizes each micro-batch with its own statistics. The
  moving statistics of `statistics_layers` (`fused_bn.deferred_updates`)
  move once, after the loop, towards the whole batch's moments pooled
  from the micro-batches' (the mean of their means; the mean of their
  variances plus the variance of their means), so they follow the same
  values as without accumulation; and no replica synchronizes inside the
  loop, which tf.distribute refuses (`merge_call` in control flow).

  Keras' own `optimizer.gradient_accumulation_steps` is not used: it
  accumulates across `apply_gradients` calls, one micro-batch each, so
  every micro-batch would be a train step of its own (fit's steps, epochs
  and callbacks, and the custom loop's step counter, would count
  micro-batches); its `iterations` property is the raw counter // K, but
  its learning-rate schedule reads the raw counter (base_optimizer.py
  `_get_current_learning_rate`: `self._learning_rate(self._iterations)`),
  which advances once per micro-batch; it averages the micro-batches'
  gradients (right for per-micro-batch means, K times too small for our
  global-batch shares); and its accumulators are optimizer variables that
  a checkpoint would save mid-accumulation.
  """
  micro = micro_batches(batch, k)
  with tf.GradientTape() as tape:
    decay = decay_fn()
    scaled = scale_loss(decay)
  decay_grads = tape.gradient(scaled, variables)
  # Recorded while tracing the body: gradients the data loss does not
  # reach, layers that train (batch statistics to pool).
  unreached, trained = set(), set()

  def body(i, loss, grads, moments):
    with fused_bn.deferred_updates() as statistics:
      inputs = features_fn(micro["images"][i])
      with tf.GradientTape() as tape:
        micro_loss = loss_fn(inputs, micro["labels"][i])
        scaled = scale_loss(micro_loss)
    new = tape.gradient(scaled, variables)
    unreached.update(j for j, g in enumerate(new) if g is None)
    trained.update(j for j, layer in enumerate(statistics_layers)
                   if layer in statistics)
    sums = []
    for layer, (means, squares) in zip(statistics_layers, moments):
      if layer in statistics:
        mean, variance = statistics[layer]
        means, squares = means + mean, squares + variance + tf.square(mean)
      sums.append((means, squares))
    return i + 1, loss + micro_loss, [
        total if g is None else total + tf.cast(g, total.dtype)
        for total, g in zip(grads, new)], sums

  start = [tf.zeros(v.shape, v.dtype) if g is None else g
           for v, g in zip(variables, decay_grads)]
  no_moments = [(tf.zeros(layer.moving_mean.shape, tf.float32),) * 2
                for layer in statistics_layers]
  _, loss, grads, moments = tf.while_loop(
      lambda i, *_: i < k, body,
      (tf.constant(0), tf.constant(0.0), start, no_moments),
      parallel_iterations=1)
  for j in sorted(trained):
    means, squares = moments[j]
    mean = means / k
    variance = tf.maximum(squares / k - tf.square(mean), 0.0)
    fused_bn.update_moving_statistics(statistics_layers[j], mean, variance)
  grads = [None if j in unreached and decay_grads[j] is None else g
           for j, g in enumerate(grads)]
  return loss + decay, grads


def make_eval_step(model):
  """Per-replica eval step: `topk_hits` of a padded batch."""

  def eval_step(batch):
    logits = model(batch["images"], training=False)
    return topk_hits(batch["labels"], logits, batch["mask"])

  return eval_step
