"""EfficientNetV2 and EfficientNet built from block strings (paper section 3).

One builder turns a registry entry into a functional `keras.Model` of MBConv
and Fused-MBConv blocks with squeeze-excitation and stochastic depth. Layer
names follow keras.applications (`stem_conv`, `block2a_expand_conv`,
`block4c_se_reduce`, `top_conv`, `predictions`) so that weight files map by
name and `model.get_layer` is predictable. `create_model(features_only=True)`
returns the multi-scale feature maps instead (`features`).
"""

import dataclasses
import math
import sys

import keras
from keras import layers

from effnetv2_tf.data import preprocessing
from effnetv2_tf.models import block_strings
from effnetv2_tf.models import features
from effnetv2_tf.models import names
from effnetv2_tf.models import options as options_lib
from effnetv2_tf.models import registry
from effnetv2_tf.models.layers import ScheduledDropout
from effnetv2_tf.models.layers import StochasticDepth
from effnetv2_tf.models.options import ModelOptions
from effnetv2_tf.models.options import OVERRIDABLE


def round_filters(filters, width_coefficient, depth_divisor=8, min_depth=8,
                  round_down_limit=0.0):
  """Scales a channel count by width and rounds to the divisor (reference).

  A result below `round_down_limit` times the scaled count gets one more
  divisor (the original EfficientNet's 10% rule, V1's registry rows).
  """
  filters *= width_coefficient
  min_depth = min_depth or depth_divisor
  rounded = int(filters + depth_divisor / 2) // depth_divisor * depth_divisor
  rounded = max(min_depth, rounded)
  if rounded < round_down_limit * filters:
    rounded += depth_divisor
  return int(rounded)


def _filter_rounding(spec, options):
  """`round_filters` with the width and rounding rule of the model."""
  width = options.width_coefficient or spec.width_coefficient
  return lambda f: round_filters(f, width, spec.depth_divisor, spec.min_depth,
                                 spec.round_down_limit)


def round_repeats(repeats, depth_coefficient):
  """Scales the number of blocks in a stage by depth, rounding up."""
  return int(math.ceil(depth_coefficient * repeats))


def survival_probabilities(num_blocks, survival_prob):
  """Linear stochastic-depth ramp: block i keeps 1 - (1 - p) * i / N."""
  drop = 1.0 - survival_prob
  return [1.0 - drop * i / num_blocks for i in range(num_blocks)]


# Reference conv init: normal, std sqrt(2 / fan_out), fan_out = k*k*out
# (k*k for depthwise kernels, whose Keras "out" dimension is 1).
def _conv_init():
  return keras.initializers.VarianceScaling(
      scale=2.0, mode="fan_out", distribution="untruncated_normal")


def _dense_init(num_classes):
  limit = 1.0 / math.sqrt(num_classes)
  return keras.initializers.RandomUniform(-limit, limit)


