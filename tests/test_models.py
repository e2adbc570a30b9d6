"""Model zoo tests, parametrised over the registry (timm / Model Garden style).

Parameter counts are with 1000 classes and BN moving statistics included:
V2 the reference implementation's (google/automl efficientnetv2), V1
keras.applications' (the original EfficientNet's channel rounding).
"""

import numpy as np
import pytest

import effnetv2_tf
from effnetv2_tf.models import block_strings
from effnetv2_tf.models import model as model_lib
from effnetv2_tf.models import names
from effnetv2_tf.models.layers import StochasticDepth
import keras
from conftest import tiny_model

REFERENCE_PARAMS = {
    "efficientnetv2-s": 21_612_360,
    "efficientnetv2-m": 54_431_388,
    "efficientnetv2-l": 119_027_848,
    "efficientnetv2-xl": 208_896_832,
    "efficientnetv2-b0": 7_200_312,
    "efficientnetv2-b1": 8_212_124,
    "efficientnetv2-b2": 10_178_374,
    "efficientnetv2-b3": 14_467_622,
    # keras.applications.EfficientNetB<i>(weights=None).count_params()
    # (keras 3.15.1) minus the 7 weights of its Normalization layer (mean,
    # variance: 3 each; count), which ours does not have: 5,330,571,
    # 7,856,239, 9,177,569, 12,320,535, 19,466,823, 30,562,527, 43,265,143,
    # 66,658,687.
    "efficientnet-b0": 5_330_564,
    "efficientnet-b1": 7_856_232,
    "efficientnet-b2": 9_177_562,
    "efficientnet-b3": 12_320_528,
    "efficientnet-b4": 19_466_816,
    "efficientnet-b5": 30_562_520,
    "efficientnet-b6": 43_265_136,
    "efficientnet-b7": 66_658_680,
}
REFERENCE_TRAINABLE = {"efficientnetv2-s": 21_458_488,
                       "efficientnetv2-b0": 7_139_704}
# Building these takes 5-15 s each on 2 CPU cores.
LARGE = {n for n, p in REFERENCE_PARAMS.items() if p > 25_000_000}


def _by_size(names):
  return [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n
          for n in names]


def test_every_registered_model_has_a_pinned_count():
  assert sorted(effnetv2_tf.list_models()) == sorted(REFERENCE_PARAMS)


@pytest.mark.parametrize("name", _by_size(effnetv2_tf.list_models()))
def test_parameter_count_and_forward(name):
  model = effnetv2_tf.create_model(name)
  assert model.count_params() == REFERENCE_PARAMS[name]
  if name in REFERENCE_TRAINABLE:
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == REFERENCE_TRAINABLE[name]
  sizes = (64,) if name in LARGE else (32, 57)  # odd size: 'same' padding
  for size in sizes:
    x = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3))
    y = model(x.astype("float32"), training=False)
    assert tuple(y.shape) == (2, 1000)
    assert np.all(np.isfinite(y))


def test_round_filters_matches_reference_rule():
  # effnetv2_model.py L84-95: max(8, int(f * w + 4) // 8 * 8), no 10% rule.
  assert model_lib.round_filters(32, 1.0) == 32
  assert model_lib.round_filters(1280, 1.2) == 1536
  assert model_lib.round_filters(16, 1.2) == 16  # int(19.2 + 4) // 8 * 8
  assert model_lib.round_filters(40, 1.1) == 48  # int(44 + 4) // 8 * 8
  assert model_lib.round_filters(24, 0.25) == 8  # min depth
  assert model_lib.round_repeats(3, 1.4) == 5  # ceil(4.2)
  assert model_lib.round_repeats(1, 3.1) == 4


def test_round_filters_with_the_original_efficientnet_rule():
  # efficientdet/backbone/efficientnet_model.py L139-141: a result below
  # 0.9 * f * w gets one more divisor.
  def v1(filters, width):
    return model_lib.round_filters(filters, width, round_down_limit=0.9)
  assert v1(16, 1.2) == 24  # int(19.2 + 4) // 8 * 8 = 16 < 17.28
  assert v1(24, 0.8) == 24  # the same 19.2
  assert v1(32, 1.2) == 40  # 40 >= 34.56
  assert v1(16, 1.4) == 24  # 24 >= 20.16
  assert v1(8, 0.25) == 8  # 2 rounds to 0; the minimum 8 >= 1.8


