"""Analytic FLOPs of a Keras model, in the EfficientNet papers' convention.

The EfficientNet and EfficientNetV2 papers report "FLOPs" that are in fact
multiply-adds (MACs) of one forward pass of one image. `count_flops` derives
them from the static output shapes of a model built with a fixed input size:

  Conv2D:            H_out * W_out * kh * kw * (C_in / groups) * C_out
  DepthwiseConv2D:   H_out * W_out * kh * kw * C_out (C_out = C_in * mult)
  Dense:             (number of output positions) * in * out

Only these weight layers count. Bias additions are left out (they are adds
without a multiply), and so is every elementwise or reduction layer:
BatchNormalization, activations, the squeeze-excitation Multiply, residual
Add, pooling, Rescaling, Dropout and StochasticDepth contribute zero.

Why: compared with the published numbers, weight-layer MACs alone land within
0.5% of all seven EfficientNetV2 values (paper Table 7) and within 2.5% of
EfficientNet-B0..B3, B6 and B7 (B4 and B5 are 4.6% and 3.7% above their
two-digit values). Counting one op per output element of the elementwise
layers as well overshoots every model (V2-B0..B3 by 1.1-1.6%, V1-B0 by 2.9%,
V1-B4 by 7.4%), so they are excluded.

Nested models (a `keras.Model` used as a layer) are counted recursively.
A layer called more than once (shared weights) is not supported, because its
per-call shapes are not public in Keras 3.
"""

import math

import keras


def _known_shape(shape, what):
  """Checks that all but the batch dimension of `shape` are static."""
  dims = tuple(shape)[1:]
  if any(d is None for d in dims):
    raise ValueError(
        f"count_flops needs a model with a fixed input size, but {what} has "
        f"shape {tuple(shape)}. Build it with e.g. "
        "create_model(name, input_shape=(224, 224, 3)).")
  return dims


def _layer_io(layer):
  """(input shape, output shape) of a layer used exactly once."""
  try:
    return layer.input.shape, layer.output.shape
  except (AttributeError, ValueError) as err:
    raise ValueError(
        f"Cannot read the input/output shape of layer {layer.name!r} "
        "(count_flops supports layers called exactly once).") from err


def _layer_flops(layer):
  """Multiply-adds of one call of one layer with batch size 1."""
  if isinstance(layer, keras.Model):
    return count_flops(layer)
  if isinstance(layer, keras.layers.DepthwiseConv2D):
    _, out_shape = _layer_io(layer)
    h, w, c_out = _known_shape(out_shape, f"layer {layer.name!r}")
    kh, kw = layer.kernel_size
    return h * w * kh * kw * c_out
  if isinstance(layer, keras.layers.Conv2D):
    in_shape, out_shape = _layer_io(layer)
    c_in = _known_shape(in_shape, f"layer {layer.name!r}")[-1]
    h, w, c_out = _known_shape(out_shape, f"layer {layer.name!r}")
    kh, kw = layer.kernel_size
    return h * w * kh * kw * (c_in // layer.groups) * c_out
  if isinstance(layer, keras.layers.Dense):
    in_shape, out_shape = _layer_io(layer)
    c_in = _known_shape(in_shape, f"layer {layer.name!r}")[-1]
    return math.prod(_known_shape(out_shape, f"layer {layer.name!r}")) * c_in
  return 0


def count_flops(model) -> int:
  """Multiply-adds of one forward pass of `model` for a batch of one.

  Args:
    model: a built `keras.Model` (functional or Sequential) whose inputs have
      static spatial dimensions, e.g. from
      `create_model(name, input_shape=(384, 384, 3))`.

  Returns:
    The number of multiply-adds of its Conv2D, DepthwiseConv2D and Dense
    layers (see the module docstring for the convention).

  Raises:
    ValueError: if an input or a counted layer has an unknown dimension other
      than the batch, or a counted layer is called more than once.
  """
  for tensor in model.inputs:
    _known_shape(tensor.shape, f"input {tensor.name!r} of {model.name!r}")
  return int(sum(_layer_flops(layer) for layer in model.layers))
