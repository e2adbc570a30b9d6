"""Tests of `effnetv2_tf.models.weights`: keras.applications files and checkpoints.

keras.applications models get random (non-trivial) weights and are saved in
both h5 layouts; our model must then give the same outputs. Reference
checkpoints are written with `tf.raw_ops.SaveV2` under the reference names,
among them exactly the names and shapes of the checkpoints the reference's
own drivers wrote (../shared/reference/checkpoint_layouts/).
"""

import json
import re

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf.models import weights as weights_lib
from effnetv2_tf.runs import checkpoints
import effnetv2_tf
from conftest import SHARED
from conftest import tiny_model

SIZE = 64
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], "float32")
IMAGENET_STD = np.array([0.229, 0.224, 0.225], "float32")


def _perturb(model, rng):
  """Random weights that keep activations moderate (not Keras' init)."""
  for w in model.weights:
    if w.path.startswith("normalization"):
      continue
    v = w.numpy()
    if w.name == "moving_variance":
      v = rng.uniform(0.5, 1.5, v.shape)
    elif w.name == "gamma":
      v = rng.uniform(0.2, 0.6, v.shape)
    else:
      v = v * rng.uniform(0.5, 1.5, v.shape) + rng.normal(0, 0.05, v.shape)
    w.assign(v.astype("float32"))


def _write_legacy_h5(model, path):
  """Keras 2 `save_weights` layout, as keras.applications distributes."""
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [l.name.encode() for l in model.layers]
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.15.0"
    for layer in model.layers:
      group = f.create_group(layer.name)
      names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
      group.attrs["weight_names"] = [n.encode() for n in names]
      for name, w in zip(names, layer.weights):
        group.create_dataset(name, data=w.numpy())


def _keras_files(tmp_path_factory, keras_model, stem):
  """Saves both layouts; returns (model, x, Keras output, paths)."""
  rng = np.random.default_rng(7)
  _perturb(keras_model, rng)
  folder = tmp_path_factory.mktemp(stem)
  paths = {"keras3": str(folder / f"{stem}.weights.h5"),
           "legacy": str(folder / f"{stem}.h5")}
  keras_model.save_weights(paths["keras3"])
  _write_legacy_h5(keras_model, paths["legacy"])
  x = rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
  return keras_model, x, keras_model(x, training=False).numpy(), paths


def make_v2_files(tmp_path_factory):
  """keras.applications' EfficientNetV2B0 files: conftest's `v2_files`."""
  keras.utils.set_random_seed(1)
  model = keras.applications.EfficientNetV2B0(
      weights=None, input_shape=(SIZE, SIZE, 3), include_preprocessing=True,
      classifier_activation=None)
  return _keras_files(tmp_path_factory, model, "v2b0")


def _keras_v1_files(tmp_path_factory, application, seed, tag):
  keras.utils.set_random_seed(seed)
  model = application(
      weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
  # Keras V1 always normalises with an adapted Normalization layer; give it
  # the ImageNet statistics our include_preprocessing applies.
  norm = next(l for l in model.layers if l.name.startswith("normalization"))
  norm.set_weights([IMAGENET_MEAN, IMAGENET_STD**2, norm.get_weights()[2]])
  norm.finalize_state()
  return _keras_files(tmp_path_factory, model, tag)


@pytest.fixture(scope="module")
def v1_files(tmp_path_factory):
  return _keras_v1_files(tmp_path_factory,
                         keras.applications.EfficientNetB0, 2, "b0")


def _ours(name, path, **kwargs):
  return effnetv2_tf.create_model(
      name, weights=path, include_preprocessing=True,
      input_shape=(SIZE, SIZE, 3), **kwargs)


@pytest.mark.parametrize("layout", ["keras3", "legacy"])
@pytest.mark.parametrize("variant", ["v2", "v1"])
def test_keras_applications_files_give_same_outputs(variant, layout, request):
  _, x, expected, paths = request.getfixturevalue(f"{variant}_files")
  name = {"v2": "efficientnetv2-b0", "v1": "efficientnet-b0"}[variant]
  y = _ours(name, paths[layout])(x, training=False).numpy()
  assert 0.05 < np.abs(expected).max() < 100  # neither trivial nor blown up
  np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4)


def test_keras3_file_without_layer_names_maps_by_order(v1_files, tmp_path):
  _, x, expected, paths = v1_files
  path = str(tmp_path / "unnamed.weights.h5")
  with h5py.File(paths["keras3"], "r") as src, h5py.File(path, "w") as dst:
    for key in src:
      src.copy(key, dst)
    for group in dst["layers"].values():
      del group["vars"].attrs["name"]
  y = _ours("efficientnet-b0", path)(x, training=False).numpy()
  np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4)


