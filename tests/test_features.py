"""Tests of `create_model(features_only=True)`: the multi-scale feature maps.

Expectations are written out by hand from the block strings (paper Table 4
and the EfficientNet paper; registry.py holds the same strings) and the
reference's endpoint rule (effnetv2_model.py L616-631 at 6a54c87: a block is
`reduction_k` when it is the last block or the next block has stride > 1).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import effnetv2_tf
from conftest import tiny_model
from effnetv2_tf import export
from effnetv2_tf.data import preprocessing
from effnetv2_tf.models import features
from test_pretrained import _archive
from test_weights import _perturb
from test_weights import _write_checkpoint
import test_pretrained
import test_weights

# Fixtures shared with test_weights and test_pretrained (conftest's v2_files).
v1_files = test_weights.v1_files
server = test_pretrained.server

STRIDES = [2, 4, 8, 16, 32]

# Channels of reduction_1..5: the output width of the last stage before each
# stride-2 stage, and of the last stage. Stage outputs (o...) and strides:
#   V2-S  o24 o48(s2) o64(s2) o128(s2) o160(s1) o256(s2)  -> 24 48 64 160 256
#   V2-M  o24 o48 o80 o160 o176(s1) o304(s2) o512(s1)     -> 24 48 80 176 512
#   V2-L  o32 o64 o96 o192 o224(s1) o384(s2) o640(s1)     -> 32 64 96 224 640
#   V2-XL o32 o64 o96 o192 o256(s1) o512(s2) o640(s1)     -> 32 64 96 256 640
#   V2-B* o16 o32 o48 o96 o112(s1) o192(s2), width-rounded
#   V1    o16 o24 o40 o80 o112(s1) o192(s2) o320(s1), width-rounded
# Width rounding, int(f * w + 4) // 8 * 8 (at least 8), e.g. B2 (w=1.1):
# 48 -> 56, 112 -> 120, 192 -> 208; B3 (w=1.2): 32 -> 40, 112 -> 136,
# 192 -> 232. V1 adds 8 where that is below 0.9 * f * w: B3's 16 * 1.2 =
# 19.2 rounds to 16 < 17.3, so 24. The V1 rows are also timm's
# efficientnet_b0..b7 feature_info channels.
EXPECTED_CHANNELS = {
    "efficientnetv2-s": [24, 48, 64, 160, 256],
    "efficientnetv2-m": [24, 48, 80, 176, 512],
    "efficientnetv2-l": [32, 64, 96, 224, 640],
    "efficientnetv2-xl": [32, 64, 96, 256, 640],
    "efficientnetv2-b0": [16, 32, 48, 112, 192],
    "efficientnetv2-b1": [16, 32, 48, 112, 192],
    "efficientnetv2-b2": [16, 32, 56, 120, 208],
    "efficientnetv2-b3": [16, 40, 56, 136, 232],
    "efficientnet-b0": [16, 24, 40, 112, 320],
    "efficientnet-b1": [16, 24, 40, 112, 320],
    "efficientnet-b2": [16, 24, 48, 120, 352],
    "efficientnet-b3": [24, 32, 48, 136, 384],
    "efficientnet-b4": [24, 32, 56, 160, 448],
    "efficientnet-b5": [24, 40, 64, 176, 512],
    "efficientnet-b6": [32, 40, 72, 200, 576],
    "efficientnet-b7": [32, 48, 80, 224, 640],
}
# Full depth (the keras.applications tests), the last block of stages 1, 2, 3, 5, 6 (B0 repeats 1 2 2 3 5
# 8): block1a has no residual (32 -> 16 channels), so it ends in its
# Fused-MBConv's projection; the others end in their residual add. The
# names are keras.applications' too.
B0_LAYERS = ["block1a_project_activation", "block2b_add", "block3b_add",
             "block5e_add", "block6h_add"]
# V1-B0 repeats 1 2 2 3 3 4 1: block1a (32 -> 16) and block7a (192 -> 320)
# end in their MBConv's projection batch norm.
V1_B0_LAYERS = ["block1a_project_bn", "block2b_add", "block3b_add",
                "block5c_add", "block7a_project_bn"]


def test_every_registered_variant_is_expected():
  assert sorted(EXPECTED_CHANNELS) == sorted(effnetv2_tf.list_models())


@pytest.mark.parametrize("name", sorted(EXPECTED_CHANNELS))
def test_channels_and_strides_of_every_variant(name):
  # One block per stage: the channels depend on the width alone, and each
  # stage still ends where it ends at full depth.
  model = effnetv2_tf.create_model(name, features_only=True,
                                   depth_coefficient=0.01,
                                   input_shape=(64, 64, 3))
  info = model.feature_info
  assert info.channels() == EXPECTED_CHANNELS[name]
  assert info.reduction() == STRIDES
  assert info.indices() == [0, 1, 2, 3, 4]
  assert info.levels() == ["P1", "P2", "P3", "P4", "P5"]
  shapes = [tuple(t.shape[1:]) for t in model.outputs]
  assert shapes == [(64 // s, 64 // s, c)
                    for s, c in zip(STRIDES, EXPECTED_CHANNELS[name])]


def _perturbed_classifier(name="efficientnetv2-b0", **kwargs):
  model = tiny_model(name, **kwargs)
  _perturb(model, np.random.default_rng(5))
  return model


def _activations(model, layer_names, x):
  """The outputs of `model`'s layers `layer_names` on `x` (inference)."""
  probe = keras.Model(model.input,
                      [model.get_layer(n).output for n in layer_names])
  return [y.numpy() for y in probe(x, training=False)]