def test_v1_rows_round_as_the_original_efficientnet():
  # B3 (width 1.2), efficientnet_model.py L128-142: stem 32 -> 40, the first
  # block's output 16 -> 16 < 17.28 -> 24. V2-B3 has the same width and
  # effnetv2_model.py's rule: 16 (test_scaled_blocks_of_b3_v2).
  spec = effnetv2_tf.get_model_spec("efficientnet-b3")
  blocks = model_lib.scaled_block_args(
      spec, model_lib.ModelOptions(dropout_rate=0.3))
  first = blocks[0][2]
  assert (first.input_filters, first.output_filters) == (40, 24)
  assert blocks[1][2].input_filters == 24


def test_scaled_blocks_of_b3_v2():
  spec = effnetv2_tf.get_model_spec("efficientnetv2-b3")
  blocks = model_lib.scaled_block_args(
      spec, model_lib.ModelOptions(dropout_rate=0.3))
  # ceil(1.4 * r) per stage for r = 1, 2, 2, 3, 5, 8.
  assert len(blocks) == 2 + 3 + 3 + 5 + 7 + 12
  first, second = blocks[0][2], blocks[1][2]
  assert (first.input_filters, first.output_filters) == (40, 16)
  assert (second.input_filters, second.strides) == (16, 1)
  last = blocks[-1][2]
  assert last.output_filters == 232  # int(192 * 1.2 + 4) // 8 * 8


def test_stochastic_depth_ramp_in_built_model():
  model = effnetv2_tf.create_model("efficientnetv2-b0", survival_prob=0.8)
  num_blocks = 1 + 2 + 2 + 3 + 5 + 8
  # block2b is the third block (index 2); block6h the last (index 20).
  assert model.get_layer("block2b_drop").survival_prob == pytest.approx(
      1 - 0.2 * 2 / num_blocks)
  assert model.get_layer("block6h_drop").survival_prob == pytest.approx(
      1 - 0.2 * 20 / num_blocks)
  # Blocks without a residual (stride 2 or width change) have no drop layer.
  names = {layer.name for layer in model.layers}
  assert "block2a_drop" not in names and "block1a_drop" not in names
  assert model_lib.survival_probabilities(4, 0.8) == pytest.approx(
      [1.0, 0.95, 0.9, 0.85])


def test_stochastic_depth_layer_is_per_sample_and_unbiased():
  layer = StochasticDepth(0.75, seed=3)
  x = np.ones((4000, 2, 2, 3), "float32")
  y = np.asarray(layer(x, training=True))
  per_sample = y.reshape(4000, -1)
  # Each example is either dropped whole or kept whole, scaled by 1/p.
  values = np.unique(per_sample)
  assert np.all(np.isclose(values, 0.0) | np.isclose(values, 1 / 0.75))
  assert np.all(per_sample.min(1) == per_sample.max(1))
  assert abs(y.mean() - 1.0) < 0.05
  np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
  with pytest.raises(ValueError, match="survival_prob"):
    StochasticDepth(0.0)


@pytest.mark.parametrize("text", sorted({
    s for n in effnetv2_tf.list_models()
    for s in effnetv2_tf.get_model_spec(n).blocks}))
def test_block_string_round_trip(text):
  assert block_strings.encode(block_strings.decode(text)) == text


def test_block_string_fields():
  args = block_strings.decode("r4_k3_s2_e4_i24_o48_c1")
  assert (args.num_repeat, args.kernel_size, args.strides, args.expand_ratio,
          args.input_filters, args.output_filters) == (4, 3, 2, 4, 24, 48)
  assert args.conv_type == block_strings.FUSED_MBCONV and not args.has_se
  se = block_strings.decode("r6_k3_s2_e4_i64_o128_se0.25")
  assert se.se_ratio == 0.25 and se.conv_type == block_strings.MBCONV


@pytest.mark.parametrize("text,message", [
    ("r2_k3_s1_e1_i24", "missing o"),
    ("r2_k3_s1_e1_i24_o24_x5", "unknown part 'x5'"),
    ("r2_k3_s1_e1_i24_o24_se2", "se ratio"),
    ("r2_k3_s1_e1_i24_o24_c3", "conv type"),
    ("rX_k3_s1_e1_i24_o24", "'rX'"),
    ("r2_k3_k5_s1_e1_i24_o24", "appears twice"),
    ("", "non-empty"),
])
def test_block_string_errors(text, message):
  with pytest.raises(ValueError, match=message):
    block_strings.decode(text)


@pytest.mark.parametrize("name", ["efficientnetv2-s", "efficientnetv2-b0",
                                  "efficientnet-b0"])
def test_gradients_reach_every_trainable_weight(name):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model = tiny_model(name, survival_prob=1.0, dropout_rate=0.0)
  x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype("float32")
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(x, training=True) ** 2)
  grads = tape.gradient(loss, model.trainable_weights)
  for weight, grad in zip(model.trainable_weights, grads):
    assert grad is not None, weight.path
    assert float(tf.reduce_sum(tf.abs(grad))) > 0, weight.path