def test_file_with_top_loads_into_model_without_top(v2_files):
  keras_model, _, _, paths = v2_files
  model = _ours("efficientnetv2-b0", paths["keras3"], include_top=False)
  np.testing.assert_array_equal(
      model.get_layer("block4a_dwconv").weights[0].numpy(),
      keras_model.get_layer("block4a_dwconv2").weights[0].numpy())


@pytest.mark.parametrize("name,kwargs,message", [
    ("efficientnetv2-b1", {}, "layer 'block1b_project_conv' is missing"),
    ("efficientnetv2-b0", {"width_coefficient": 1.25},
     r"layer 'stem_conv' expects shapes \[\(3, 3, 3, 40\)\], the file has "
     r"\[\(3, 3, 3, 32\)\]"),
])
def test_mismatched_file_names_the_layer(v2_files, name, kwargs, message):
  path = v2_files[3]["legacy"]
  with pytest.raises(ValueError, match=message) as error:
    _ours(name, path, **kwargs)
  assert path in str(error.value)


def test_file_with_another_class_count_loads_all_but_the_head(v2_files,
                                                              caplog):
  keras_model, _, _, paths = v2_files
  model = _ours("efficientnetv2-b0", paths["legacy"], num_classes=10)
  for name in ("stem_conv", "block6a_expand_conv", "top_bn"):
    for ours, theirs in zip(model.get_layer(name).weights,
                            keras_model.get_layer(name).weights):
      np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  assert model.get_layer("predictions").kernel.shape == (1280, 10)
  assert "the head (predictions) is newly initialised" in caplog.text


@pytest.fixture(scope="module")
def b3_files(tmp_path_factory):
  return _keras_v1_files(tmp_path_factory,
                         keras.applications.EfficientNetB3, 3, "b3")


def test_b3_loads_keras_applications_file(b3_files):
  # keras.applications' EfficientNetB3 rounds channels with the 10% rule:
  # its first block outputs 24 channels (16 * 1.2 = 19.2 -> 16 < 17.28).
  keras_model, x, expected, paths = b3_files
  assert keras_model.get_layer("block1a_project_conv").kernel.shape[-1] == 24
  model = _ours("efficientnet-b3", paths["legacy"])
  np.testing.assert_allclose(model(x, training=False).numpy(), expected,
                             rtol=0, atol=1e-4)


def test_not_a_weights_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'.*missing.h5' not found"):
    tiny_model(weights=str(tmp_path / "missing.h5"))
  with pytest.raises(FileNotFoundError, match="missing/ckpt-5' not found"):
    tiny_model(weights=str(tmp_path / "missing" / "ckpt-5"))
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(FileNotFoundError, match="notes.txt"):
    tiny_model(weights=str(tmp_path / "notes.txt"))
  with pytest.raises(FileNotFoundError):
    tiny_model(weights=str(tmp_path))  # a folder without a checkpoint


# ------------------------------------------------- reference checkpoints


def test_reference_names_follow_creation_order():
  names = weights_lib.reference_names(tiny_model("efficientnetv2-b0"))
  # Tiny B0 has 1, 1, 1, 2, 2, 3 blocks per stage: block4a is blocks_3.
  assert {k: names[k] for k in (
      "stem_conv", "stem_bn", "top_conv", "top_bn", "predictions",
      "block1a_project_conv", "block1a_project_bn",  # fused, expand 1
      "block2a_expand_conv", "block2a_expand_bn",  # fused with expand
      "block2a_project_conv", "block2a_project_bn",
      "block4a_expand_conv", "block4a_expand_bn", "block4a_dwconv",
      "block4a_bn", "block4a_se_reduce", "block4a_se_expand",
      "block4a_project_conv", "block4a_project_bn", "block4b_dwconv")} == {
          "stem_conv": "stem/conv2d",
          "stem_bn": "stem/tpu_batch_normalization",
          "top_conv": "head/conv2d",
          "top_bn": "head/tpu_batch_normalization",
          "predictions": "head/dense",
          "block1a_project_conv": "blocks_0/conv2d",
          "block1a_project_bn": "blocks_0/tpu_batch_normalization",
          "block2a_expand_conv": "blocks_1/conv2d",
          "block2a_expand_bn": "blocks_1/tpu_batch_normalization",
          "block2a_project_conv": "blocks_1/conv2d_1",
          "block2a_project_bn": "blocks_1/tpu_batch_normalization_1",
          "block4a_expand_conv": "blocks_3/conv2d",
          "block4a_expand_bn": "blocks_3/tpu_batch_normalization",
          "block4a_dwconv": "blocks_3/depthwise_conv2d",
          "block4a_bn": "blocks_3/tpu_batch_normalization_1",
          "block4a_se_reduce": "blocks_3/se/conv2d",
          "block4a_se_expand": "blocks_3/se/conv2d_1",
          "block4a_project_conv": "blocks_3/conv2d_1",
          "block4a_project_bn": "blocks_3/tpu_batch_normalization_2",
          "block4b_dwconv": "blocks_4/depthwise_conv2d"}
  v1 = weights_lib.reference_names(tiny_model("efficientnet-b0"))
  assert [v1[k] for k in ("block1a_dwconv", "block1a_bn", "block1a_se_reduce",
                          "block1a_project_conv", "block1a_project_bn")] == [
      "blocks_0/depthwise_conv2d", "blocks_0/tpu_batch_normalization",
      "blocks_0/se/conv2d", "blocks_0/conv2d",
      "blocks_0/tpu_batch_normalization_1"]