def _assert_maps(maps, expected):
  assert len(maps) == len(expected)
  for got, want in zip(maps, expected):
    assert np.abs(want).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_maps_equal_the_classifiers_activations(tmp_path):
  clf = _perturbed_classifier("efficientnetv2-s")
  path = str(tmp_path / "clf.weights.h5")
  clf.save_weights(path)  # with the head: the features model skips it
  model = tiny_model("efficientnetv2-s", num_classes=None,
                     features_only=True, weights=path)
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype("float32")
  expected = _activations(clf, model.feature_info.layer_names(), x)
  _assert_maps(model(x, training=False), expected)
  # The classifier's layers up to the last map: no top_conv, no head.
  assert {w.path for w in model.weights} < {w.path for w in clf.weights}
  names = {layer.name for layer in model.layers}
  assert not names & {"top_conv", "top_bn", "avg_pool", "predictions"}


@pytest.mark.parametrize("out_indices", [(0,), (1, 3), (2, 3, 4), [4]])
def test_out_indices_select_maps_and_cut_the_graph(out_indices):
  model = tiny_model(num_classes=None, features_only=True,
                     out_indices=out_indices)
  assert model.feature_info.indices() == list(out_indices)
  assert model.feature_info.reduction() == [STRIDES[i] for i in out_indices]
  last_stage = max(int(n[5]) for n in model.feature_info.layer_names())
  stages = {int(l.name[5]) for l in model.layers if l.name.startswith("block")}
  assert max(stages) == last_stage  # nothing past the last chosen map


