"""Loads pretrained weights: keras.applications files and reference checkpoints.

Two sources fit the models of `effnetv2_tf.models.model`:
  * weights files of the matching `keras.applications` model
    (`EfficientNetV2*` or `EfficientNetB*`), either Keras 3 `save_weights`
    files (`*.weights.h5`) or the legacy Keras 2 `.h5` files that
    keras.applications distributes. Both are read with h5py and mapped by
    layer name; the only names that differ are in `_KERAS_ALIASES`.
  * checkpoints of the reference code (google/automl efficientnetv2 and
    the EfficientNet V1 releases) in both layouts its drivers write: TF1
    checkpoints of `main.py` (and every released one), whose variables are
    named by scope (`<model>/blocks_3/tpu_batch_normalization_1/gamma`;
    the `ExponentialMovingAverage` copy of a variable is preferred), and
    the object-based checkpoints of `main_tf2.py`'s `save_weights`, named
    by attribute path (`_blocks/3/_norm1/gamma/.ATTRIBUTES/VARIABLE_VALUE`).
Nothing is assigned until every weight has been found with the right shape,
so a failed load leaves the model as it was.
"""

import dataclasses
import glob
import os
import re

from absl import logging
import h5py
import keras
import numpy as np
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf.models import names

# keras.applications layer name -> ours (keras V2 calls the depthwise conv of
# MBConv blocks `dwconv2`; V1 calls it `dwconv`, as we do).
_KERAS_ALIASES = ((re.compile(r"^(block\d+[a-z]+)_dwconv2$"), r"\1_dwconv"),)
# keras.applications' input preprocessing (V1 has an adapted Normalization
# with mean/variance/count weights); ours has no weights, so these are skipped.
_PREPROCESSING = re.compile(r"^(rescaling|normalization)([_#]\d+)?$")
# The classifier: may be absent from the model (include_top=False).
_HEAD = names.CLASSIFIER_LAYER


class WeightsMismatchError(errors.UserError, ValueError):
  """A weights file or checkpoint that does not fit the model; says where."""


def load_weights(model, weights):
  """Loads a weights file or reference checkpoint into `model`, in place.

  Args:
    model: a model from `effnetv2_tf.create_model` (keras.applications layer
      names).
    weights: path of a keras.applications weights file (`.weights.h5` or
      legacy `.h5`), or of a reference TF1 checkpoint (its prefix, one of its
      files, or a directory holding it).

  A classifier of another class count (a 1000-class file into a 10-class
  model) is left as initialised, with a warning; everything else must fit.

  Returns:
    The model.

  Raises:
    FileNotFoundError: `weights` is not there, or is neither an h5 file
      nor a checkpoint.
    WeightsMismatchError: the file does not fit the model; the message
      names the first layer or variable that does not fit.
  """
  load_weights_counted(model, weights)
  return model


def load_weights_counted(model, weights, warn=True):
  """`load_weights`; returns (weights loaded, layers left as initialised).
  `warn=False`: no warning for a head left as initialised (the caller
  reports the skipped layers itself)."""
  path = os.fspath(weights)
  if os.path.isfile(path) and h5py.is_hdf5(path):
    pairs = _match_layers(model, read_h5_weights(path), path)
  else:
    prefix = find_checkpoint(path)
    pairs = _match_checkpoint(model, tf.train.load_checkpoint(prefix), prefix)
  for variable, value in pairs:
    variable.assign(value)
  loaded = {id(variable) for variable, _ in pairs}
  head = [w for w in _head_weights(model) if id(w) not in loaded]
  if head and warn:
    logging.warning(
        "%s: its classifier has another class count than this model's %d; "
        "loaded everything else, the head (%s) is newly initialised.", path,
        head[0].shape[-1], _HEAD)
  return len(pairs), [_HEAD] if head else []


def _head_weights(model):
  return [w for layer in model.layers if layer.name == _HEAD
          for w in layer.weights]


# ---------------------------------------------------------------- h5 files


def read_h5_weights(path):
  """Reads a keras.applications weights file into {our layer name: arrays}.

  Args:
    path: a Keras 3 `.weights.h5` or a legacy Keras 2 `.h5` weights file.

  Returns:
    A dict from layer name (aliases applied, preprocessing layers left out)
    to the layer's weight arrays in Keras order.
  """
  with h5py.File(path, "r") as f:
    if "layers" in f and "layer_names" not in f.attrs:
      raw = _read_keras3(f["layers"])
    else:
      group = f["model_weights"] if "model_weights" in f else f
      raw = _read_legacy(group)
  values = {}
  for name, arrays in raw.items():
    if not arrays or _PREPROCESSING.match(name):
      continue
    for pattern, replacement in _KERAS_ALIASES:
      name = pattern.sub(replacement, name)
    values[name] = arrays
  return values