def _write_checkpoint(model, prefix, root="efficientnetv2-b0", skip=(),
                      heads=("head/dense",)):
  """Reference-named checkpoint; every other variable gets a distinct EMA.

  `heads`: the scopes the classifier is written under (main.py writes
  head_1/dense, the released checkpoints head/dense).

  Returns:
    The values the loader should pick (the EMA copy where there is one).
  """
  scopes = weights_lib.reference_names(model)
  names, tensors, expected = [], [], []
  for layer in model.layers:
    for w in layer.weights:
      leaf = w.name
      if isinstance(layer, keras.layers.DepthwiseConv2D):
        leaf = "depthwise_kernel"
      value = w.numpy()
      ema = value + 0.01 * np.abs(value).mean() + 0.01
      with_ema = len(expected) % 2
      for scope in (heads if layer.name == "predictions"
                    else (scopes[layer.name],)):
        name = f"{root}/{scope}/{leaf}"
        if name in skip:
          continue
        names.append(name)
        tensors.append(value)
        if with_ema:
          names.append(name + "/ExponentialMovingAverage")
          tensors.append(ema)
          names.append(name + "/RMSProp")  # optimizer slots are ignored
          tensors.append(np.zeros_like(value))
      expected.append(ema if with_ema else value)
  names.append("global_step")
  tensors.append(np.int64(1000))
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                    shape_and_slices=[""] * len(names), tensors=tensors)
  return expected


def test_checkpoint_loads_ema_values(tmp_path):
  source = tiny_model()
  prefix = str(tmp_path / "ckpt" / "model")
  expected = _write_checkpoint(source, prefix)
  for path in (prefix, prefix + ".index", str(tmp_path / "ckpt")):
    model = tiny_model(weights=path)
    for w, value in zip(model.weights, expected):
      np.testing.assert_array_equal(w.numpy(), value, err_msg=w.path)
  for w, value in zip(source.weights, expected):
    w.assign(value)
  x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
  np.testing.assert_allclose(model(x, training=False).numpy(),
                             source(x, training=False).numpy(), atol=1e-5)


def test_checkpoint_without_top_and_v1_root(tmp_path):
  source = tiny_model("efficientnet-b0")
  prefix = str(tmp_path / "model.ckpt-1000")
  expected = _write_checkpoint(source, prefix, root="efficientnet-b0")
  model = tiny_model("efficientnet-b0", weights=prefix, include_top=False)
  assert len(model.weights) == len(expected) - 2
  for w, value in zip(model.weights, expected):
    np.testing.assert_array_equal(w.numpy(), value, err_msg=w.path)


_V2_B0_LONGER = effnetv2_tf.get_model_spec("efficientnetv2-b0").blocks[:-1] + (
    "r9_k3_s2_e6_i112_o192_se0.25",)  # tiny: 4 blocks in the last stage, not 3


def test_checkpoint_with_another_class_count_loads_all_but_the_head(
    tmp_path):
  prefix = str(tmp_path / "model")
  expected = _write_checkpoint(tiny_model(), prefix)  # 10 classes
  model = tiny_model(weights=prefix, num_classes=7)
  body = [w for w in model.weights if not w.path.startswith("predictions")]
  assert len(body) == len(expected) - 2
  for w, value in zip(body, expected):
    np.testing.assert_array_equal(w.numpy(), value, err_msg=w.path)
  assert model.get_layer("predictions").kernel.shape[-1] == 7


