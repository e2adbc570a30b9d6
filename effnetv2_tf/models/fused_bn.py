"""TensorFlow batch-norm layers behind Keras' BatchNormalization.

`FusedBatchNormalization`: Keras 3's BatchNormalization computes moments
and normalises in separate ops on every backend; TensorFlow's
FusedBatchNormV3 does both (and the backward pass) in one kernel, about
twice as fast on CPU (benchmarks/README.md, "Fast paths, one kernel at a
time"), and EfficientNet has a BN after every convolution. It is a drop-in
subclass: same constructor, variables,
names, config and numerics (the moving variance is updated with the biased
batch variance, as Keras does, not the fused kernel's Bessel-corrected
one). It falls back to the Keras computation where the kernel does not
apply: another backend, synchronised (cross-replica) statistics, batch
renormalisation, a channel axis other than the last of a 4-D input, or a
mask.

`ReplicaGroupBatchNormalization`: training statistics pooled over groups
of replicas, as the reference's TpuBatchNormalization (utils.py L173-206
at 6a54c87), under any tf.distribute strategy.

Where they compute the statistics themselves (not in the fallbacks), both
keep every replica's copy of the moving statistics equal: under
several replicas they move towards the mean over the replicas of each
one's batch (or group) statistics. That is the value the reference's
Keras 2 layer reads and saves (tf_keras BatchNormalization keeps them as
ON_READ variables, aggregation MEAN: a copy per replica, read as their
mean; the update is linear, so the mean of the copies follows the mean of
the statistics); Keras 3's mirrored variables would instead keep each
replica's own and save replica 0's.
"""

import contextlib
import threading

import keras
import tensorflow as tf


def _replica_context_of_several():
  """The replica context of a step run by several replicas, else None."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return None
  return context


def _mean_over_replicas(mean, variance):
  """The replicas' mean of each one's moments, for the moving statistics."""
  context = _replica_context_of_several()
  if context is None:
    return mean, variance
  return context.all_reduce(
      tf.distribute.ReduceOp.MEAN,
      [tf.stop_gradient(mean), tf.stop_gradient(variance)])


# The record of an open `deferred_updates` block, per thread: each replica
# of a MirroredStrategy traces its step in a thread of its own.
_DEFERRED = threading.local()


@contextlib.contextmanager
def deferred_updates():
  """Inside (while a step is traced), the training calls of this module's
  layers record their batch statistics in the yielded dict (layer ->
  (mean, variance)) instead of updating their moving statistics.

  For steps that run the model inside a `tf.while_loop` (gradient
  accumulation's micro-batches) or run it again (recomputation): under
  several replicas an update is a synchronization (an all-reduce, and
  the assignment of a mirrored variable) that tf.distribute refuses in
  control flow, and a second forward pass must not update twice. The
  step applies what it keeps with `update_moving_statistics`, once.
  """
  previous = getattr(_DEFERRED, "record", None)
  _DEFERRED.record = {}
  try:
    yield _DEFERRED.record
  finally:
    _DEFERRED.record = previous


def statistics_layers(model):
  """The layers of `model` whose updates `deferred_updates` defers."""
  return [layer for layer in model.layers if isinstance(
      layer, (FusedBatchNormalization, ReplicaGroupBatchNormalization))]


def update_moving_statistics(layer, mean, variance):
  """Moves `layer`'s moving statistics towards the replicas' mean of each
  one's (mean, variance)."""
  _update_moving_statistics(layer, *_mean_over_replicas(mean, variance))


def _update_or_record(layer, mean, variance, replicas_mean=False):
  """`update_moving_statistics`, or into an open `deferred_updates`;
  `replicas_mean`: (mean, variance) are the replicas' mean already."""
  record = getattr(_DEFERRED, "record", None)
  if record is None and replicas_mean:
    _update_moving_statistics(layer, mean, variance)
  elif record is None:
    update_moving_statistics(layer, mean, variance)
  elif layer in record:
    raise ValueError(f"{layer.name} trained twice in one deferred_updates "
                     "block; open one block per forward pass.")
  else:
    record[layer] = (mean, variance)


def _update_moving_statistics(layer, mean, variance):
  momentum = layer.momentum
  for moving, batch in ((layer.moving_mean, mean),
                        (layer.moving_variance, variance)):
    moving.assign(moving * momentum +
                  tf.cast(batch, moving.dtype) * (1.0 - momentum))


@keras.saving.register_keras_serializable(package="effnetv2_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
  """keras.layers.BatchNormalization computed by TensorFlow's fused kernel."""

  def _fusable(self, inputs, mask):
    return (keras.backend.backend() == "tensorflow" and not self.synchronized
            and not self.renorm and mask is None and len(inputs.shape) == 4
            and self.axis in (-1, 3))

  def call(self, inputs, training=None, mask=None):
    if not self._fusable(inputs, mask) or (training and not self.trainable):
      # Frozen BN while training (fine-tuning): gradients would go through
      # the kernel's inference mode, which has no deterministic GPU
      # backprop (tensorflow/tensorflow#50505); Keras' ops do.
      return super().call(inputs, training=training, mask=mask)
    channels = inputs.shape[-1]
    scale = (tf.convert_to_tensor(self.gamma) if self.scale
             else tf.ones([channels], tf.float32))
    offset = (tf.convert_to_tensor(self.beta) if self.center
              else tf.zeros([channels], tf.float32))
    # float16/bfloat16 activations with float32 statistics, as Keras' layer.
    if inputs.dtype not in (tf.float16, tf.bfloat16, tf.float32):
      inputs = tf.cast(inputs, tf.float32)
    if training:  # and trainable: frozen BN returned above
      outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
          inputs, scale, offset, epsilon=self.epsilon, is_training=True)
      count = tf.cast(tf.size(inputs) // channels, tf.float32)
      # The kernel returns the unbiased variance; Keras averages the biased.
      variance *= (count - 1.0) / tf.maximum(count, 1.0)
      _update_or_record(self, mean, variance)
    else:
      outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
          inputs, scale, offset, mean=tf.convert_to_tensor(self.moving_mean),
          variance=tf.convert_to_tensor(self.moving_variance),
          epsilon=self.epsilon, is_training=False)
    return tf.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="effnetv2_tf")