class _Builder:
  """Holds the per-model settings the block functions need."""

  def __init__(self, options: ModelOptions):
    self.opt = options

  def conv(self, x, filters, kernel, strides, name, use_bias=False,
           activation=None):
    return self.conv_class(kernel, strides)(
        filters, kernel, strides=strides, padding="same", use_bias=use_bias,
        activation=activation, kernel_initializer=_conv_init(),
        name=name)(x)

  def conv_class(self, kernel, strides):
    """Keras' Conv2D, or for 1x1 its subclass that trains as a matmul."""
    if (self.opt.pointwise_matmul and kernel == 1 and strides == 1 and
        keras.backend.backend() == "tensorflow"):
      # Imported here, as fused_bn below: a TensorFlow-only fast path.
      from effnetv2_tf.models import pointwise_conv  # pylint: disable=g-import-not-at-top
      return pointwise_conv.PointwiseConv2D
    return layers.Conv2D

  def batch_norm(self, name):
    """Keras' BatchNormalization, its TensorFlow fused-kernel subclass, or
    the subclass that pools statistics over groups of replicas."""
    options = dict(momentum=self.opt.bn_momentum, epsilon=self.opt.bn_epsilon,
                   name=name)
    tensorflow = keras.backend.backend() == "tensorflow"
    if self.opt.bn_group_size != 1 and not tensorflow:
      raise ValueError(
          f"bn_group_size={self.opt.bn_group_size} needs the TensorFlow "
          "backend (tf.distribute replicas); use 1.")
    if not tensorflow or (self.opt.bn_group_size == 1 and
                          not self.opt.bn_fused):
      return layers.BatchNormalization(**options)
    # Imported here: these layers are TensorFlow's; the rest of this module
    # needs only Keras.
    from effnetv2_tf.models import fused_bn  # pylint: disable=g-import-not-at-top
    if self.opt.bn_group_size == 1:
      return fused_bn.FusedBatchNormalization(**options)
    return fused_bn.ReplicaGroupBatchNormalization(
        group_size=self.opt.bn_group_size, **options)

  def bn_act(self, x, bn_name, act_name=None):
    x = self.batch_norm(bn_name)(x)
    if act_name:
      x = layers.Activation(self.opt.activation, name=act_name)(x)
    return x

  def squeeze_excite(self, x, input_filters, se_ratio, prefix):
    """SE on the block's expanded features, reduced from its input width."""
    reduced = max(1, int(input_filters * se_ratio))
    se = layers.GlobalAveragePooling2D(
        keepdims=True, name=prefix + "se_squeeze")(x)
    se = self.conv(se, reduced, 1, 1, prefix + "se_reduce", use_bias=True,
                   activation=self.opt.activation)
    se = self.conv(se, x.shape[-1], 1, 1, prefix + "se_expand",
                   use_bias=True, activation="sigmoid")
    return layers.Multiply(name=prefix + "se_excite")([x, se])

  def residual(self, x, inputs, args, survival_prob, prefix):
    if args.strides == 1 and args.input_filters == args.output_filters:
      if survival_prob < 1.0:
        x = StochasticDepth(survival_prob, name=prefix + "drop")(x)
      x = layers.Add(name=prefix + "add")([x, inputs])
    return x

  def mbconv(self, inputs, args, survival_prob, prefix):
    """1x1 expand, depthwise kxk, SE, 1x1 project (MobileNetV2 + SE)."""
    filters = args.input_filters * args.expand_ratio
    x = inputs
    if args.expand_ratio != 1:
      x = self.conv(x, filters, 1, 1, prefix + "expand_conv")
      x = self.bn_act(x, prefix + "expand_bn", prefix + "expand_activation")
    x = layers.DepthwiseConv2D(
        args.kernel_size, strides=args.strides, padding="same",
        use_bias=False, depthwise_initializer=_conv_init(),
        name=prefix + "dwconv")(x)
    x = self.bn_act(x, prefix + "bn", prefix + "activation")
    if args.has_se:
      x = self.squeeze_excite(x, args.input_filters, args.se_ratio, prefix)
    x = self.conv(x, args.output_filters, 1, 1, prefix + "project_conv")
    x = self.bn_act(x, prefix + "project_bn")
    return self.residual(x, inputs, args, survival_prob, prefix)

  def fused_mbconv(self, inputs, args, survival_prob, prefix):
    """Fused-MBConv (paper Figure 2): one kxk conv replaces expand+depthwise."""
    x = inputs
    if args.expand_ratio != 1:
      filters = args.input_filters * args.expand_ratio
      x = self.conv(x, filters, args.kernel_size, args.strides,
                    prefix + "expand_conv")
      x = self.bn_act(x, prefix + "expand_bn", prefix + "expand_activation")
    if args.has_se:
      x = self.squeeze_excite(x, args.input_filters, args.se_ratio, prefix)
    if args.expand_ratio != 1:
      x = self.conv(x, args.output_filters, 1, 1, prefix + "project_conv")
      x = self.bn_act(x, prefix + "project_bn")
    else:  # a single kxk conv with the stride, followed by BN and activation
      x = self.conv(x, args.output_filters, args.kernel_size, args.strides,
                    prefix + "project_conv")
      x = self.bn_act(x, prefix + "project_bn", prefix + "project_activation")
    return self.residual(x, inputs, args, survival_prob, prefix)

  def blocks(self, x, blocks):
    """Every block of `scaled_block_args`, stochastic depth ramped; each
    block's output tensor goes to `self.block_outputs`."""
    self.block_outputs = []
    ramp = survival_probabilities(len(blocks), self.opt.survival_prob)
    for (stage, j, args), survival in zip(blocks, ramp):
      prefix = names.block_prefix(stage, j)
      block_fn = (self.fused_mbconv
                  if args.conv_type == block_strings.FUSED_MBCONV
                  else self.mbconv)
      x = block_fn(x, args, survival, prefix)
      self.block_outputs.append(x)
    return x

  def head(self, x, num_classes, classifier_activation):
    # Dropout always present (rate may be 0) so progressive learning can
    # set it; float32 logits under mixed precision.
    x = ScheduledDropout(self.opt.dropout_rate, name=names.DROPOUT_LAYER)(x)
    return layers.Dense(
        num_classes, activation=classifier_activation,
        kernel_initializer=_dense_init(num_classes),
        bias_initializer="zeros", name=names.CLASSIFIER_LAYER, dtype="float32")(x)