@pytest.mark.parametrize("source_kwargs,model_kwargs,skip,message", [
    ({}, {}, ("efficientnetv2-b0/blocks_3/se/conv2d_1/bias",),
     "variable 'efficientnetv2-b0/blocks_3/se/conv2d_1/bias' .* is missing"),
    ({"blocks": _V2_B0_LONGER}, {}, (),
     "variable 'efficientnetv2-b0/blocks_10/.*' has no counterpart"),
])
def test_mismatched_checkpoint_names_the_variable(
    tmp_path, source_kwargs, model_kwargs, skip, message):
  prefix = str(tmp_path / "model")
  _write_checkpoint(tiny_model(**source_kwargs), prefix, skip=skip)
  with pytest.raises(ValueError, match=message) as error:
    tiny_model(weights=prefix, **model_kwargs)
  assert prefix in str(error.value)


def test_b3_reference_checkpoint_with_24_channels(b3_files, tmp_path):
  # The V1 code that trained the released B3 (efficientdet/backbone/
  # efficientnet_model.py round_filters L128-142) gives its first block,
  # an MBConv without expansion, a 1x1 project conv from 40 to 24 channels.
  source = _ours("efficientnet-b3", b3_files[3]["legacy"])
  prefix = str(tmp_path / "model.ckpt")
  expected = _write_checkpoint(source, prefix, root="efficientnet-b3")
  shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  assert shapes["efficientnet-b3/blocks_0/conv2d/kernel"] == [1, 1, 40, 24]
  model = _ours("efficientnet-b3", prefix)
  for w, value in zip(source.weights, expected):
    w.assign(value)
  x = b3_files[1]
  np.testing.assert_allclose(model(x, training=False).numpy(),
                             source(x, training=False).numpy(), atol=1e-4)


def test_checkpoint_with_main_py_classifier_scope(tmp_path):
  # main.py under current TensorFlow: head_1/dense (checkpoint_layouts/
  # README.md).
  prefix = str(tmp_path / "model")
  expected = _write_checkpoint(tiny_model(), prefix, heads=("head_1/dense",))
  model = tiny_model(weights=prefix)
  for w, value in zip(model.weights, expected):
    np.testing.assert_array_equal(w.numpy(), value, err_msg=w.path)
  assert tiny_model(weights=prefix, include_top=False)


@pytest.mark.parametrize("heads,message", [
    (("head/dense", "head_1/dense"),
     "two classifiers, 'efficientnetv2-b0/head/dense' and "
     "'efficientnetv2-b0/head_1/dense'; keep one"),
    ((), "no classifier 'efficientnetv2-b0/head/dense' .* or "
     "'efficientnetv2-b0/head_1/dense'"),
], ids=["both", "neither"])
def test_checkpoint_needs_exactly_one_classifier(tmp_path, heads, message):
  prefix = str(tmp_path / "model")
  _write_checkpoint(tiny_model(), prefix, heads=heads)
  with pytest.raises(weights_lib.WeightsMismatchError, match=message) as err:
    tiny_model(weights=prefix)
  assert "\n" not in str(err.value)
  assert tiny_model(weights=prefix, include_top=False)  # the head unused


def test_not_a_reference_checkpoint_names_both_layouts(tmp_path):
  prefix = str(tmp_path / "model")
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["dense/kernel"],
                    shape_and_slices=[""], tensors=[np.zeros((2, 2))])
  with pytest.raises(weights_lib.WeightsMismatchError,
                     match="main.py.*main_tf2.py.*not a reference"):
    tiny_model(weights=prefix)


# ------------------------------- checkpoints of the reference's own drivers

LAYOUTS = SHARED / "reference" / "checkpoint_layouts"
_EMA = "/ExponentialMovingAverage"
_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
_LEAVES = ("kernel", "depthwise_kernel", "bias", "gamma", "beta",
           "moving_mean", "moving_variance")
