"""The 1x1-as-matmul fast path computes what Keras' Conv2D computes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf.models.pointwise_conv import PointwiseConv2D

SHAPE = (4, 5, 7, 8)


def _pair(**kwargs):
  """A Keras Conv2D and a PointwiseConv2D with the same random weights."""
  kwargs.setdefault("kernel_size", 1)
  plain = keras.layers.Conv2D(6, **kwargs)
  fast = PointwiseConv2D(6, **kwargs)
  for layer in (plain, fast):
    layer.build((None,) + SHAPE[1:])
  fast.set_weights(plain.get_weights())
  return plain, fast


def _run(layer, x, training):
  """Output and gradients (input, kernel[, bias]) of a weighted loss."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=training)
    upstream = tf.random.stateless_normal(tf.shape(y), [3, 4])
    loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
  return y, tape.gradient(loss, [x] + layer.trainable_variables)


def _matmuls(layer, x, training):
  """Op types of `layer`'s traced call: is it a matmul or a convolution?"""
  graph = tf.function(lambda t: layer(t, training=training)
                      ).get_concrete_function(x).graph
  return {op.type for op in graph.get_operations()} & {"MatMul", "Conv2D"}


@pytest.mark.parametrize("use_bias,activation", [(False, None),
                                                 (True, "swish")])
def test_training_outputs_and_gradients_match_keras(use_bias, activation):
  plain, fast = _pair(use_bias=use_bias, activation=activation)
  x = tf.random.stateless_normal(SHAPE, [1, 2])
  assert _matmuls(fast, x, True) == {"MatMul"}
  y_plain, g_plain = _run(plain, x, True)
  y_fast, g_fast = _run(fast, x, True)
  assert y_fast.shape == y_plain.shape == (4, 5, 7, 6)
  np.testing.assert_allclose(y_fast, y_plain, rtol=1e-5, atol=1e-5)
  assert len(g_fast) == len(g_plain) == 2 + use_bias
  for a, b in zip(g_fast, g_plain):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_inference_and_other_kernels_use_the_convolution():
  plain, fast = _pair()
  x = tf.random.stateless_normal(SHAPE, [5, 6])
  assert _matmuls(fast, x, False) == {"Conv2D"}  # fused with BN at inference
  np.testing.assert_array_equal(fast(x, training=False), plain(x))
  for kwargs in ({"kernel_size": 3, "padding": "same"}, {"strides": 2},
                 {"dilation_rate": 2}):
    plain, fast = _pair(**kwargs)
    assert _matmuls(fast, x, True) == {"Conv2D"}, kwargs
    np.testing.assert_array_equal(fast(x, training=True), plain(x))


def test_unknown_batch_and_spatial_dims_keep_the_static_channels():
  _, fast = _pair()
  fn = tf.function(lambda t: fast(t, training=True)).get_concrete_function(
      tf.TensorSpec([None, None, None, 8], tf.float32))
  assert fn.output_shapes.as_list() == [None, None, None, 6]
  assert fn(tf.ones([2, 3, 3, 8])).shape == (2, 3, 3, 6)


def test_bfloat16_computes_in_bfloat16_with_float32_kernel():
  plain, fast = _pair(dtype="mixed_bfloat16")
  x = tf.cast(tf.random.stateless_normal(SHAPE, [7, 8]), tf.bfloat16)
  y = fast(x, training=True)
  assert y.dtype == tf.bfloat16 and fast.kernel.dtype == "float32"
  np.testing.assert_allclose(tf.cast(y, tf.float32),
                             tf.cast(plain(x), tf.float32), atol=0.05)


def test_serialises_as_itself():
  layer = PointwiseConv2D(6, 1, use_bias=False, name="expand_conv")
  clone = keras.layers.deserialize(keras.layers.serialize(layer))
  assert type(clone) is PointwiseConv2D
  assert clone.get_config() == layer.get_config()


def test_whole_model_matches_the_plain_keras_layers():
  """A tiny EfficientNetV2 with 1x1 matmuls: same logits and gradients as
  the same network built with keras' Conv2D everywhere."""
  from conftest import assert_same_training_math, tiny_model  # pylint: disable=g-import-not-at-top
  fast, plain = (tiny_model(pointwise_matmul=m, dropout_rate=0.0,
                            survival_prob=1.0) for m in (True, False))
  pointwise = [l.name for l in fast.layers if type(l) is PointwiseConv2D]
  assert "top_conv" in pointwise and any("se_reduce" in n for n in pointwise)
  assert "stem_conv" not in pointwise  # 3x3, stride 2
  assert not any(isinstance(l, PointwiseConv2D) for l in plain.layers)
  assert_same_training_math(fast, plain, grad_rtol=1e-4)
