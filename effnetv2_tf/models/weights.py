"""Loads pretrained weights: keras.applications files and reference checkpoints.

Two sources fit the models of `effnetv2_tf.models.model`:
  * weights files of the matching `keras.applications` model
    (`EfficientNetV2*` or `EfficientNetB*`), either Keras 3 `save_weights`
    files (`*.weights.h5`) or the legacy Keras 2 `.h5` files that
    keras.applications distributes. Both are read with h5py and mapped by
    layer name; the only names that differ are in `_KERAS_ALIASES`.
  * TF1 checkpoints of the reference code (google/automl efficientnetv2 and
    the EfficientNet V1 releases), whose variables are named by scope
    (`<model>/blocks_3/tpu_batch_normalization_1/gamma`); the
    `ExponentialMovingAverage` copy of a variable is preferred.
Nothing is assigned until every weight has been found with the right shape,
so a failed load leaves the model as it was.
"""

import glob
import os
import re

from absl import logging
import h5py
import keras
import numpy as np
import tensorflow as tf

# keras.applications layer name -> ours (keras V2 calls the depthwise conv of
# MBConv blocks `dwconv2`; V1 calls it `dwconv`, as we do).
_KERAS_ALIASES = ((re.compile(r"^(block\d+[a-z]+)_dwconv2$"), r"\1_dwconv"),)
# keras.applications' input preprocessing (V1 has an adapted Normalization
# with mean/variance/count weights); ours has no weights, so these are skipped.
_PREPROCESSING = re.compile(r"^(rescaling|normalization)([_#]\d+)?$")
_B3_NOTE = (
    " Note: keras.applications' EfficientNetB3 rounds channel counts "
    "differently from the reference (12,320,528 parameters against "
    "12,314,268), so its weights cannot fit efficientnet-b3; use the "
    "reference checkpoint instead.")
_HEAD = "predictions"  # may be absent from the model (include_top=False)


