"""Custom Keras layers of the model (everything else is a stock Keras layer)."""

import keras
from keras import ops

from effnetv2_tf.models import options


@keras.saving.register_keras_serializable(package="effnetv2_tf")
class StochasticDepth(keras.layers.Layer):
  """Drops the residual branch of a block for whole examples (Huang et al.).

  Each example keeps the branch with probability `survival_prob`; kept
  branches are scaled by 1 / survival_prob so the expectation is unchanged,
  and at inference the layer is the identity (reference `drop_connect`).
  Keras applications express this as `Dropout(noise_shape=(None, 1, 1, 1))`
  with a rate named `survival_probability`; we name the value for what it is.
  """

  def __init__(self, survival_prob, seed=None, **kwargs):
    super().__init__(**kwargs)
    survival_prob = float(survival_prob)
    options.check("survival_prob", survival_prob)
    self.survival_prob = survival_prob
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)
    self.supports_masking = True

  def call(self, inputs, training=False):
    if not training or self.survival_prob == 1.0:
      return inputs
    shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
    noise = keras.random.uniform(
        shape, dtype=inputs.dtype, seed=self.seed_generator)
    keep = ops.floor(self.survival_prob + noise)
    return inputs / self.survival_prob * keep

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({"survival_prob": self.survival_prob, "seed": self.seed})
    return config


class _RateCell:
  """Holds a rate variable out of Keras' and TensorFlow's tracking, so the
  model's weights, parameter count and checkpoints stay the reference's."""

  def __init__(self, variable):
    self.variable = variable


@keras.saving.register_keras_serializable(package="effnetv2_tf")
class ScheduledDropout(keras.layers.Dropout):
  """The head's dropout, whose rate progressive learning raises per stage.

  Paper Algorithm 1 changes the dropout rate at every stage. Keras'
  `Dropout` reads `rate` as a Python float while a step is traced, so a
  new rate needs a new trace. After `bind_rate(variable)` the training
  call reads the rate from that variable instead, so one traced train
  step serves every stage (`training.step.set_dropout` assigns it).
  Unbound, or at inference, it is Keras' `Dropout`.
  """

  def __init__(self, rate, **kwargs):
    # Keras makes the noise seed only for a rate > 0 at construction; a
    # stage that raises the rate from 0 later needs it.
    super().__init__(max(float(rate), 0.5), **kwargs)
    self.rate = float(rate)
    self._rate_cell = None

  def bind_rate(self, variable):
    """Training calls read the rate from `variable` from now on."""
    self._rate_cell = _RateCell(variable)

  @property
  def rate_variable(self):
    return self._rate_cell.variable if self._rate_cell else None

  def call(self, inputs, training=False):
    if self._rate_cell is None or not training:
      return super().call(inputs, training=training)
    rate = ops.cast(self._rate_cell.variable, inputs.dtype)
    noise = keras.random.uniform(ops.shape(inputs), dtype=inputs.dtype,
                                 seed=self.seed_generator)
    return ops.where(noise >= rate, inputs / (1.0 - rate),
                     ops.zeros_like(inputs))
