"""AdamW's decoupled weight decay and layer-wise learning-rate decay
(optim.py; ours, the reference has neither).

The tiny B0 (tests/conftest.py, depth 0.34) has stage repeats ceil(0.34 *
(1, 2, 2, 3, 5, 8)) = 1, 1, 1, 2, 2, 3: blocks 1a 2a 3a 4a 4b 5a 5b 6a 6b
6c, N = 10. Layer ids: stem 0, block4b 5, block6c 10, head 11; the factor
of layer i is decay ** (11 - i).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf.training import optim
from tests.conftest import tiny_model

DECAY, LR = 0.8, 0.1
EXPONENTS = {"stem_conv/kernel": 11, "block4b_dwconv/kernel": 6,
             "block6c_project_conv/kernel": 1, "top_conv/kernel": 0,
             "predictions/kernel": 0}
# The first update of w under gradient 1 at learning rate r, by hand:
# RMSProp (rho 0.9, epsilon 1e-3 inside the root, mean square from 0):
# ms = 0.1, w -= r / sqrt(0.101) (with momentum 0.9: mom = that, w -= mom);
# SGD with or without momentum: w -= r; Adam: m = 0.1, v = 0.001, w -= r
# sqrt(0.001) / 0.1 * m / (sqrt(v) + eps) = r / (1 + eps / sqrt(0.001)).
FIRST_STEP = {
    "rmsprop": 1 / np.sqrt(0.101), "momentum": 1.0, "sgd": 1.0,
    "adam": 1 / (1 + 1e-7 / np.sqrt(0.001)),
    "adamw": 1 / (1 + 1e-8 / np.sqrt(0.001))}


def _train(overrides):
  return config_lib.build_config("efficientnetv2-b0", "imagenet",
                                 overrides).train


def _step(optimizer, model, grad_fn):
  """Weights by path before and after one update with grad_fn(v)."""
  variables = model.trainable_variables
  before = {v.path: v.numpy() for v in variables}
  optimizer.apply_gradients([(grad_fn(v), v) for v in variables])
  return before, {v.path: v.numpy() for v in variables}


@pytest.mark.parametrize("name,fused", [
    ("rmsprop", True), ("rmsprop", False), ("momentum", True),
    ("sgd", False), ("adam", True), ("adamw", True)])
def test_layer_decay_scales_each_layers_update(name, fused):
  train = _train(f"train.optimizer={name},train.fused_optimizer={fused},"
                 f"train.layer_decay={DECAY},train.weight_decay=0")
  model = tiny_model()
  optimizer = optim.build_optimizer(train, LR, model=model)
  assert type(optimizer).__name__.startswith("LayerRates")
  before, after = _step(optimizer, model, tf.ones_like)
  update = {p: np.mean(before[p] - after[p]) for p in EXPONENTS}
  for path, k in EXPONENTS.items():
    assert update[path] == pytest.approx(
        LR * DECAY ** k * FIRST_STEP[name], rel=1e-4), path
    assert update[path] / update["predictions/kernel"] == pytest.approx(
        DECAY ** k, rel=1e-4), path
  # BN parameters and biases of a layer take its rate too.
  assert np.mean(before["stem_bn/beta"] - after["stem_bn/beta"]) == (
      pytest.approx(update["stem_conv/kernel"], rel=1e-4))


def test_layer_decay_off_keeps_the_plain_optimizer():
  for overrides in ("", "train.layer_decay=1.0"):  # the default, and 1
    train = _train(overrides)
    assert type(optim.build_optimizer(train, LR)) is (
        optim.fused_optim.FusedRMSprop)


def test_layer_rates_do_not_depend_on_trainability():
  model = tiny_model()
  rates = optim.layer_rates(model, 0.5)
  model.get_layer("stem_conv").trainable = False
  model.get_layer("block4b_dwconv").trainable = False
  assert optim.layer_rates(model, 0.5) == rates
  assert rates["stem_conv"] == 0.5 ** 11
  assert rates["block4b_dwconv"] == 0.5 ** 6
  assert rates["top_bn"] == rates["predictions"] == 1.0


@pytest.mark.parametrize("layer_decay", [1.0, 0.5])
def test_adamw_decays_kernels_only_decoupled(layer_decay):
  # Zero gradient: Adam's step is 0 / (0 + eps) = 0, so only the decoupled
  # decay moves a weight: kernel w -> w - lr * f * wd * w (f: the layer's
  # factor, 0.5 ** 11 for the stem, 1 for the head), by hand 1 - 0.1 * 0.1
  # * f; BN gamma/beta and biases stay exactly.
  wd = 0.1
  train = _train(f"train.optimizer=adamw,train.weight_decay={wd},"
                 f"train.layer_decay={layer_decay}")
  model = tiny_model()
  optimizer = optim.build_optimizer(train, LR, model=model)
  before, after = _step(optimizer, model, tf.zeros_like)
  stem = layer_decay ** 11
  for path, factor in [("stem_conv/kernel", stem),
                       ("predictions/kernel", 1.0), ("top_conv/kernel", 1.0),
                       ("block4b_dwconv/kernel", layer_decay ** 6)]:
    np.testing.assert_allclose(after[path],
                               before[path] * (1 - LR * factor * wd),
                               rtol=1e-6, err_msg=path)
  kept = [p for p in before if p.endswith(("gamma", "beta", "bias"))]
  assert {"stem_bn/gamma", "top_bn/beta", "predictions/bias"} <= set(kept)
  for path in kept:
    np.testing.assert_array_equal(after[path], before[path], err_msg=path)


def test_adamw_adds_no_coupled_l2_term():
  assert optim.coupled_weight_decay(
      _train("train.optimizer=adamw,train.weight_decay=0.05")) == 0.0
  for name in ("rmsprop", "momentum", "sgd", "adam"):
    assert optim.coupled_weight_decay(
        _train(f"train.optimizer={name},train.weight_decay=3e-5")) == 3e-5


def test_adamw_epsilon_and_decay_value():
  optimizer = optim.build_optimizer(
      _train("train.optimizer=adamw,train.weight_decay=0.05,"
             "train.epsilon=0.5"), LR)
  assert isinstance(optimizer, keras.optimizers.AdamW)
  assert optimizer.weight_decay == 0.05
  assert optimizer.epsilon == 1e-8  # PyTorch's and timm's, not train.epsilon


@pytest.mark.parametrize("value", ["0", "1.5", "-0.5"])
def test_bad_layer_decay_is_one_config_line(value):
  with pytest.raises(config_lib.ConfigError,
                     match=r"Bad value for train.layer_decay: .*\(0, 1\]"
                     ) as info:
    config_lib.build_config("efficientnetv2-b0", "digits",
                            f"train.layer_decay={value}")
  assert "\n" not in str(info.value)


def test_a_layer_outside_stem_blocks_head_is_one_line():
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, name="stem_conv")(inputs)
  x = keras.layers.Conv2D(4, 1, name="block1a_project_conv")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(2, name="classifier")(x)
  model = keras.Model(inputs, outputs)
  train = _train("train.layer_decay=0.7")
  with pytest.raises(optim.LayerDecayError,
                     match="train.layer_decay: variable 'classifier/kernel' "
                           "is in no layer of") as info:
    optim.build_optimizer(train, LR, model=model)
  assert isinstance(info.value, config_lib.ConfigError)
  assert "\n" not in str(info.value)


def test_layer_rates_optimizer_serializes():
  model = tiny_model()
  optimizer = optim.build_optimizer(
      _train("train.optimizer=adamw,train.layer_decay=0.7"), LR, model=model)
  restored = keras.optimizers.deserialize(
      keras.optimizers.serialize(optimizer))
  assert type(restored) is type(optimizer)
  assert restored.get_config() == optimizer.get_config()


@pytest.mark.parametrize("layer_decay", [1.0, 0.5])
def test_mixed_float16_wraps_adamw(layer_decay):
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    model = tiny_model()
    optimizer = optim.build_optimizer(
        _train(f"train.optimizer=adamw,train.layer_decay={layer_decay},"
               "train.weight_decay=0.1"), LR, model=model)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(optimizer.inner_optimizer, keras.optimizers.AdamW)
    optimizer.build(model.trainable_variables)
    # Keras' first scale 2^15 overflows this model's float16 gradients
    # (tests/test_xla.py), and so do batches of 2 at 32 px (BN over 2
    # values at 1 x 1): 4 images of 64 px at 2^7 take the step.
    optimizer.dynamic_scale.assign(2.0 ** 7)
    images = tf.random.stateless_uniform([4, 64, 64, 3], [1, 2])
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      loss = tf.reduce_mean(keras.losses.categorical_crossentropy(
          tf.one_hot([1, 2, 3, 4], 10), logits, from_logits=True))
      scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, model.trainable_variables)
    before = {v.path: v.numpy() for v in model.trainable_variables}
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert int(optimizer.inner_optimizer.iterations.numpy()) == 1
  for v in model.trainable_variables:
    assert np.all(np.isfinite(v.numpy())), v.path
  # Adam's first step moves each weight by about lr * factor (|g| >> eps).
  head = np.abs(before["predictions/kernel"]
                - model.get_layer("predictions").kernel.numpy()).max()
  stem = np.abs(before["stem_conv/kernel"]
                - model.get_layer("stem_conv").kernel.numpy()).max()
  assert head == pytest.approx(LR, rel=0.05)
  assert stem == pytest.approx(LR * layer_decay ** 11, rel=0.05)


def test_checkpoints_are_interchangeable_with_the_plain_optimizer(tmp_path):
  # A run may switch train.layer_decay on at a restore (finetuning from a
  # run's checkpoint): same slot variables, same checkpoint structure.
  model = tiny_model()
  plain = optim.build_optimizer(_train("train.layer_decay=1.0"), LR)
  _step(plain, model, tf.ones_like)
  path = tf.train.Checkpoint(optimizer=plain).write(str(tmp_path / "ckpt"))
  layered = optim.build_optimizer(_train("train.layer_decay=0.5"), LR,
                                  model=model)
  layered.build(model.trainable_variables)
  tf.train.Checkpoint(optimizer=layered).read(path).assert_consumed()
  assert int(layered.iterations.numpy()) == 1
  for a, b in zip(plain.variables, layered.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