def scaled_block_args(spec, options: ModelOptions):
  """Block args per block after width/depth scaling, in network order.

  Returns a list of (stage index, index within stage, BlockArgs): the first
  block of a stage takes its stride and input width, the others stride 1 with
  input = output.
  """
  depth = options.depth_coefficient or spec.depth_coefficient
  rf = _filter_rounding(spec, options)
  result = []
  for stage, args in enumerate(
      block_strings.decode_all(options.blocks or spec.blocks)):
    args = dataclasses.replace(
        args, input_filters=rf(args.input_filters),
        output_filters=rf(args.output_filters),
        num_repeat=round_repeats(args.num_repeat, depth))
    for j in range(args.num_repeat):
      result.append((stage, j, args))
      args = dataclasses.replace(
          args, input_filters=args.output_filters, strides=1)
  return result


STEM_STRIDE = 2


def reduction_points(blocks):
  """Indices into `blocks` (`scaled_block_args`) of the reference's
  multi-scale endpoints, each with the stride of its output.

  A block is one when it is the last or the next block has a stride above
  1 (reference effnetv2_model.py L616-631, `reduction_1..5`).
  """
  points, stride = [], STEM_STRIDE
  for i, (_, _, args) in enumerate(blocks):
    stride *= args.strides
    if i == len(blocks) - 1 or blocks[i + 1][2].strides > 1:
      points.append((i, stride))
  return points


def _input_scaling(input_scaling, x):
  """The `preprocessing.SCALINGS` affine map as one layer, with no weights."""
  scale, offset = preprocessing.scaling(input_scaling)
  if len(set(scale)) == 1 and len(set(offset)) == 1:
    scale, offset = scale[0], offset[0]
  return layers.Rescaling(scale, offset=offset, name="rescaling")(x)


def build_model(spec: registry.ModelSpec, options: ModelOptions,
                num_classes=1000, include_top=True, input_shape=None,
                include_preprocessing=False, classifier_activation=None,
                input_scaling=None):
  """Builds the functional model of one registry entry.

  Args:
    spec: the registry entry.
    options: overrides of dropout, stochastic depth, BN and scaling.
    num_classes: size of the classification head.
    include_top: with the head, returns logits (or `classifier_activation`
      applied to them); without it, the pooled features.
    input_shape: (height, width, 3); None allows any size.
    include_preprocessing: put the input scaling in the graph so the model
      takes 0..255 pixels.
    classifier_activation: e.g. 'softmax'; None returns logits.
    input_scaling: a `preprocessing.SCALINGS` name for `include_preprocessing`;
      None: that of the model's preprocessing row.

  Returns:
    A `keras.Model` named after the variant.
  """
  return _build(spec, options, num_classes, include_top, input_shape,
                include_preprocessing, classifier_activation,
                input_scaling)[0]


def _build(spec, options, num_classes, include_top, input_shape,
           include_preprocessing, classifier_activation, input_scaling):
  """`build_model`: (the model, [(tensor, stride)] of its reduction points
  (`reduction_points`), tensors of the model's graph)."""
  options_lib.check("survival_prob", options.survival_prob)
  if not 0.0 <= options.dropout_rate < 1.0:
    raise ValueError(
        f"dropout_rate must be in [0, 1), got {options.dropout_rate}.")
  builder = _Builder(options)
  rf = _filter_rounding(spec, options)
  blocks = scaled_block_args(spec, options)

  inputs = keras.Input(shape=tuple(input_shape or (None, None, 3)),
                       name="image")
  if include_preprocessing:
    x = _input_scaling(input_scaling or
                       preprocessing.get_row(spec.preprocessing).input_scaling,
                       inputs)
  else:
    x = inputs
  x = builder.conv(x, blocks[0][2].input_filters, 3, STEM_STRIDE,
                   "stem_conv")
  x = builder.bn_act(x, "stem_bn", "stem_activation")

  x = builder.blocks(x, blocks)
  x = builder.conv(x, rf(options.feature_size or spec.feature_size), 1, 1,
                   "top_conv")
  x = builder.bn_act(x, "top_bn", "top_activation")
  x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
  if include_top:
    x = builder.head(x, num_classes, classifier_activation)
  # Keras walks the functional graph recursively; XL is deeper than
  # Python's default limit of 1000 frames allows.
  sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
  model = keras.Model(inputs, x, name=spec.name)
  # [(tensor, stride)] of each reduction point, for `features.feature_model`.
  return model, [(builder.block_outputs[i], stride)
                 for i, stride in reduction_points(blocks)]


