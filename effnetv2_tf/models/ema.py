"""The exponential moving average of the weights (paper section 5.1).

min(decay, (1 + t) / (10 + t)) warm-up as the reference, and the BN moving
statistics averaged too (Keras' built-in `use_ema` has neither). Loading a
run's checkpoint needs it, so it imports no optimizer.
"""

import contextlib

import tensorflow as tf

from effnetv2_tf import settings
from effnetv2_tf.settings import Setting

BN_STAT_SUFFIXES = ("moving_mean", "moving_variance")
# The config's key (`train` section).
SETTINGS = (
    Setting("ema_decay", 0.9999, float, "decay of the weights' moving "
            "average (warm-up: min(decay, (1 + t) / (10 + t)))",
            **settings.in_unit(low_open=False, high_open=True)),
)


def ema_variables(model):
  """Trainable weights plus BN moving statistics (not RNG seed states)."""
  stats = [v for v in model.non_trainable_weights
           if v.path.split("/")[-1] in BN_STAT_SUFFIXES]
  return list(model.trainable_weights) + stats


class ExponentialMovingAverage(tf.Module):
  """Shadow copies updated as s = d * s + (1 - d) * w after each step.

  d = min(decay, (1 + t) / (10 + t)) with t the optimizer step (reference
  warm-up), so early averages are not dominated by the initial weights.
  Create it under the strategy scope; updates may run in replica context
  (the replicas' weights are equal, so the first replica's update is kept).
  """

  def __init__(self, model, decay):
    super().__init__(name="ema")
    self.decay = float(decay)
    # Not tracked: the checkpoint saves these through the model.
    object.__setattr__(self, "_model_variables", ema_variables(model))
    self.shadows = [
        tf.Variable(v.value, trainable=False, name=v.path.replace("/", "_"),
                    synchronization=tf.VariableSynchronization.ON_WRITE,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        for v in self._model_variables]

  def decay_at(self, step):
    step = tf.cast(step, tf.float32)
    return tf.minimum(self.decay, (1.0 + step) / (10.0 + step))

  def update(self, step):
    # s -= (1 - d)(s - w), as tf.train.ExponentialMovingAverage: three ops
    # per variable where d s + (1 - d) w takes four plus a copy.
    rate = 1.0 - self.decay_at(step)
    for shadow, var in zip(self.shadows, self._model_variables):
      shadow.assign_sub(rate * (shadow - tf.cast(var.value, shadow.dtype)))

  def copy_to_model(self):
    for shadow, var in zip(self.shadows, self._model_variables):
      var.assign(tf.cast(shadow, var.dtype))

  def reset_to_model(self):
    for shadow, var in zip(self.shadows, self._model_variables):
      shadow.assign(tf.cast(var.value, shadow.dtype))

  @contextlib.contextmanager
  def swapped(self):
    """Within the block the model holds the EMA weights."""
    backup = [tf.identity(v.value) for v in self._model_variables]
    self.copy_to_model()
    try:
      yield
    finally:
      for value, var in zip(backup, self._model_variables):
        var.assign(value)