# Where the reference keeps each layer, written from effnetv2_model.py:
# TF1 scopes from the creation-order counters get_conv_name/get_norm_name
# (MBConvBlock._build L187-264, FusedMBConvBlock._build L316-373, SE L108-133,
# Stem L409-429, Head L435-470, the classifier under a second
# name_scope('head') L645), object paths from the attribute names.
_FIXED = {
    "main_py_tf1": {"stem_conv": "stem/conv2d",
                    "stem_bn": "stem/tpu_batch_normalization",
                    "top_conv": "head/conv2d",
                    "top_bn": "head/tpu_batch_normalization",
                    "predictions": "head_1/dense"},
    "main_tf2_py": {"stem_conv": "_stem/_conv_stem", "stem_bn": "_stem/_norm",
                    "top_conv": "_head/_conv_head", "top_bn": "_head/_norm",
                    "predictions": "_fc"},
}
_SE_TF1 = {"se_reduce": "se/conv2d", "se_expand": "se/conv2d_1"}
_SE_TF2 = {"se_reduce": "_se/_se_reduce", "se_expand": "_se/_se_expand"}
_IN_BLOCK = {
    "main_py_tf1": {
        "mbconv, expand": {
            "expand_conv": "conv2d", "expand_bn": "tpu_batch_normalization",
            "dwconv": "depthwise_conv2d", "bn": "tpu_batch_normalization_1",
            "project_conv": "conv2d_1",
            "project_bn": "tpu_batch_normalization_2", **_SE_TF1},
        "mbconv": {
            "dwconv": "depthwise_conv2d", "bn": "tpu_batch_normalization",
            "project_conv": "conv2d",
            "project_bn": "tpu_batch_normalization_1", **_SE_TF1},
        "fused, expand": {
            "expand_conv": "conv2d", "expand_bn": "tpu_batch_normalization",
            "project_conv": "conv2d_1",
            "project_bn": "tpu_batch_normalization_1"},
        "fused": {"project_conv": "conv2d",
                  "project_bn": "tpu_batch_normalization"},
    },
    "main_tf2_py": {
        "mbconv, expand": {
            "expand_conv": "_expand_conv", "expand_bn": "_norm0",
            "dwconv": "_depthwise_conv", "bn": "_norm1",
            "project_conv": "_project_conv", "project_bn": "_norm2",
            **_SE_TF2},
        "mbconv": {"dwconv": "_depthwise_conv", "bn": "_norm1",
                   "project_conv": "_project_conv", "project_bn": "_norm2",
                   **_SE_TF2},
        "fused, expand": {"expand_conv": "_expand_conv", "expand_bn": "_norm0",
                          "project_conv": "_project_conv",
                          "project_bn": "_norm1"},
        "fused": {"project_conv": "_project_conv", "project_bn": "_norm1"},
    },
}


def _read_layout(model_name, driver):
  """{name: shape} of a checkpoint the reference's `driver` wrote."""
  lines = (LAYOUTS / f"{model_name}.{driver}.tsv").read_text().splitlines()
  return {name: tuple(json.loads(shape))
          for name, shape in (line.split("\t") for line in lines)}


def _hand_values(shapes):
  """Deterministic values for every variable, moderate activations."""
  rng = np.random.default_rng(11)
  values = {}
  for name, shape in sorted(shapes.items()):
    leaf = next((p for p in reversed(name.split("/")) if p in _LEAVES), None)
    if name == "_CHECKPOINTABLE_OBJECT_GRAPH":
      values[name] = np.array(b"")  # an empty object graph proto
    elif name in ("global_step", "optimizer/_iterations"):
      values[name] = np.int64(12)
    elif leaf in ("kernel", "depthwise_kernel"):
      fan_in = np.prod(shape[:2] if leaf == "depthwise_kernel" else
                       shape[:-1])
      values[name] = rng.normal(0, np.sqrt(2 / fan_in), shape)
    elif leaf in ("gamma", "moving_variance"):
      values[name] = rng.uniform(0.5, 1.5, shape)
    else:  # beta, moving_mean, bias, optimizer slots, learning rate
      values[name] = rng.normal(0, 0.1, shape)
    if values[name].dtype == np.float64:
      values[name] = values[name].astype("float32")
  return values


def _save(prefix, values):
  """Writes {name: value} as a checkpoint at `prefix`, names as given."""
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=list(values),
                    shape_and_slices=[""] * len(values),
                    tensors=list(values.values()))