def _read_keras3(layers_group):
  """Keras 3 keys groups by class (`conv2d_7`); the layer name is an attr.

  Files of Keras 3 versions that stored no name get keys `<class>#<n>` for
  the n-th layer of that class: Keras numbers them in `model.layers` order,
  which is ours too (see `_match_layers`).
  """
  values = {}
  for key, group in layers_group.items():
    if "vars" not in group:
      continue
    arrays = [np.asarray(group["vars"][str(i)])
              for i in range(len(group["vars"]))]
    name = group["vars"].attrs.get("name")
    if name is None:
      match = re.match(r"^(.*?)(?:_(\d+))?$", key)
      name = f"{match.group(1)}#{int(match.group(2) or 0)}"
    values[name.decode() if isinstance(name, bytes) else name] = arrays
  return values


def _read_legacy(group):
  """Keras 2 layout: attr `layer_names`, per layer attr `weight_names`."""
  values = {}
  for name in _h5_strings(group, "layer_names"):
    layer_group = group[name]
    values[name] = [np.asarray(layer_group[w])
                    for w in _h5_strings(layer_group, "weight_names")]
  return values


def _h5_strings(group, key):
  """A string-list attribute, also when Keras split it into `key0`, `key1`."""
  if key in group.attrs:
    chunks = [group.attrs[key]]
  else:
    chunks, i = [], 0
    while f"{key}{i}" in group.attrs:
      chunks.append(group.attrs[f"{key}{i}"])
      i += 1
  return [s.decode("utf8") if isinstance(s, bytes) else str(s)
          for chunk in chunks for s in chunk]


def _weighted_layers(model):
  return [layer for layer in model.layers if layer.weights]


def _match_layers(model, values, path):
  """Pairs each model weight with its file array, checking names and shapes."""
  values = dict(values)
  class_counts = {}
  pairs = []
  for layer in _weighted_layers(model):
    cls = _snake_case(_keras_class(layer).__name__)
    index = class_counts[cls] = class_counts.get(cls, -1) + 1
    key = layer.name if layer.name in values else f"{cls}#{index}"
    arrays = values.pop(key, None)
    source = f"Weights file {path}"
    if arrays is None:
      raise _misfit(source, model, f"layer '{layer.name}' is missing from "
                    "the file.")
    expected = [tuple(w.shape) for w in layer.weights]
    got = [tuple(a.shape) for a in arrays]
    if expected != got and layer.name == _HEAD:
      continue  # another class count: load_weights keeps the new head
    if expected != got:
      raise _misfit(source, model, f"layer '{layer.name}' expects shapes "
                    f"{expected}, the file has {got}.")
    pairs.extend(zip(layer.weights, arrays))
  if not _has_top(model):
    values.pop(_HEAD, None)  # a file with the top, into a model without
  if values:
    raise _misfit(f"Weights file {path}", model, f"the file's layer "
                  f"'{next(iter(values))}' has no counterpart in the model "
                  "(another variant?).")
  return pairs


def _misfit(source, model, detail):
  return WeightsMismatchError(
      f"{source} does not fit model {model.name}: {detail}")


def _keras_class(layer):
  """The Keras layer class `layer` is or extends (files are keyed by it):
  BatchNormalization for our FusedBatchNormalization."""
  return next(cls for cls in type(layer).__mro__
              if cls.__module__.startswith("keras."))


def _snake_case(class_name):
  """Keras' group key of a class: DepthwiseConv2D -> depthwise_conv2d."""
  name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
  return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _has_top(model):
  return bool(_head_weights(model))


# ------------------------------------------------- reference checkpoints

# TF1 layout (main.py): scope of the fixed layers below `<model name>/`.
_FIXED_SCOPES = {
    "stem_conv": "stem/conv2d",
    "stem_bn": "stem/tpu_batch_normalization",
    "top_conv": "head/conv2d",
    "top_bn": "head/tpu_batch_normalization",
    "predictions": "head/dense",
}
# main.py's graph opens `name_scope('head')` a second time for the
# classifier (effnetv2_model.py L645), which current TensorFlow names
# head_1; the released checkpoints have head/dense.
_CLASSIFIER_SCOPES = ("head/dense", "head_1/dense")
_BLOCK_LAYER = re.compile(r"^(block\d+[a-z]+)_(\w+)$")
_BLOCK_SCOPES = {"dwconv": "depthwise_conv2d", "se_reduce": "se/conv2d",
                 "se_expand": "se/conv2d_1"}
# The reference numbers a block's plain convs and its BNs in creation order
# (conv2d, conv2d_1; tpu_batch_normalization, _1, _2), skipping absent ones.
_NUMBERED = (("conv2d", ("expand_conv", "project_conv")),
             ("tpu_batch_normalization", ("expand_bn", "bn", "project_bn")))
