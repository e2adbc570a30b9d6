"""Gradient accumulation (train.grad_accum_steps, training/step.py): K
micro-batches per optimizer step give one batch's update; the optimizer's
step counter, learning-rate schedule and EMA advance once per step; the
mixed_float16 loss scale works and skips a step with a non-finite
micro-batch; both drivers count optimizer steps; bad values are one line;
the micro-batches run in a tf.while_loop.

Where two splits are compared the gradient must not depend on the split:
batch norm runs in inference mode (its layers set trainable=False, which
Keras 3 and fused_bn.py honour: moving statistics, no batch statistics),
dropout and stochastic depth are off. Then a micro-batch's loss is its
share of the whole batch's mean cross-entropy, and the K gradients sum to
the whole batch's.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf.models import ema as ema_lib
from effnetv2_tf.models import names
from effnetv2_tf.training import custom_loop
from effnetv2_tf.training import fit_loop
from effnetv2_tf.training import optim
from effnetv2_tf.training import reporter as reporter_lib
from effnetv2_tf.training import schedule as schedule_lib
from effnetv2_tf.training import step as step_lib
from effnetv2_tf.training import trainer as trainer_lib

from conftest import TWO_BLOCK_RUN
from conftest import tiny_model

BATCH = 8  # the global batch of the direct step tests (one replica)
SIZE = 16  # px
CLASSES = 10
WEIGHT_DECAY = 1e-3


def _batch(seed=3, batch=BATCH):
  images = tf.random.stateless_uniform([batch, SIZE, SIZE, 3], [seed, 1],
                                       -1.0, 1.0)
  labels = tf.one_hot(tf.range(batch) % CLASSES, CLASSES)
  return {"images": images, "labels": labels,
          "skipped": tf.constant(0, tf.int64)}


def _train_config(optimizer, extra=""):
  return config_lib.build_config(
      "efficientnetv2-b0", "smoke",
      f"train.optimizer={optimizer},train.warmup_epochs=0{extra}").train


def _frozen_bn_model(weights=None):
  """A tiny B0 without dropout or stochastic depth, batch norm in
  inference mode (not trainable), its weights `weights` when given."""
  model = tiny_model(dropout_rate=0.0, survival_prob=1.0)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.trainable = False
  if weights is not None:
    model.set_weights(weights)
  return model


def _step(model, optimizer_name, k, learning_rate=0.05, frozen=False,
          ema_decay=0.9999):
  """(tf.function of the step, optimizer, EMA) of a fresh optimizer."""
  optimizer = optim.build_optimizer(_train_config(optimizer_name),
                                    learning_rate)
  optimizer.build(model.trainable_variables)
  ema = ema_lib.ExponentialMovingAverage(model, ema_decay)
  step = tf.function(step_lib.make_train_step(
      model, optimizer, ema, WEIGHT_DECAY, BATCH, 1, frozen=frozen,
      accum_steps=k))
  return step, optimizer, ema


def _deltas(model, start):
  """(delta, weight) of each trainable variable since `start`."""
  return [(v.numpy() - s, v.numpy())
          for v, s in zip(model.trainable_variables, start)]


def _assert_close(got, want, rtol):
  """Each delta of `got` ((delta, weight) pairs; plain arrays: no weight)
  within `rtol` of `want`'s norm, one norm per variable (float32 sums in
  another order round differently, ~1e-7 of each), plus the float32
  rounding of the weights the deltas were read from (a weight ~1e4 times
  its update keeps ~1e-3 of the update's digits)."""
  for a, b in zip(got, want):
    a, weight = a if isinstance(a, tuple) else (a, 0.0)
    b = b[0] if isinstance(b, tuple) else b
    rounding = 2 * np.finfo(np.float32).eps * np.linalg.norm(weight)
    assert np.linalg.norm(a - b) <= rtol * np.linalg.norm(b) + rounding


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_four_micro_batches_update_as_one_batch(optimizer):
  model = _frozen_bn_model()
  initial = model.get_weights()
  start = [v.numpy() for v in model.trainable_variables]
  batch = _batch()
  results = {}
  for k in (1, 4):
    model.set_weights(initial)
    step, _, _ = _step(model, optimizer, k)
    loss, _ = step(batch)
    results[k] = float(loss), _deltas(model, start)
  np.testing.assert_allclose(results[4][0], results[1][0], rtol=1e-5)
  _assert_close(results[4][1], results[1][1], rtol=1e-5)
  assert all(np.any(d) for d, _ in results[1][1])  # every weight moved


def _whole_batch_gradient(model, batch):
  """The gradient of the whole batch's mean cross-entropy plus the kernels'
  wd * sum(w^2) / 2, by a plain tape (no step code)."""
  with tf.GradientTape() as tape:
    logits = model(batch["images"], training=True)
    loss = tf.reduce_mean(keras.losses.categorical_crossentropy(
        batch["labels"], logits, from_logits=True))
    loss += WEIGHT_DECAY * tf.add_n([
        tf.reduce_sum(v ** 2) / 2 for v in model.trainable_variables
        if v.path.endswith("kernel")])
  return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def test_moving_statistics_move_once_towards_the_whole_batch_moments():
  # Batch norm in training mode: each micro-batch is normalized on its own,
  # but the moving statistics move once per step, towards the whole
  # batch's moments. The stem's input (the stem convolution of the images)
  # does not depend on how batch norm normalized anything, so its expected
  # update is computable by hand: m <- m * momentum + moment * (1 - momentum)
  # with the biased moments of all 8 examples (Keras' rule).
  model = tiny_model(dropout_rate=0.0, survival_prob=1.0)
  batch = _batch()
  bn = model.get_layer("stem_bn")
  conv = model.get_layer("stem_conv")
  features = conv(batch["images"]).numpy()
  mean = features.mean(axis=(0, 1, 2))
  variance = features.var(axis=(0, 1, 2))
  momentum = bn.momentum
  want_mean = bn.moving_mean.numpy() * momentum + mean * (1 - momentum)
  want_variance = (bn.moving_variance.numpy() * momentum +
                   variance * (1 - momentum))
  step, _, _ = _step(model, "sgd", 4)
  step(batch)
  np.testing.assert_allclose(bn.moving_mean.numpy(), want_mean, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(bn.moving_variance.numpy(), want_variance,
                             rtol=1e-5, atol=1e-6)
  # K updates towards each micro-batch's moments would land elsewhere:
  # after 4 updates the old value keeps only momentum ** 4 of its weight.
  assert np.max(np.abs(want_mean)) > 1e-3


def test_schedule_ema_and_step_count_advance_once_per_step():
  # Plain SGD: the update is -lr(t) * gradient, lr(t) the schedule at the
  # step count before the update; warmup from 0 over 4 steps of base 0.4
  # (schedule.py: base * t / warmup), so lr = 0, 0.1, 0.2 at t = 0, 1, 2.
  model = _frozen_bn_model()
  schedule = schedule_lib.WarmupDecaySchedule(
      base_lr=0.4, total_steps=10, warmup_steps=4, schedule="constant")
  step, optimizer, ema = _step(model, "sgd", 4, learning_rate=schedule,
                               ema_decay=0.99)
  batch = _batch()
  shadows = [s.numpy() for s in ema.shadows]
  tracked = ema_lib.ema_variables(model)
  for t in range(3):
    before = [v.numpy() for v in model.trainable_variables]
    gradient = _whole_batch_gradient(model, batch)
    step(batch)
    assert int(optimizer.iterations) == t + 1
    _assert_close(_deltas(model, before), [-0.1 * t * g for g in gradient],
                  rtol=1e-5)
    # EMA (models/ema.py): d = min(decay, (1 + n) / (10 + n)) at the step
    # count n after the update, once per step.
    rate = 1 - min(0.99, (2 + t) / (11 + t))
    shadows = [s - rate * (s - v.numpy()) for s, v in zip(shadows, tracked)]
    _assert_close([s.numpy() for s in ema.shadows], shadows, rtol=1e-6)
  np.testing.assert_allclose(float(optimizer.learning_rate), 0.3)


def test_frozen_backbone_step_accumulates_the_head():
  # The frozen step's backbone is in inference mode: its features do not
  # depend on the split; the head's dropout is 0.
  model = tiny_model(dropout_rate=0.0)
  batch = _batch()
  start = [v.numpy() for v in model.weights]
  results = {}
  for k in (1, 2):
    model.set_weights(start)
    step, _, _ = _step(model, "rmsprop", k, frozen=True)
    loss, _ = step(batch)
    results[k] = float(loss), [v.numpy() for v in model.weights]
  np.testing.assert_allclose(results[2][0], results[1][0], rtol=1e-5)
  _assert_close([w - s for w, s in zip(results[2][1], start)],
                [w - s for w, s in zip(results[1][1], start)], rtol=1e-5)
  moved = [v.path for v, w, s in zip(model.weights, results[2][1], start)
           if not np.array_equal(w, s)]
  assert moved and all(p.startswith(names.CLASSIFIER_LAYER) for p in moved)


@pytest.fixture
def float16_policy():
  keras.mixed_precision.set_global_policy("mixed_float16")
  yield
  keras.mixed_precision.set_global_policy("float32")


def test_mixed_float16_trains_and_a_non_finite_micro_batch_skips_the_step(
    float16_policy):
  # Batch norm in inference mode: in training mode this tiny model's
  # 4-image micro-batches at 16 px (1x1 maps in the last stages) overflow
  # float16 gradients at any loss scale, K = 1's 8 images at the first
  # scales too (measured), and every step would be skipped.
  model = _frozen_bn_model()
  initial = model.get_weights()
  start = [v.numpy() for v in model.trainable_variables]
  deltas = {}
  for k in (1, 2):
    model.set_weights(initial)
    step, optimizer, _ = _step(model, "sgd", k)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    scale = float(optimizer.dynamic_scale)
    loss, _ = step(_batch())
    assert np.isfinite(float(loss)) and int(optimizer.iterations) == 1
    assert float(optimizer.dynamic_scale) == scale  # finite: kept
    deltas[k] = _deltas(model, start)
  assert all(np.any(d) for d, _ in deltas[2])  # every weight moved
  # The unscaled sum is one batch's update, to float16's precision.
  _assert_close(deltas[2], deltas[1], rtol=1e-2)
  # K = 2's step again, a NaN image in its second micro-batch: Keras'
  # LossScaleOptimizer skips the whole step (no weight moves, no step
  # counted) and halves the scale.
  bad = _batch()
  bad["images"] = tf.tensor_scatter_nd_update(
      bad["images"], [[BATCH - 1, 0, 0, 0]], [np.nan])
  start = [v.numpy() for v in model.trainable_variables]
  step(bad)
  assert int(optimizer.iterations) == 1
  for variable, value in zip(model.trainable_variables, start):
    np.testing.assert_array_equal(variable.numpy(), value)
  assert float(optimizer.dynamic_scale) == scale / 2


def _ops(step, batch):
  """{op type: count} of the step's traced graph and of every function
  it calls (while-loop bodies included)."""
  graph = step.get_concrete_function(batch).graph
  counts = {}
  nodes = [n.op for n in graph.as_graph_def().node] + [
      n.op for f in graph.as_graph_def().library.function
      for n in f.node_def]
  for op in nodes:
    counts[op] = counts.get(op, 0) + 1
  return counts


def test_the_micro_batches_run_in_a_while_loop_whatever_k():
  # Micro-batches of 2 images in both: the same shapes inside the loop
  # (the gradient's zeros are a Const or a Fill by their size).
  model = tiny_model()
  ops = {}
  for k in (1, 2, 8):
    step, _, _ = _step(model, "sgd", k)
    ops[k] = _ops(step, _batch(batch=2 * k))
  assert ops[2] == ops[8]  # the graph does not grow with K
  assert "While" in ops[2] or "StatelessWhile" in ops[2]
  assert "While" not in ops[1] and "StatelessWhile" not in ops[1]


# ------------------------------------------------------------ config, drivers


def _config(hparams=""):
  return config_lib.build_config(
      "efficientnetv2-b0", "smoke",
      ",".join(filter(None, [TWO_BLOCK_RUN, hparams])))


@pytest.mark.parametrize("value, message", [
    (0, "Bad value for train.grad_accum_steps: 0; valid: >= 1"),
    (3, "train.grad_accum_steps: 3; valid: a divisor of "
        "train.batch_size=16"),
])
def test_bad_values_are_one_config_error_line(value, message):
  with pytest.raises(config_lib.ConfigError) as err:
    _config(f"train.grad_accum_steps={value}")
  assert message in str(err.value) and "\n" not in str(err.value)


def test_a_per_replica_batch_k_does_not_divide_is_one_line():
  # batch 16 over 2 replicas: 8 each, which 16 micro-batches cannot split
  # (the global batch alone would pass).
  config = _config("train.grad_accum_steps=16")
  with pytest.raises(config_lib.ConfigError) as err:
    trainer_lib.check_batches(config, 2)
  assert str(err.value) == (
      "train.grad_accum_steps=16 does not divide the per-replica batch 8 "
      "(train.batch_size=16 over 2 replicas); set it to a divisor of 8.")
  trainer_lib.check_batches(_config("train.grad_accum_steps=8"), 2)


def test_accumulation_with_pooled_batch_norm_is_one_line():
  # Measured: under MirroredStrategy, ReplicaGroupBatchNormalization's
  # all-reduce inside the micro-batch while_loop raised "`merge_call`
  # called while defining a new graph" deep in the step; refused up front.
  config = _config("train.grad_accum_steps=2")
  with pytest.raises(config_lib.ConfigError) as err:
    trainer_lib.check_batches(config, 2, bn_group_size=2)
  assert str(err.value) == (
      "train.grad_accum_steps=2 needs batch norm per replica, not pooled "
      "over 2 replicas: set runtime.bn_group_size=1 (the micro-batch loop "
      "cannot all-reduce statistics).")
  trainer_lib.check_batches(config, 2, bn_group_size=1)
  trainer_lib.check_batches(_config(""), 2, bn_group_size=2)


@pytest.mark.parametrize("cls", [custom_loop.CustomLoopTrainer,
                                 fit_loop.FitTrainer])
def test_both_drivers_count_optimizer_steps(tmp_path, cls):
  counts = {}
  for k in (1, 4):
    trainer = cls(_config(f"train.grad_accum_steps={k}"),
                  str(tmp_path / str(k)), tf.distribute.get_strategy(),
                  reporter=reporter_lib.Recorder())
    summary = trainer.train()
    losses = [entry["loss"] for entry in summary["history"]]
    assert np.isfinite(losses).all()
    counts[k] = (trainer.step, int(trainer.optimizer.iterations),
                 trainer.checkpointer.latest.rsplit("-", 1)[1],
                 [entry["step"] for entry in summary["history"]],
                 [line.split(" stage")[0] for line in trainer.reporter.lines
                  if line.startswith("step ")])
  assert "(4 micro-batches of 4 per replica)" in trainer.describe()
  # train.steps=4 optimizer steps of batch 16, whatever K: the step
  # counter, the last checkpoint, the steps of the loss history and of the
  # progress lines.
  assert counts[4] == counts[1]
  assert counts[4][:3] == (4, 4, "4")