def _reference_variable(model, driver):
  """{our weight path: the variable the reference keeps it in}; the TF1
  checkpoint's EMA copy, which evaluation takes."""
  blocks = {}  # block prefix -> its layer parts, in network order
  for layer in model.layers:
    match = re.match(r"^(block\d+[a-z]+)_(\w+)$", layer.name)
    if match and layer.weights:
      blocks.setdefault(match[1], set()).add(match[2])
  names = {}
  for layer in model.layers:
    for w in layer.weights:
      leaf = ("depthwise_kernel"
              if isinstance(layer, keras.layers.DepthwiseConv2D) else w.name)
      if layer.name in _FIXED[driver]:
        path = _FIXED[driver][layer.name]
      else:
        block, part = re.match(r"^(block\d+[a-z]+)_(\w+)$", layer.name).groups()
        parts = blocks[block]
        kind = ("mbconv" if "dwconv" in parts else "fused") + (
            ", expand" if "expand_conv" in parts else "")
        i = list(blocks).index(block)
        path = (f"blocks_{i}/" if driver == "main_py_tf1" else
                f"_blocks/{i}/") + _IN_BLOCK[driver][kind][part]
      names[w.path] = (f"{model.name}/{path}/{leaf}{_EMA}"
                       if driver == "main_py_tf1" else f"{path}/{leaf}{_VALUE}")
  return names


@pytest.mark.parametrize("driver", ["main_py_tf1", "main_tf2_py"])
@pytest.mark.parametrize("model_name", ["efficientnetv2-b0", "efficientnet-b0"])
def test_checkpoints_of_the_reference_drivers_load(tmp_path, model_name,
                                                   driver):
  shapes = _read_layout(model_name, driver)
  values = _hand_values(shapes)
  prefix = str(tmp_path / "ckpt-12")
  _save(prefix, values)
  direct = effnetv2_tf.create_model(model_name)  # 1000 classes, as saved
  names = _reference_variable(direct, driver)
  # Each model variable of the file is one of ours (TF1: its EMA copy).
  assert sorted(names.values()) == sorted(
      n for n in shapes if (n.endswith(_EMA) if driver == "main_py_tf1" else
                            n.startswith(("_stem/", "_blocks/", "_head/",
                                          "_fc/"))))
  for w in direct.weights:
    w.assign(values[names[w.path]])
  loaded = effnetv2_tf.create_model(model_name, weights=prefix)
  for ours, theirs in zip(loaded.weights, direct.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy(),
                                  err_msg=ours.path)
  x = np.random.default_rng(5).uniform(-1, 1, (2, 32, 32, 3))
  expected = direct(x.astype("float32"), training=False).numpy()
  assert 0.05 < np.abs(expected).max() < 100  # neither trivial nor blown up
  np.testing.assert_allclose(loaded(x.astype("float32"), training=False),
                             expected, rtol=0, atol=1e-5)


def test_main_tf2_checkpoint_missing_a_variable_names_it(tmp_path):
  shapes = _read_layout("efficientnetv2-b0", "main_tf2_py")
  missing = "_blocks/5/_se/_se_expand/bias" + _VALUE  # block4a (1+2+2 before)
  values = {k: v for k, v in _hand_values(shapes).items() if k != missing}
  prefix = str(tmp_path / "ckpt")
  _save(prefix, values)
  with pytest.raises(weights_lib.WeightsMismatchError,
                     match=f"variable '{re.escape(missing)}' \\(for layer "
                     "'block4a_se_expand'\\) is missing"):
    effnetv2_tf.create_model("efficientnetv2-b0", weights=prefix)


def test_main_tf2_checkpoint_into_another_head(tmp_path):
  shapes = _read_layout("efficientnet-b0", "main_tf2_py")
  values = _hand_values(shapes)
  prefix = str(tmp_path / "ckpt")
  _save(prefix, values)
  stem = "_stem/_conv_stem/kernel" + _VALUE
  for kwargs in ({"include_top": False}, {"num_classes": 10}):
    model = effnetv2_tf.create_model("efficientnet-b0", weights=prefix,
                                     **kwargs)
    np.testing.assert_array_equal(model.get_layer("stem_conv").kernel,
                                  values[stem])


def test_init_checkpoint_reads_a_main_tf2_checkpoint(tmp_path):
  # --init_checkpoint (checkpoints.init_from) of main_tf2.py's object-based
  # save_weights: every weight but the 1000-class head reaches a 10-class
  # model (the head is newly initialised and counted as skipped).
  shapes = _read_layout("efficientnet-b0", "main_tf2_py")
  values = _hand_values(shapes)
  prefix = str(tmp_path / "ckpt")
  _save(prefix, values)
  model = effnetv2_tf.create_model("efficientnet-b0", num_classes=10)
  loaded = checkpoints.init_from(model, prefix)
  assert loaded == len(model.weights) - 2  # all but the head's kernel, bias
  np.testing.assert_array_equal(model.get_layer("stem_conv").kernel,
                                values["_stem/_conv_stem/kernel" + _VALUE])
