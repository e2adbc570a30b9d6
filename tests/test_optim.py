"""Tests of the learning-rate schedule, weight decay and EMA (paper 5.1)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf.models import ema as ema_lib
from effnetv2_tf.training import optim
from effnetv2_tf.training import schedule as schedule_lib
from tests.conftest import tiny_model


def _schedule(schedule="exponential", steps_per_epoch=100, epochs=350,
              batch=4096):
  config = config_lib.build_config(
      "efficientnetv2-s", "imagenet", f"train.lr_schedule={schedule}")
  return optim.build_schedule(config.train, batch, steps_per_epoch,
                              int(epochs * steps_per_epoch))


def test_base_lr_scales_with_global_batch():
  # 0.016 per 256 images: 0.256 at 4096 (paper 5.1).
  assert _schedule().base_lr == pytest.approx(0.256)
  assert _schedule(batch=512).base_lr == pytest.approx(0.032)


def test_warmup_from_zero_overrides_decay():
  lr = _schedule()  # 5 warmup epochs of 100 steps
  assert float(lr(0)) == 0.0
  assert float(lr(250)) == pytest.approx(0.128)  # warmup midpoint
  assert float(lr(499)) == pytest.approx(0.256 * 499 / 500)
  # After warmup the decay computed over the whole run applies:
  # floor(500 / 240) = 2 decays of 0.97.
  assert float(lr(500)) == pytest.approx(0.256 * 0.97 ** 2)


def test_exponential_decay_is_staircase_every_2_4_epochs():
  lr = _schedule()
  assert float(lr(719)) == pytest.approx(0.256 * 0.97 ** 2)
  assert float(lr(720)) == pytest.approx(0.256 * 0.97 ** 3)  # boundary
  assert float(lr(35000)) == pytest.approx(0.256 * 0.97 ** 145, rel=1e-4)


def test_cosine_at_40_percent_and_constant():
  lr = _schedule("cosine", epochs=100)  # 10000 steps
  assert float(lr(4000)) / 0.256 == pytest.approx(0.6545, abs=1e-4)
  assert float(lr(10000)) == pytest.approx(0.0, abs=1e-7)
  constant = _schedule("constant")
  assert float(constant(20000)) == pytest.approx(0.256)


def test_schedule_serialises():
  lr = _schedule("cosine")
  clone = schedule_lib.WarmupDecaySchedule.from_config(lr.get_config())
  assert float(clone(1234)) == float(lr(1234))


def test_weight_decay_only_on_kernels():
  model = tiny_model()
  variables = optim.decay_variables(model)
  names = [v.path for v in variables]
  assert all(n.endswith("kernel") for n in names)
  assert any("_dwconv/" in n for n in names)  # depthwise kernels too
  assert "predictions/kernel" in names
  assert not any(n.endswith(("gamma", "beta", "bias")) for n in names)
  conv_layers = [l for l in model.layers
                 if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense,
                                   keras.layers.DepthwiseConv2D))]
  assert len(variables) == len(conv_layers)
  expected = 1e-5 * sum(np.sum(np.square(v.numpy())) for v in variables) / 2
  got = float(optim.weight_decay_loss(variables, 1e-5))
  assert got == pytest.approx(expected, rel=1e-5)


def test_ema_update_rule_with_warmup_and_bn_statistics():
  model = tiny_model()
  ema = ema_lib.ExponentialMovingAverage(model, decay=0.9999)
  tracked = ema_lib.ema_variables(model)
  assert any(v.path.endswith("moving_variance") for v in tracked)
  assert len(tracked) == len(model.trainable_weights) + sum(
      v.path.endswith(("moving_mean", "moving_variance"))
      for v in model.non_trainable_weights)
  # Warm-up: min(decay, (1 + t) / (10 + t)).
  assert float(ema.decay_at(0)) == pytest.approx(0.1)
  assert float(ema.decay_at(90)) == pytest.approx(91 / 100)
  assert float(ema.decay_at(10 ** 6)) == pytest.approx(0.9999)
  before = [s.numpy() for s in ema.shadows]
  for v in tracked:
    v.assign(v + 1.0)
  ema.update(tf.constant(90))
  for shadow, old, var in zip(ema.shadows, before, tracked):
    np.testing.assert_allclose(shadow.numpy(),
                               0.91 * old + 0.09 * var.numpy(), rtol=1e-5,
                               atol=1e-6)


def test_ema_swap_restores_raw_weights():
  model = tiny_model()
  ema = ema_lib.ExponentialMovingAverage(model, decay=0.5)
  raw = [v.numpy() for v in ema_lib.ema_variables(model)]
  for shadow in ema.shadows:
    shadow.assign(shadow + 2.0)
  with ema.swapped():
    inside = [v.numpy() for v in ema_lib.ema_variables(model)]
  after = [v.numpy() for v in ema_lib.ema_variables(model)]
  np.testing.assert_allclose(inside[0], raw[0] + 2.0, rtol=1e-6)
  for a, r in zip(after, raw):
    np.testing.assert_array_equal(a, r)


def test_unknown_optimizer_is_a_config_error():
  with pytest.raises(config_lib.ConfigError,
                     match="Bad value for train.optimizer: 'lamb'; valid: "
                           "'rmsprop', 'momentum', 'sgd', 'adam'"):
    config_lib.build_config("efficientnetv2-b0", "digits",
                            "train.optimizer=lamb")


def _updates(name, gradient, steps=2, fused=True):
  """A scalar w = 1 after `steps` updates of `gradient` at lr 0.1."""
  config = config_lib.build_config(
      "efficientnetv2-b0", "imagenet",
      f"train.optimizer={name},train.fused_optimizer={fused}")
  optimizer = optim.build_optimizer(config.train, 0.1)
  w = tf.Variable(1.0)
  values = []
  for _ in range(steps):
    optimizer.apply_gradients([(tf.constant(gradient), w)])
    values.append(float(w.numpy()))
  return values


@pytest.mark.parametrize("fused", [True, False])
def test_sgd_and_momentum_are_the_references(fused):
  # Reference utils.py L152-159 (main_tf2.py L42-48): 'sgd' is plain
  # gradient descent, 'momentum' momentum 0.9 without Nesterov. By hand,
  # g = 0.5, lr = 0.1: sgd 1 - 0.05 = 0.95, then 0.90; momentum (Keras'
  # m = 0.9 m - lr g, w += m, as main_tf2.py's SGD): m -0.05, w 0.95;
  # m -0.095, w 0.855 (Nesterov would step to 0.905 first).
  np.testing.assert_allclose(_updates("sgd", 0.5, fused=fused), [0.95, 0.9],
                             rtol=1e-6)
  np.testing.assert_allclose(_updates("momentum", 0.5, fused=fused),
                             [0.95, 0.855], rtol=1e-6)


def test_adam_takes_the_references_epsilon():
  # Reference main_tf2.py L55: Keras' Adam(learning_rate), epsilon 1e-7
  # (not train.epsilon, RMSProp's 1e-3). One step, g = 1e-7, by Keras'
  # update with beta1 0.9, beta2 0.999: w -= lr sqrt(1 - 0.999) / (1 - 0.9)
  # * m / (sqrt(v) + eps), m = 0.1 g, v = 0.001 g^2.
  g, eps = 1e-7, 1e-7
  m, v = 0.1 * g, 0.001 * g * g
  expected = 1 - 0.1 * np.sqrt(0.001) / 0.1 * m / (np.sqrt(v) + eps)
  np.testing.assert_allclose(_updates("adam", g, steps=1), [expected],
                             rtol=1e-5)