_MODEL_LEAVES = ("kernel", "depthwise_kernel", "bias", "gamma", "beta",
                 "moving_mean", "moving_variance")
_EMA = "/ExponentialMovingAverage"
_STEM = "/stem/conv2d/kernel"

# Object-based layout (main_tf2.py): attribute paths of effnetv2_model.py's
# EffNetV2Model (_build L532-578: _stem, _blocks, _head, _fc), its blocks
# (MBConvBlock._build L187-264, FusedMBConvBlock._build L316-373) and SE
# (L108-133), each variable's value under `<path>/<leaf>/.ATTRIBUTES/...`.
_OBJECT_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
_OBJECT_STEM = "_stem/_conv_stem/kernel" + _OBJECT_VALUE
_OBJECT_FIXED = {
    "stem_conv": "_stem/_conv_stem",
    "stem_bn": "_stem/_norm",
    "top_conv": "_head/_conv_head",
    "top_bn": "_head/_norm",
    "predictions": "_fc",
}
_OBJECT_PARTS = {"expand_conv": "_expand_conv", "expand_bn": "_norm0",
                 "dwconv": "_depthwise_conv", "bn": "_norm1",
                 "se_reduce": "_se/_se_reduce", "se_expand": "_se/_se_expand",
                 "project_conv": "_project_conv"}


def find_checkpoint(path):
  """Resolves a checkpoint prefix from a prefix, a file of it, or a folder.

  Args:
    path: a checkpoint prefix (`.../model.ckpt-1000`), one of its
      `.index`/`.data-*` files, or a directory holding a checkpoint.

  Returns:
    The checkpoint prefix.

  Raises:
    FileNotFoundError: nothing is at `path` ("not found"), or no h5 file
      and no checkpoint is there.
  """
  if os.path.isdir(path):
    prefix = tf.train.latest_checkpoint(path)
    indexes = sorted(glob.glob(os.path.join(glob.escape(path), "*.index")))
    if prefix is None and len(indexes) == 1:
      prefix = indexes[0][:-len(".index")]
  else:
    prefix = re.sub(r"\.(index|data-\d+-of-\d+)$", "", path)
  if not os.path.exists(path) and not os.path.isfile(prefix + ".index"):
    raise errors.MissingInputError(
        f"Weights {path!r} not found: no file, folder or checkpoint of that "
        "name.")
  if prefix is None or not os.path.isfile(prefix + ".index"):
    raise errors.MissingInputError(
        f"Weights {path!r} are neither an h5 weights file nor a TensorFlow "
        "checkpoint (prefix, its .index file, or a directory holding one).")
  return prefix


def reference_layout(variable_names):
  """Which reference layout a checkpoint's variable names have.

  Returns:
    'scope' (TF1, main.py and the released checkpoints), 'object'
    (main_tf2.py's `save_weights`), or None (neither).
  """
  names = list(variable_names)
  if any(name.endswith(_STEM) for name in names):
    return "scope"
  if any(name.endswith(_OBJECT_STEM) for name in names):
    return "object"
  return None


def _layer_paths(model, fixed, in_block, block_path):
  """Checkpoint path of each weighted layer of `model`.

  Args:
    model: a model from `effnetv2_tf.create_model`.
    fixed: {layer name: path} of the layers outside the blocks.
    in_block: (layer part, parts of its block) -> its path in the block.
    block_path: a format string of the block's path from its index.
  """
  layers = [layer.name for layer in _weighted_layers(model)]
  parts = {}  # block prefix -> its layer parts, blocks in network order
  for name in layers:
    match = _BLOCK_LAYER.match(name)
    if match and name not in fixed:
      parts.setdefault(match.group(1), set()).add(match.group(2))
  block_ids = {block: i for i, block in enumerate(parts)}
  paths = {}
  for name in layers:
    if name in fixed:
      paths[name] = fixed[name]
      continue
    match = _BLOCK_LAYER.match(name)
    path = match and in_block(match.group(2), parts[match.group(1)])
    if not path:
      raise ValueError(f"Layer '{name}' has no reference checkpoint name.")
    paths[name] = f"{block_path.format(block_ids[match.group(1)])}/{path}"
  return paths


def _scope_in_block(part, parts):
  for base, order in _NUMBERED:
    if part in order:
      n = sum(p in parts for p in order[:order.index(part)])
      return base + (f"_{n}" if n else "")
  return _BLOCK_SCOPES.get(part)


def _attribute_in_block(part, parts):
  if part == "project_bn":  # MBConv's _norm1 is the depthwise conv's BN
    return "_norm2" if "dwconv" in parts else "_norm1"
  return _OBJECT_PARTS.get(part)


def reference_names(model):
  """TF1 scope of each weighted layer, e.g. 'blocks_3/conv2d_1'.

  Args:
    model: a model from `effnetv2_tf.create_model`.

  Returns:
    A dict from layer name to its scope below the reference model name.
  """
  return _layer_paths(model, _FIXED_SCOPES, _scope_in_block, "blocks_{}")


