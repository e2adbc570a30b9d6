"""The learning-rate schedule of both drivers (paper section 5.1).

lr_base * global_batch / 256, linear warmup from 0 that overrides the
decay while it lasts (reference rule), then exponential (0.97 every 2.4
epochs, staircase), cosine or constant, all computed over the whole run so
stages share one continuous schedule. Apart from `optim` (which builds it
from a config) so that readers of runs (plot.py draws it at every step
from summary.json) load it without the training stack.
"""

import math

import keras
import tensorflow as tf

SCHEDULES = ("exponential", "cosine", "constant")


@keras.saving.register_keras_serializable(package="effnetv2_tf")
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup from 0, then exponential, cosine or constant."""

  def __init__(self, base_lr, total_steps, warmup_steps=0,
               schedule="exponential", decay_steps=1, decay_factor=0.97):
    super().__init__()
    if schedule not in SCHEDULES:
      raise ValueError(f"Unknown learning-rate schedule {schedule!r}; "
                       f"valid: {', '.join(SCHEDULES)}.")
    self.base_lr = float(base_lr)
    self.total_steps = int(total_steps)
    self.warmup_steps = int(warmup_steps)
    self.schedule = schedule
    self.decay_steps = max(1, int(decay_steps))
    self.decay_factor = float(decay_factor)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    if self.schedule == "exponential":
      lr = self.base_lr * self.decay_factor ** tf.floor(
          step / self.decay_steps)
    elif self.schedule == "cosine":
      progress = tf.minimum(step / max(1, self.total_steps), 1.0)
      lr = 0.5 * self.base_lr * (1.0 + tf.cos(math.pi * progress))
    else:
      lr = tf.constant(self.base_lr)
    if self.warmup_steps:
      warmup = self.base_lr * step / self.warmup_steps
      lr = tf.where(step < self.warmup_steps, warmup, lr)
    return lr

  def get_config(self):
    return dict(base_lr=self.base_lr, total_steps=self.total_steps,
                warmup_steps=self.warmup_steps, schedule=self.schedule,
                decay_steps=self.decay_steps, decay_factor=self.decay_factor)