def test_fused_and_mbconv_layers_are_where_the_block_strings_say():
  model = effnetv2_tf.create_model("efficientnetv2-s")
  names = {layer.name for layer in model.layers}
  # Stage 1: fused, expand 1 -> a single kxk project conv with activation.
  assert "block1a_project_activation" in names
  assert "block1a_expand_conv" not in names
  # Stage 2: fused with expansion: 3x3 expand conv, 1x1 project, no depthwise.
  assert model.get_layer("block2a_expand_conv").kernel.shape == (3, 3, 24, 96)
  assert model.get_layer("block2a_project_conv").kernel.shape == (1, 1, 96, 48)
  assert "block2a_dwconv" not in names and "block2a_se_reduce" not in names
  # Stage 4: MBConv with SE reduced from the block input width (64 * 0.25).
  assert model.get_layer("block4a_se_reduce").kernel.shape == (1, 1, 256, 16)
  assert model.get_layer("block4a_dwconv").strides == (2, 2)
  assert model.get_layer("top_conv").kernel.shape == (1, 1, 256, 1280)


def test_xl_block_names_continue_past_z():
  assert [names.block_suffix(i) for i in (0, 25, 26, 31)] == [
      "a", "z", "aa", "af"]


def test_heads_and_activation():
  x = np.random.default_rng(2).normal(size=(3, 32, 32, 3)).astype("float32")
  probs = tiny_model(classifier_activation="softmax")(x)
  np.testing.assert_allclose(np.sum(probs, axis=-1), 1.0, rtol=1e-5)
  features = tiny_model(include_top=False)
  assert tuple(features(x).shape) == (3, 1280 // 4)  # round_filters(1280, .25)
  assert "predictions" not in {layer.name for layer in features.layers}


@pytest.mark.parametrize("name,scale,offset", [
    ("efficientnetv2-s", [1 / 128.0] * 3, [-1.0] * 3),
    ("efficientnetv2-b0", [1 / (255 * s) for s in (0.229, 0.224, 0.225)],
     [-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]),
])
def test_include_preprocessing_scales_raw_pixels(name, scale, offset):
  raw = np.random.default_rng(3).uniform(0, 255, (2, 32, 32, 3))
  raw = raw.astype("float32")
  with_pre = tiny_model(name, include_preprocessing=True)
  plain = tiny_model(name)
  plain.set_weights(with_pre.get_weights())
  expected = plain(raw * np.array(scale, "float32") + np.array(offset,
                                                              "float32"))
  np.testing.assert_allclose(with_pre(raw), expected, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
  model = tiny_model("efficientnetv2-s")
  path = str(tmp_path / "model.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  x = np.random.default_rng(4).normal(size=(2, 40, 40, 3)).astype("float32")
  np.testing.assert_array_equal(model(x), loaded(x))
  assert loaded.get_layer("block2b_drop").survival_prob == pytest.approx(
      model.get_layer("block2b_drop").survival_prob)


def test_bad_names_and_overrides_are_clear_errors():
  with pytest.raises(ValueError, match="Unknown model 'efficientnetv3-s'.*"
                     "efficientnetv2-s"):
    effnetv2_tf.create_model("efficientnetv3-s")
  with pytest.raises(TypeError, match="drop_rate"):
    effnetv2_tf.create_model("efficientnetv2-b0", drop_rate=0.1)
  with pytest.raises(ValueError, match="survival_prob"):
    effnetv2_tf.create_model("efficientnetv2-b0", survival_prob=1.5)
  assert effnetv2_tf.get_model_spec("EfficientNetV2_S").name == (
      "efficientnetv2-s")


def test_overrides_reach_the_layers():
  model = tiny_model(dropout_rate=0.45, bn_momentum=0.99, bn_epsilon=1e-5,
                     activation="relu")
  assert model.get_layer("top_dropout").rate == 0.45
  assert model.get_layer("stem_bn").momentum == 0.99
  assert model.get_layer("stem_bn").epsilon == 1e-5
  assert model.get_layer("stem_activation").activation.__name__ == "relu"


def test_registry_defaults():
  s = effnetv2_tf.get_model_spec("efficientnetv2-s")
  assert (s.train_size, s.eval_size, s.dropout_rate, s.randaug_magnitude,
          s.mixup_alpha) == (300, 384, 0.2, 10, 0.0)
  xl = effnetv2_tf.get_model_spec("efficientnetv2-xl")
  assert (xl.train_size, xl.eval_size, xl.mixup_alpha) == (384, 512, 0.5)
  b7 = effnetv2_tf.get_model_spec("efficientnet-b7")
  assert (b7.train_size, b7.eval_size, b7.augname) == (480, 600, "autoaug")