def object_names(model):
  """main_tf2.py's attribute path of each weighted layer, e.g.
  '_blocks/3/_norm1' (a dict from layer name to path)."""
  return _layer_paths(model, _OBJECT_FIXED, _attribute_in_block,
                      "_blocks/{}")


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Where one checkpoint keeps the model's variables."""
  paths: dict  # layer name -> checkpoint path of the layer
  suffix: str  # after `<path>/<leaf>`
  model_variables: frozenset  # the checkpoint's: each must be taken
  head: tuple  # prefixes of the classifier's variables


def _is_model_variable(name, suffix):
  return (name.endswith(suffix) and
          name[:len(name) - len(suffix)].rsplit("/", 1)[-1] in _MODEL_LEAVES)


def _scope_layout(model, shapes, prefix):
  """TF1 names below the model's root scope; main.py's or the released
  checkpoints' classifier scope, whichever the checkpoint has."""
  root = sorted((k[:-len(_STEM)] for k in shapes if k.endswith(_STEM)),
                key=len)[0]
  paths = {k: f"{root}/{v}" for k, v in reference_names(model).items()}
  heads = [s for s in _CLASSIFIER_SCOPES if f"{root}/{s}/kernel" in shapes]
  if _HEAD in paths:
    if len(heads) != 1:
      found = " and ".join(f"'{root}/{s}'" for s in heads)
      raise _misfit(f"Checkpoint {prefix}", model, (
          f"it has two classifiers, {found}; keep one." if heads else
          f"it has no classifier '{root}/head/dense' (released checkpoints) "
          f"or '{root}/head_1/dense' (main.py)."))
    paths[_HEAD] = f"{root}/{heads[0]}"
  variables = [k for k in shapes
               if k.startswith(root + "/") and _is_model_variable(k, "")]
  return _Layout(paths, "", frozenset(variables),
                 tuple(f"{root}/{s}/" for s in _CLASSIFIER_SCOPES))


def _object_layout(model, shapes):
  """Attribute paths below the checkpoint's model object."""
  root = sorted((k[:-len(_OBJECT_STEM)] for k in shapes
                 if k.endswith(_OBJECT_STEM)), key=len)[0]
  paths = {k: root + v for k, v in object_names(model).items()}
  variables = [k for k in shapes
               if k.startswith(root) and _is_model_variable(k, _OBJECT_VALUE)]
  return _Layout(paths, _OBJECT_VALUE, frozenset(variables), (f"{root}_fc/",))


def _match_checkpoint(model, reader, prefix):
  """Pairs each model weight with its checkpoint tensor (EMA preferred)."""
  shapes = reader.get_variable_to_shape_map()
  kind = reference_layout(shapes)
  if kind is None:
    raise WeightsMismatchError(
        f"Checkpoint {prefix} has neither a '<model name>{_STEM}' variable "
        f"(main.py, released checkpoints) nor '{_OBJECT_STEM}' "
        "(main_tf2.py): not a reference EfficientNet(V2) checkpoint.")
  layout = (_scope_layout(model, shapes, prefix) if kind == "scope"
            else _object_layout(model, shapes))
  used, pairs = set(), []
  for layer in _weighted_layers(model):
    for weight in layer.weights:
      leaf = weight.name
      if isinstance(layer, keras.layers.DepthwiseConv2D) and leaf == "kernel":
        leaf = "depthwise_kernel"
      name = f"{layout.paths[layer.name]}/{leaf}{layout.suffix}"
      key = name + _EMA if name + _EMA in shapes else name
      if key not in shapes:
        raise _misfit(f"Checkpoint {prefix}", model, f"variable '{name}' "
                      f"(for layer '{layer.name}') is missing.")
      used.add(name)
      if tuple(shapes[key]) != tuple(weight.shape) and layer.name == _HEAD:
        continue  # another class count: load_weights keeps the new head
      if tuple(shapes[key]) != tuple(weight.shape):
        raise _misfit(f"Checkpoint {prefix}", model, f"variable '{key}' (for "
                      f"layer '{layer.name}') has shape {tuple(shapes[key])}"
                      f", the model expects {tuple(weight.shape)}.")
      pairs.append((weight, reader.get_tensor(key)))
  _check_unused(layout, used, model, prefix)
  return pairs


def _check_unused(layout, used, model, prefix):
  """Model variables of the checkpoint that the model did not take."""
  skipped = () if _has_top(model) else layout.head
  for name in sorted(layout.model_variables - used):
    if not name.startswith(skipped):
      raise _misfit(f"Checkpoint {prefix}", model, f"variable '{name}' has "
                    "no counterpart in the model (another variant?).")
