"""The fused batch-norm fast path computes what Keras' layer computes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf.models.fused_bn import FusedBatchNormalization

SHAPE = (4, 5, 7, 8)


def _pair(**kwargs):
  """A Keras BN and a fused one with the same random non-trivial state."""
  plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, **kwargs)
  fused = FusedBatchNormalization(momentum=0.9, epsilon=1e-3, **kwargs)
  rng = np.random.default_rng(0)
  channels = SHAPE[kwargs.get("axis", -1)]
  weights = [rng.normal(1.0, 0.3, channels), rng.normal(0.0, 0.3, channels),
             rng.normal(0.0, 0.5, channels), rng.uniform(0.5, 2.0, channels)]
  for layer in (plain, fused):
    layer.build((None,) + SHAPE[1:])
    layer.set_weights([w.astype("float32") for w in weights])
  return plain, fused


def _run(layer, x, training):
  """Output and gradients (input, gamma, beta) of a weighted loss."""
  upstream = tf.random.stateless_normal(SHAPE, [3, 4])  # not uniform: a
  with tf.GradientTape() as tape:                       # plain sum's BN
    tape.watch(x)                                       # gradient is ~0
    y = layer(x, training=training)
    loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
  return y, tape.gradient(loss, [x] + layer.trainable_variables)


@pytest.mark.parametrize("training", [True, False])
def test_outputs_gradients_and_moving_stats_match_keras(training):
  plain, fused = _pair()
  before = fused.moving_variance.numpy().copy()
  x = tf.random.stateless_normal(SHAPE, [1, 2]) * 3.0 + 1.0
  y_plain, g_plain = _run(plain, x, training)
  y_fused, g_fused = _run(fused, x, training)
  np.testing.assert_allclose(y_fused, y_plain, atol=2e-5)
  for a, b in zip(g_fused, g_plain):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(fused.moving_mean.numpy(),
                             plain.moving_mean.numpy(), atol=1e-6)
  np.testing.assert_allclose(fused.moving_variance.numpy(),
                             plain.moving_variance.numpy(), rtol=1e-5)
  # Training moves the statistics; inference leaves them.
  assert np.allclose(fused.moving_variance.numpy(), before) != training


def test_moving_variance_uses_the_biased_batch_variance():
  layer = FusedBatchNormalization(momentum=0.0)  # moving = the batch's
  x = tf.reshape(tf.range(16, dtype=tf.float32), [2, 2, 2, 2])
  layer(x, training=True)
  channel = x.numpy()[..., 0].ravel()  # 0, 2, ..., 14
  np.testing.assert_allclose(layer.moving_mean.numpy()[0], channel.mean())
  np.testing.assert_allclose(layer.moving_variance.numpy()[0],
                             channel.var(), rtol=1e-6)  # 21, not 24


def test_bfloat16_matches_keras_within_bfloat16_precision():
  plain, fused = _pair(dtype="mixed_bfloat16")
  x = tf.cast(tf.random.stateless_normal(SHAPE, [5, 6]), tf.bfloat16)
  y_plain, _ = _run(plain, x, True)
  y_fused, _ = _run(fused, x, True)
  assert y_fused.dtype == tf.bfloat16
  np.testing.assert_allclose(tf.cast(y_fused, tf.float32),
                             tf.cast(y_plain, tf.float32), atol=0.05)
  np.testing.assert_allclose(fused.moving_mean.numpy(),
                             plain.moving_mean.numpy(), atol=1e-3)


def test_falls_back_to_keras_where_the_kernel_does_not_apply():
  plain, fused = _pair(axis=1)  # channels not last
  x = tf.random.stateless_normal(SHAPE, [7, 8])
  np.testing.assert_allclose(fused(x, training=True), plain(x, training=True),
                             atol=1e-6)


def test_serialises_as_itself():
  layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-3, name="bn")
  clone = keras.layers.deserialize(keras.layers.serialize(layer))
  assert type(clone) is FusedBatchNormalization
  assert clone.get_config() == layer.get_config()


def test_whole_model_matches_the_plain_keras_layers():
  """A tiny EfficientNetV2 with fused BN: same logits, loss gradients and
  BN statistics as the same network built with keras BatchNormalization."""
  from conftest import assert_same_training_math, tiny_model  # pylint: disable=g-import-not-at-top
  fused, plain = (tiny_model(bn_fused=f, dropout_rate=0.0, survival_prob=1.0)
                  for f in (True, False))
  assert any(type(l) is FusedBatchNormalization for l in fused.layers)
  assert not any(isinstance(l, FusedBatchNormalization) for l in plain.layers)
  assert_same_training_math(fused, plain, grad_rtol=1e-3)
