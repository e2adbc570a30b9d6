"""Multi-scale feature maps: the backbone of `create_model(features_only=True)`.

The feature maps are the reference's `reduction_1` .. `reduction_5`
endpoints (effnetv2_model.py L616-631): the output of each block that is the
last one or whose next block has a stride above 1, at strides 2, 4, 8, 16 and
32 for every registered variant. The stem is none of them, and `reduction_5`
is the last block's output, before `top_conv`.

The names follow timm (`features_only`, `out_indices`,
`model.feature_info.channels()` / `.reduction()`), whose feature-extraction
interface most detection and segmentation code is written against;
keras-hub calls the same maps `pyramid_outputs` keyed `P1` .. `P5` (level
i at stride 2**i), which `FeatureInfo.levels()` gives.
"""

import dataclasses
import math

import keras

from effnetv2_tf import errors


class FeaturesError(errors.UserError, ValueError):
  """Bad `out_indices` or a classifier option with `features_only`."""


@dataclasses.dataclass(frozen=True)
class Feature:
  """One feature map of a backbone."""
  index: int  # its `out_indices` value: which reduction point, from 0
  channels: int
  reduction: int  # stride: input size / feature-map size
  layer: str  # the layer whose output it is (in the classifier too)


class FeatureInfo:
  """The `Feature` of each output of a `FeatureModel`, in output order.

  Indexable and iterable like timm's `FeatureInfo`, with its `channels()` and
  `reduction()`; `levels()` gives keras-hub's pyramid keys ('P1' ..).
  """

  def __init__(self, features):
    self._features = tuple(features)

  def __len__(self):
    return len(self._features)

  def __iter__(self):
    return iter(self._features)

  def __getitem__(self, i):
    return self._features[i]

  def __eq__(self, other):
    return (isinstance(other, FeatureInfo) and
            self._features == other._features)

  def __repr__(self):
    return f"FeatureInfo({list(self._features)!r})"

  def channels(self):
    """Channels of each output."""
    return [f.channels for f in self._features]

  def reduction(self):
    """Stride of each output (timm's name)."""
    return [f.reduction for f in self._features]

  def layer_names(self):
    """The layer each output comes from."""
    return [f.layer for f in self._features]

  def indices(self):
    """The `out_indices` of the outputs."""
    return [f.index for f in self._features]

  def levels(self):
    """keras-hub's `pyramid_outputs` key of each output: 'P<log2 stride>'."""
    return [f"P{int(round(math.log2(f.reduction)))}" for f in self._features]

  def to_config(self):
    return [dataclasses.asdict(f) for f in self._features]

  @classmethod
  def from_config(cls, config):
    return cls(Feature(**f) for f in config)


def check_out_indices(out_indices, strides):
  """`out_indices` as a tuple, or a one-line FeaturesError.

  `strides`: the stride of each of the model's reduction points.
  """
  count = len(strides)
  values = (tuple(out_indices)
            if isinstance(out_indices, (list, tuple, range))
            else None)
  ok = (values and all(isinstance(i, int) and not isinstance(i, bool)
                       for i in values) and
        all(0 <= i < count for i in values) and
        all(a < b for a, b in zip(values, values[1:])))
  if not ok:
    raise FeaturesError(
        f"out_indices must be distinct integers from 0 to {count - 1} in "
        f"increasing order (feature maps at strides "
        f"{', '.join(map(str, strides))}), got {out_indices!r}.")
  return values


@keras.saving.register_keras_serializable(package="effnetv2_tf")
class FeatureModel(keras.Model):
  """A functional model of feature maps, its `feature_info` saved with it.

  Built as `FeatureModel(inputs, outputs, feature_info=...)`; `.keras`
  files keep `feature_info` in the model's config.
  """

  def __init__(self, *args, feature_info=(), **kwargs):
    super().__init__(*args, **kwargs)
    if not isinstance(feature_info, FeatureInfo):
      feature_info = FeatureInfo.from_config(feature_info)
    self._feature_info = feature_info

  @property
  def feature_info(self):
    """The `FeatureInfo` of the outputs."""
    return self._feature_info

  def get_config(self):
    config = super().get_config()
    config["feature_info"] = self._feature_info.to_config()
    return config


def feature_model(model, points, out_indices):
  """The sub-graph of `model` from its input to the chosen feature maps.

  Args:
    model: a functional model whose graph holds the points' tensors.
    points: [(tensor, stride)] of every reduction point, in order.
    out_indices: validated indices into `points`.

  Returns:
    A `FeatureModel` sharing `model`'s layers (and weights), with only the
    layers on the paths to the chosen maps.
  """
  producer = {id(layer.output): layer.name for layer in model.layers}
  outputs = [points[i][0] for i in out_indices]
  info = FeatureInfo(
      Feature(index=i, channels=int(points[i][0].shape[-1]),
              reduction=int(points[i][1]), layer=producer[id(points[i][0])])
      for i in out_indices)
  return FeatureModel(model.input, outputs, feature_info=info,
                      name=f"{model.name}_features")