@pytest.mark.parametrize("size, expected", [
    (100, [50, 25, 13, 7, 4]),  # ceil(100 / s)
    (64, [32, 16, 8, 4, 2]),
    (33, [17, 9, 5, 3, 2]),
])
def test_any_input_size_rounds_up_per_level(size, expected):
  model = tiny_model(num_classes=None, features_only=True)
  maps = model(np.zeros((1, size, size + 8, 3), "float32"))
  assert [m.shape[1] for m in maps] == expected
  wide = [-(-(size + 8) // s) for s in STRIDES]  # ceil by hand
  assert [m.shape[2] for m in maps] == wide


def _one_line(err):
  message = str(err.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("out_indices", [
    (0, 0), (2, 1), (5,), (-1,), (), (0.0,), (True,), 3, "01",
])
def test_bad_out_indices_are_one_line(out_indices):
  with pytest.raises(features.FeaturesError) as err:
    # Before any work: the missing weights file is never looked at.
    effnetv2_tf.create_model("efficientnetv2-b0", features_only=True,
                             out_indices=out_indices,
                             weights="/nonexistent/w.h5")
  assert _one_line(err) == (
      "out_indices must be distinct integers from 0 to 4 in increasing "
      f"order (feature maps at strides 2, 4, 8, 16, 32), got "
      f"{out_indices!r}.")
  assert isinstance(err.value, (effnetv2_tf.UserError, ValueError))


def test_classifier_options_with_features_only_are_one_line():
  with pytest.raises(features.FeaturesError) as err:
    effnetv2_tf.create_model("efficientnetv2-b0", features_only=True,
                             num_classes=10, classifier_activation="softmax")
  assert "num_classes and classifier_activation" in _one_line(err)
  with pytest.raises(features.FeaturesError, match="features_only=True"):
    effnetv2_tf.create_model("efficientnetv2-b0", out_indices=(1, 2))


def test_a_blocks_override_has_its_own_reduction_points():
  # Three stages, strides 1, 2, 2 after the stem: maps at 2, 4 and 8.
  blocks = ("r1_k3_s1_e1_i32_o16_c1", "r2_k3_s2_e4_i16_o32_c1",
            "r1_k3_s2_e4_i32_o48_se0.25")
  model = effnetv2_tf.create_model("efficientnetv2-b0", features_only=True,
                                   blocks=blocks)
  assert model.feature_info.reduction() == [2, 4, 8]
  assert model.feature_info.channels() == [16, 32, 48]
  assert model.feature_info.layer_names() == [
      "block1a_project_activation", "block2b_add", "block3a_project_bn"]
  with pytest.raises(features.FeaturesError, match=r"from 0 to 2 .* 2, 4, 8\)"):
    effnetv2_tf.create_model("efficientnetv2-b0", features_only=True,
                             blocks=blocks, out_indices=(3,))


# ------------------------------------------------------------ weights


# Both layouts load as into the classifier (test_weights); one each here.
@pytest.mark.parametrize("variant, name, layers, layout", [
    ("v2", "efficientnetv2-b0", B0_LAYERS, "keras3"),
    ("v1", "efficientnet-b0", V1_B0_LAYERS, "legacy")])
def test_keras_applications_files_give_keras_activations(
    variant, name, layers, layout, request):
  keras_model, x, _, paths = request.getfixturevalue(f"{variant}_files")
  model = effnetv2_tf.create_model(
      name, features_only=True, weights=paths[layout],
      include_preprocessing=True, input_shape=x.shape[1:])
  assert model.feature_info.layer_names() == layers
  _assert_maps(model(x, training=False), _activations(keras_model, layers, x))


def test_reference_checkpoint_loads(tmp_path):
  source = _perturbed_classifier()
  prefix = str(tmp_path / "model.ckpt-1000")
  expected = _write_checkpoint(source, prefix)
  for w, value in zip(source.weights, expected):
    w.assign(value)  # the EMA values the loader picks
  model = tiny_model(num_classes=None, features_only=True, weights=prefix)
  x = np.random.default_rng(2).normal(size=(2, 48, 48, 3)).astype("float32")
  _assert_maps(model(x, training=False), _activations(
      source, model.feature_info.layer_names(), x))


def test_published_tag_loads(server, tmp_path):  # pylint: disable=redefined-outer-name
  served, _ = server
  source = _perturbed_classifier(num_classes=1000)
  expected = _archive(served, tmp_path, source=source)
  for w, value in zip(source.weights, expected):
    w.assign(value)
  model = tiny_model(num_classes=None, features_only=True,
                     weights="imagenet21k-ft1k")
  x = np.random.default_rng(3).normal(size=(1, 32, 32, 3)).astype("float32")
  _assert_maps(model(x, training=False), _activations(
      source, model.feature_info.layer_names(), x))


# ------------------------------------------------- saving and export


def test_keras_file_round_trip_keeps_maps_and_feature_info(tmp_path):
  model = tiny_model(num_classes=None, features_only=True,
                     out_indices=(1, 2, 4))
  _perturb(model, np.random.default_rng(6))
  path = str(tmp_path / "backbone.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert isinstance(loaded, features.FeatureModel)
  assert loaded.feature_info == model.feature_info
  assert loaded.feature_info.reduction() == [4, 8, 32]
  x = np.random.default_rng(7).normal(size=(2, 40, 40, 3)).astype("float32")
  for a, b in zip(loaded(x), model(x)):
    np.testing.assert_array_equal(a, b)


def test_saved_model_serves_the_classifiers_images(tmp_path):
  model = tiny_model(num_classes=None, features_only=True)
  _perturb(model, np.random.default_rng(8))
  prep = preprocessing.get_row(
      effnetv2_tf.get_model_spec("efficientnetv2-b0").preprocessing)
  path = export.export_features(model, str(tmp_path / "features"), 64, prep)
  served = tf.saved_model.load(path)
  assert sorted(served.signatures) == ["preprocessed", "serving_default"]
  raw = np.random.default_rng(9).uniform(0, 255, (2, 80, 90, 3))
  raw = tf.constant(raw.astype("float32"))
  got = served.signatures["serving_default"](images=raw)
  assert sorted(got) == ["P1", "P2", "P3", "P4", "P5"]
  # The classifier's serving_default preprocessing: crop and resize to 64.
  images = export.ServingModule(None, 64, prep).preprocess(raw)
  expected = [y.numpy() for y in model(images, training=False)]
  assert [tuple(got[k].shape) for k in sorted(got)] == [
      (2, 64 // s, 64 // s, c)
      for s, c in zip(STRIDES, model.feature_info.channels())]
  _assert_maps([got[k] for k in sorted(got)], expected)
  scaled = served.signatures["preprocessed"](images=images)
  _assert_maps([scaled[k] for k in sorted(scaled)], expected)