class ReplicaGroupBatchNormalization(keras.layers.BatchNormalization):
  """BatchNormalization whose training statistics pool groups of replicas.

  `group_size` k: replicas 0..k-1 form the first group, k..2k-1 the second,
  and so on (the reference's group_assignment, utils.py L71-73); 1: each
  replica's own statistics; 0: all replicas. k must divide the replicas;
  with one replica, or called outside a replica context, the statistics
  are the batch's own.

  Each replica's mean and E[x^2] (its variance plus squared mean) are
  averaged over the group, the variance being E[x^2] - E[x]^2 of the group
  (utils.py L193-199), weighted by the replicas' example counts: the
  statistics of the group's examples pooled, also where the replicas' batches
  differ in size (the reference weights replicas equally; the same value for
  equal batches, which every training batch here is). One all-reduce of a
  (groups, 2 * channels + 1) tensor, under any strategy (the reference sums
  within each group with TPU group assignments).
  """

  def __init__(self, group_size=1, **kwargs):
    super().__init__(**kwargs)
    if self.synchronized or self.renorm:
      raise ValueError(
          "ReplicaGroupBatchNormalization: `group_size` replaces "
          "`synchronized`, and batch renormalisation is not supported.")
    if isinstance(group_size, bool) or int(group_size) != group_size or (
        group_size < 0):
      raise ValueError(f"group_size must be an integer >= 0 (0: all "
                       f"replicas), got {group_size!r}.")
    self.group_size = int(group_size)

  def get_config(self):
    return {**super().get_config(), "group_size": self.group_size}

  def call(self, inputs, training=None, mask=None):
    if not (training and self.trainable):
      return super().call(inputs, training=training, mask=mask)
    # float16/bfloat16 activations with float32 statistics, as Keras' layer.
    if inputs.dtype != tf.float64:
      inputs = tf.cast(inputs, tf.float32)
    mean, variance = super()._moments(inputs, mask)  # this replica's
    if mask is None:
      count = tf.reduce_prod(tf.gather(tf.shape(inputs), self._reduction_axes))
    else:
      count = tf.reduce_sum(tf.cast(mask, tf.int32))
    mean, variance, moving = _group_moments(
        mean, variance, tf.cast(count, mean.dtype), self.group_size)
    # A deferred update all-reduces these equal values once more.
    _update_or_record(self, *moving, replicas_mean=True)
    outputs = keras.ops.batch_normalization(
        inputs, mean, variance, axis=self.axis,
        offset=tf.cast(self.beta, inputs.dtype) if self.center else None,
        scale=tf.cast(self.gamma, inputs.dtype) if self.scale else None,
        epsilon=self.epsilon)
    return tf.cast(outputs, self.compute_dtype)


def _group_moments(mean, variance, count, group_size):
  """(mean, variance) of this replica's group and, for the moving
  statistics, (mean, variance) averaged over all replicas."""
  context = _replica_context_of_several()
  if context is None:
    return mean, variance, (mean, variance)
  replicas = context.num_replicas_in_sync
  size = group_size or replicas
  if replicas % size:
    raise ValueError(f"ReplicaGroupBatchNormalization: group_size={size} does "
                     f"not divide the {replicas} replicas.")
  if size == 1:
    return mean, variance, _mean_over_replicas(mean, variance)
  groups = replicas // size
  group = tf.cast(context.replica_id_in_sync_group, tf.int32) // size
  channels = mean.shape[-1]
  # Sums of x, of x^2 and the count (a replica without examples adds 0).
  sums = tf.concat([tf.math.multiply_no_nan(mean, count),
                    tf.math.multiply_no_nan(variance + tf.square(mean), count),
                    count[None]], axis=0)
  row = tf.one_hot(group, groups, dtype=sums.dtype)
  # Row g of the all-reduced tensor: the sums over group g's replicas.
  group_sums = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                  row[:, None] * sums[None, :])
  means = tf.math.divide_no_nan(group_sums[:, :channels], group_sums[:, -1:])
  variances = tf.math.divide_no_nan(group_sums[:, channels:2 * channels],
                                    group_sums[:, -1:]) - tf.square(means)
  # Every group has `size` replicas: the mean over groups is that over
  # replicas.
  moving = (tf.stop_gradient(tf.reduce_mean(means, axis=0)),
            tf.stop_gradient(tf.reduce_mean(variances, axis=0)))
  return tf.gather(means, group), tf.gather(variances, group), moving