class WeightsMismatchError(ValueError):
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
    FileNotFoundError: `weights` is neither an h5 file nor a checkpoint.
    WeightsMismatchError: the file does not fit the model; the message
      names the first layer or variable that does not fit.
  """
  load_weights_counted(model, weights)
  return model


def load_weights_counted(model, weights):
  """`load_weights`; returns (weights loaded, layers left as initialised)."""
  path = os.fspath(weights)
  if os.path.isfile(path) and h5py.is_hdf5(path):
    layer_values = read_h5_weights(path)
    note = _B3_NOTE if model.name == "efficientnet-b3" else ""
    pairs = _match_layers(model, layer_values, path, note)
  else:
    prefix = find_checkpoint(path)
    pairs = _match_checkpoint(model, tf.train.load_checkpoint(prefix), prefix)
  for variable, value in pairs:
    variable.assign(value)
  loaded = {id(variable) for variable, _ in pairs}
  head = [w for w in _head_weights(model) if id(w) not in loaded]
  if head:
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


def _match_layers(model, values, path, note=""):
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
                    "the file.", note)
    expected = [tuple(w.shape) for w in layer.weights]
    got = [tuple(a.shape) for a in arrays]
    if expected != got and layer.name == _HEAD:
      continue  # another class count: load_weights keeps the new head
    if expected != got:
      raise _misfit(source, model, f"layer '{layer.name}' expects shapes "
                    f"{expected}, the file has {got}.", note)
    pairs.extend(zip(layer.weights, arrays))
  if not _has_top(model):
    values.pop(_HEAD, None)  # a file with the top, into a model without
  if values:
    raise _misfit(f"Weights file {path}", model, f"the file's layer "
                  f"'{next(iter(values))}' has no counterpart in the model "
                  "(another variant?).", note)
  return pairs


def _misfit(source, model, detail, note=""):
  return WeightsMismatchError(
      f"{source} does not fit model {model.name}: {detail}{note}")


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

_FIXED_SCOPES = {
    "stem_conv": "stem/conv2d",
    "stem_bn": "stem/tpu_batch_normalization",
    "top_conv": "head/conv2d",
    "top_bn": "head/tpu_batch_normalization",
    "predictions": "head/dense",
}
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


def find_checkpoint(path):
  """Resolves a checkpoint prefix from a prefix, a file of it, or a folder.

  Args:
    path: a checkpoint prefix (`.../model.ckpt-1000`), one of its
      `.index`/`.data-*` files, or a directory holding a checkpoint.

  Returns:
    The checkpoint prefix.

  Raises:
    FileNotFoundError: no h5 file and no checkpoint is there.
  """
  if os.path.isdir(path):
    prefix = tf.train.latest_checkpoint(path)
    indexes = sorted(glob.glob(os.path.join(glob.escape(path), "*.index")))
    if prefix is None and len(indexes) == 1:
      prefix = indexes[0][:-len(".index")]
  else:
    prefix = re.sub(r"\.(index|data-\d+-of-\d+)$", "", path)
  if prefix is None or not os.path.isfile(prefix + ".index"):
    raise FileNotFoundError(
        f"Weights {path!r} are neither an h5 weights file nor a TensorFlow "
        "checkpoint (prefix, its .index file, or a directory holding one).")
  return prefix


def reference_names(model):
  """Reference scope of each weighted layer, e.g. 'blocks_3/conv2d_1'.

  Args:
    model: a model from `effnetv2_tf.create_model`.

  Returns:
    A dict from layer name to its scope below the reference model name.
  """
  layers = [layer.name for layer in _weighted_layers(model)]
  parts = {}  # block prefix -> its layer parts, blocks in network order
  for name in layers:
    match = _BLOCK_LAYER.match(name)
    if match and name not in _FIXED_SCOPES:
      parts.setdefault(match.group(1), set()).add(match.group(2))
  block_ids = {block: i for i, block in enumerate(parts)}
  scopes = {}
  for name in layers:
    if name in _FIXED_SCOPES:
      scopes[name] = _FIXED_SCOPES[name]
      continue
    match = _BLOCK_LAYER.match(name)
    if not match:
      raise ValueError(f"Layer '{name}' has no reference checkpoint name.")
    block, part = match.groups()
    scope = _BLOCK_SCOPES.get(part)
    for base, order in _NUMBERED:
      if part in order:
        n = sum(p in parts[block] for p in order[:order.index(part)])
        scope = base + (f"_{n}" if n else "")
    if scope is None:
      raise ValueError(f"Layer '{name}' has no reference checkpoint name.")
    scopes[name] = f"blocks_{block_ids[block]}/{scope}"
  return scopes


def _match_checkpoint(model, reader, prefix):
  """Pairs each model weight with its checkpoint tensor (EMA preferred)."""
  shapes = reader.get_variable_to_shape_map()
  stems = [k[:-len("/stem/conv2d/kernel")] for k in shapes
           if k.endswith("/stem/conv2d/kernel")]
  if not stems:
    raise WeightsMismatchError(
        f"Checkpoint {prefix} has no '<model name>/stem/conv2d/kernel' "
        "variable: not a reference EfficientNet(V2) checkpoint.")
  root = sorted(stems, key=len)[0]
  scopes = reference_names(model)
  used, pairs = set(), []
  for layer in _weighted_layers(model):
    for weight in layer.weights:
      leaf = weight.name
      if isinstance(layer, keras.layers.DepthwiseConv2D) and leaf == "kernel":
        leaf = "depthwise_kernel"
      name = f"{root}/{scopes[layer.name]}/{leaf}"
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
  _check_unused(shapes, used, root, model, prefix)
  return pairs


def _check_unused(shapes, used, root, model, prefix):
  """Model variables of the checkpoint that the model did not take."""
  skipped = () if _has_top(model) else (f"{root}/head/dense/",)
  for name in sorted(shapes):
    if (name.startswith(root + "/") and name not in used
        and name.rsplit("/", 1)[-1] in _MODEL_LEAVES
        and not name.startswith(skipped)):
      raise _misfit(f"Checkpoint {prefix}", model, f"variable '{name}' has "
                    "no counterpart in the model (another variant?).")