def create_model(name, num_classes=None, include_top=True, weights=None,
                 input_shape=None, include_preprocessing=False,
                 classifier_activation=None, input_scaling=None,
                 features_only=False, out_indices=None, **overrides):
  """Creates a registered variant, optionally loading weights.

  Args:
    name: a name from `list_models()`.
    num_classes: size of the head; default: that of the weights (21843 for
      the ImageNet-21k tag), else model.num_classes' default (1000).
      Another count than the weights' keeps their backbone and
      initialises the head (a warning says so).
    include_top, input_shape, include_preprocessing, classifier_activation:
      see `build_model`.
    weights: None; a published tag ('imagenet', 'imagenet21k',
      'imagenet21k-ft1k', V1 'jft'; `pretrained.TABLE`), downloaded once
      into the Keras cache; a keras.applications weights file
      (`.weights.h5` or legacy `.h5`); or a reference TF1 checkpoint.
    input_scaling: a `preprocessing.SCALINGS` name for `include_preprocessing`;
      None: that of the tag's training recipe, else of the model's row.
    features_only: return the backbone's multi-scale feature maps instead
      (timm's name; keras-hub's `pyramid_outputs` P1..P5): a
      `features.FeatureModel` whose outputs are a list of maps
      [B, ceil(H / s), ceil(W / s), C] at strides s = 2, 4, 8, 16, 32, the
      reference's `reduction_1..5` endpoints ('same' padding: an input
      size that is not a multiple of 32 rounds up at each level, e.g. 100 px
      gives 50, 25, 13, 7, 4), and `model.feature_info` their channels,
      strides (`reduction()`), layer names and indices. The weights load as
      into `include_top=False` and only the layers up to the last chosen
      map are kept (no `top_conv`, no head). `num_classes` and
      `classifier_activation` do not apply and are refused.
    out_indices: with `features_only`, which maps, increasing, from
      0 (stride 2) to 4 (stride 32); None: all.
    **overrides: any field of `ModelOptions` (`OVERRIDABLE`).

  Returns:
    A `keras.Model` (with `features_only`, a `features.FeatureModel`).

  Raises:
    features.FeaturesError: bad `out_indices`, or a classifier option
      with `features_only` (one line, before any download or build).
  """
  spec = registry.get_model_spec(name)
  unknown = sorted(set(overrides) - set(OVERRIDABLE))
  if unknown:
    raise TypeError(
        f"create_model() got unknown override(s) {', '.join(unknown)}; "
        f"valid ones: {', '.join(OVERRIDABLE)}.")
  overrides.setdefault("dropout_rate", spec.dropout_rate)
  options = ModelOptions(**overrides)
  if features_only:
    out_indices = _check_features_only(spec, options, num_classes,
                                       classifier_activation, out_indices)
  elif out_indices is not None:
    raise features.FeaturesError(
        "out_indices selects feature maps: pass features_only=True with it.")
  path = entry = None
  if weights is not None:
    # Imported here: a model without weights needs no download code.
    from effnetv2_tf.models import pretrained  # pylint: disable=g-import-not-at-top
    path, entry = pretrained.resolve(spec.name, weights)
    if entry and input_scaling is None:
      input_scaling = pretrained.preprocessing_of(entry)[0].input_scaling
  if num_classes is None:
    num_classes = (entry.num_classes if entry else
                   options_lib.default("num_classes"))
  options_lib.check("num_classes", int(num_classes))
  model, points = _build(spec, options, int(num_classes),
                         include_top and not features_only, input_shape,
                         include_preprocessing, classifier_activation,
                         input_scaling)
  if path is not None:
    from effnetv2_tf.models import weights as weights_lib  # pylint: disable=g-import-not-at-top
    weights_lib.load_weights(model, path)
  if features_only:
    return features.feature_model(model, points, out_indices)
  return model


def _check_features_only(spec, options, num_classes, classifier_activation,
                         out_indices):
  """The `out_indices` of a `features_only` model (all when None), or a
  one-line FeaturesError."""
  given = [name for name, value in (
      ("num_classes", num_classes),
      ("classifier_activation", classifier_activation)) if value is not None]
  if given:
    raise features.FeaturesError(
        f"{' and '.join(given)} configure the classifier, which "
        "features_only=True leaves out; drop them (or features_only).")
  strides = [stride for _, stride in
             reduction_points(scaled_block_args(spec, options))]
  if out_indices is None:
    return tuple(range(len(strides)))
  return features.check_out_indices(out_indices, strides)
