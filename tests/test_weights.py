"""Tests of `effnetv2_tf.models.weights`: keras.applications files and checkpoints.

keras.applications models get random (non-trivial) weights and are saved in
both h5 layouts; our model must then give the same outputs. Reference TF1
checkpoints are written with `tf.raw_ops.SaveV2` under the reference names.
"""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import effnetv2_tf
from effnetv2_tf.models import weights as weights_lib
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


@pytest.fixture(scope="module")
def v2_files(tmp_path_factory):
  keras.utils.set_random_seed(1)
  model = keras.applications.EfficientNetV2B0(
      weights=None, input_shape=(SIZE, SIZE, 3), include_preprocessing=True,
      classifier_activation=None)
  return _keras_files(tmp_path_factory, model, "v2b0")


@pytest.fixture(scope="module")
def v1_files(tmp_path_factory):
  keras.utils.set_random_seed(2)
  model = keras.applications.EfficientNetB0(
      weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
  # Keras V1 always normalises with an adapted Normalization layer; give it
  # the ImageNet statistics our include_preprocessing applies.
  norm = next(l for l in model.layers if l.name.startswith("normalization"))
  norm.set_weights([IMAGENET_MEAN, IMAGENET_STD**2, norm.get_weights()[2]])
  norm.finalize_state()
  return _keras_files(tmp_path_factory, model, "b0")


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
  assert path in str(error.value) and "EfficientNetB3" not in str(error.value)


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


def test_b3_error_explains_keras_rounding(v1_files):
  with pytest.raises(ValueError, match="rounds channel counts differently"):
    _ours("efficientnet-b3", v1_files[3]["keras3"])


def test_not_a_weights_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither an h5"):
    tiny_model(weights=str(tmp_path / "missing.h5"))
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


def _write_checkpoint(model, prefix, root="efficientnetv2-b0", skip=()):
  """Reference-named checkpoint; every other variable gets a distinct EMA.

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
      name = f"{root}/{scopes[layer.name]}/{leaf}"
      if name in skip:
        continue
      value = w.numpy()
      names.append(name)
      tensors.append(value)
      if len(expected) % 2:
        value = value + 0.01 * np.abs(value).mean() + 0.01
        names.append(name + "/ExponentialMovingAverage")
        tensors.append(value)
        names.append(name + "/RMSProp")  # optimizer slots are ignored
        tensors.append(np.zeros_like(value))
      expected.append(value)
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
