"""Batch norm folded into the convolution before it, for inference.

At inference a batch norm is an affine map per channel,
`y = (x - mean) * gamma / sqrt(var + eps) + beta`; after a convolution
without bias it folds into that convolution's kernel (scaled per output
channel) and a new bias. The folded model computes the same logits with
one pass over each feature map fewer, and TensorFlow's CPU remapper then
fuses each convolution with its bias and activation into one kernel.
Export and inference use it; training keeps the batch norms (their
statistics are what training updates).

The pairs come from the builder's stable layer names (`stem_conv` ->
`stem_bn`, `block2a_dwconv` -> `block2a_bn`, ...), each checked in the
graph: the batch norm must take exactly that convolution's output.
"""

import keras
import numpy as np

from effnetv2_tf import errors


class FoldedModelError(errors.UserError, ValueError):
  """A folded model called in training mode; the message says what to do."""


@keras.saving.register_keras_serializable(package="effnetv2_tf")
class FoldedBatchNorm(keras.layers.Layer):
  """Where a batch norm was before its folding: the identity, at inference
  only (training raises FoldedModelError: no batch norm is left to
  update). (Keras' `Identity` refuses the `mask` argument a batch norm's
  node is called with.)"""

  def call(self, inputs, training=None, mask=None):  # pylint: disable=unused-argument
    if training is True:
      raise FoldedModelError(
          f"{self.name}: this model's batch norms are folded into its "
          "convolutions for inference (fold_batch_norms), so training "
          "would update no batch norm; train the model before folding it.")
    return inputs

  def compute_output_shape(self, input_shape):
    return input_shape


def _conv_of(model, bn):
  """The bias-free convolution `bn` normalises, or None."""
  base = bn.name[:-len("_bn")]
  for name in (base + "_conv", base + "_dwconv"):
    try:
      conv = model.get_layer(name)
    except ValueError:
      continue
    if (isinstance(conv, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
        and not conv.use_bias and bn.input is conv.output):
      return conv
  return None


def fold_pairs(model):
  """{conv name: its batch norm layer} of every foldable pair."""
  pairs = {}
  for layer in model.layers:
    if (isinstance(layer, keras.layers.BatchNormalization) and
        layer.name.endswith("_bn")):
      conv = _conv_of(model, layer)
      if conv is not None:
        pairs[conv.name] = layer
  return pairs


def folded_weights(conv, bn):
  """[kernel, bias] of `conv` with `bn` folded in (float64 arithmetic)."""
  gamma, beta, mean, var = (np.asarray(w, np.float64) for w in (
      bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
  scale = gamma / np.sqrt(var + bn.epsilon)
  kernel = np.asarray(conv.kernel, np.float64)
  if isinstance(conv, keras.layers.DepthwiseConv2D):
    # [kh, kw, channels, multiplier]: output channel c * m + j.
    kernel = kernel * scale.reshape(1, 1, kernel.shape[2], kernel.shape[3])
  else:  # [kh, kw, in, out]
    kernel = kernel * scale
  dtype = conv.kernel.dtype
  return [kernel.astype(dtype), (beta - mean * scale).astype(dtype)]


def fold_batch_norms(model):
  """A copy of functional `model` for inference, its batch norms folded.

  Each folded batch norm becomes a `FoldedBatchNorm` of the same name (so
  `get_layer` and the names of the other layers stay), its convolution
  gains a bias. Returns the model as is when nothing folds.
  """
  pairs = fold_pairs(model)
  if not pairs:
    return model
  folded_bns = {bn.name for bn in pairs.values()}

  def clone(layer):
    if layer.name in folded_bns:
      return FoldedBatchNorm(name=layer.name)
    config = layer.get_config()
    if layer.name in pairs:
      config["use_bias"] = True
    return layer.__class__.from_config(config)

  folded = keras.models.clone_model(model, clone_function=clone)
  for layer in model.layers:
    if layer.name in folded_bns:
      continue
    target = folded.get_layer(layer.name)
    if layer.name in pairs:
      target.set_weights(folded_weights(layer, pairs[layer.name]))
    elif layer.weights:
      target.set_weights(layer.get_weights())
  return folded
