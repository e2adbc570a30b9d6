"""Custom Keras layers of the model (everything else is a stock Keras layer)."""

import keras
from keras import ops


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
    if not 0.0 < survival_prob <= 1.0:
      raise ValueError(
          f"survival_prob must be in (0, 1], got {survival_prob}.")
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
