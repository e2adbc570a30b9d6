"""Tests of recomputation (models/recompute.py): the recomputed training pass
gives the plain pass's values, gradients and state updates, keeps only the
segment inputs for the backward pass, and leaves the model untouched."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import TWO_BLOCK_RUN
from conftest import tiny_model
from effnetv2_tf import config as config_lib
from effnetv2_tf.models import recompute
from effnetv2_tf.training import custom_loop
from effnetv2_tf.training import fit_loop
from effnetv2_tf.training import reporter as reporter_lib

SIZE = 32
BATCH = 8
# The tiny B0 (depth 0.34): stage repeats 1 2 2 3 5 8 scale to
# ceil(0.34 r) = 1 1 1 2 2 3 blocks; with the stem and the head, segments.
BLOCKS = 10
SEGMENTS = BLOCKS + 2
SEED = 5


def _model(survival_prob=0.5, dropout_rate=0.3):
  """A tiny B0 whose stochastic depth and dropout matter (masks differ per
  example at these rates), seeded so every call builds the same one."""
  keras.utils.set_random_seed(SEED)
  return tiny_model(input_shape=(SIZE, SIZE, 3), survival_prob=survival_prob,
                    dropout_rate=dropout_rate)


def _images(batch=BATCH):
  rng = np.random.default_rng(0)
  return tf.constant(rng.uniform(-1, 1, (batch, SIZE, SIZE, 3)), tf.float32)


def _forward(model, recomputed):
  if recomputed:
    return recompute.training_forward(model)
  return lambda images: model(images, training=True)


def _step(model, recomputed, compiled=False):
  """A function images -> (loss, gradients of every trainable variable)."""
  forward = _forward(model, recomputed)

  def step(images):
    with tf.GradientTape() as tape:
      logits = forward(images)
      loss = tf.reduce_mean(tf.square(tf.cast(logits, tf.float32) - 1.0))
    return loss, tape.gradient(loss, model.trainable_variables)

  return tf.function(step) if compiled else step


def _assert_same_step(plain, ours, images):
  """One step of each: equal losses and gradients, and equal non-trainable
  variables (BN moving statistics, seed-generator states) afterwards."""
  loss_a, grads_a = plain[1](images)
  loss_b, grads_b = ours[1](images)
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
  assert len(grads_b) == len(grads_a)
  for v, a, b in zip(plain[0].trainable_variables, grads_a, grads_b):
    assert b is not None, v.path
    scale = max(float(tf.reduce_max(tf.abs(a))), 1e-6)
    np.testing.assert_allclose(b, a, atol=1e-6 * scale, rtol=1e-5,
                               err_msg=v.path)
  for a, b in zip(plain[0].non_trainable_variables,
                  ours[0].non_trainable_variables):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=a.path)


@pytest.mark.parametrize("compiled", [False, True],
                         ids=["eager", "tf_function"])
def test_gradients_and_state_equal_the_plain_step(compiled):
  plain, ours = _model(), _model()
  _assert_same_step((plain, _step(plain, False, compiled)),
                    (ours, _step(ours, True, compiled)), _images())


def test_stochastic_depth_masks_matter_here():
  """The equality above means something: other masks (another seed state)
  give another loss at these survival rates."""
  model = _model()
  forward = recompute.training_forward(model)
  first = forward(_images())
  second = forward(_images())  # the seed states have advanced
  assert not np.allclose(first, second)


def test_state_updated_once():
  """BN moving statistics move once per step: from the initial 0 to
  (1 - momentum) * the batch mean (twice would give 0.19 of it), and each
  stochastic-depth seed state advances by one draw ([0, 1], Keras'
  ordered SeedGenerator), not two."""
  model = _model()
  images = _images()
  stem_bn = model.get_layer("stem_bn")
  drops = [layer for layer in model.layers
           if layer.name.endswith("_drop")]
  assert drops
  seeds_before = [layer.seed_generator.state.numpy() for layer in drops]
  batch_mean = tf.reduce_mean(model.get_layer("stem_conv")(images),
                              axis=[0, 1, 2])
  _step(model, True, compiled=True)(images)
  np.testing.assert_allclose(stem_bn.moving_mean,
                             (1.0 - stem_bn.momentum) * batch_mean,
                             rtol=1e-5, atol=1e-7)
  for layer, before in zip(drops, seeds_before):
    np.testing.assert_array_equal(layer.seed_generator.state,
                                  before + np.array([0, 1]))


def test_segments_are_the_blocks():
  model = _model()
  parts = recompute.segments(model)
  assert len(parts) == SEGMENTS
  firsts = [part.layers[1].name for part in parts]  # after the InputLayer
  assert firsts[0] == "stem_conv" and firsts[-1] == "top_conv"
  assert all(name.startswith("block") for name in firsts[1:-1])
  # Every layer of the model in exactly one segment.
  names = [layer.name for part in parts for layer in part.layers
           if not isinstance(layer, keras.layers.InputLayer)]
  assert sorted(names) == sorted(
      layer.name for layer in model.layers
      if not isinstance(layer, keras.layers.InputLayer))


def test_not_a_block_model():
  inputs = keras.Input((4,))
  model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
  with pytest.raises(recompute.RecomputeError, match="block2a_expand_conv"):
    recompute.training_forward(model)


def _ancestors(ops):
  seen, stack = set(), list(ops)
  while stack:
    op = stack.pop()
    if op not in seen:
      seen.add(op)
      stack.extend(t.op for t in op.inputs)
      stack.extend(op.control_inputs)
  return seen


def _kept_activations(model, recomputed):
  """Names of the batch-sized 4-D tensors of the traced forward pass (the
  ops the loss depends on) that the backward pass (the other ops the
  gradients depend on) reads: the activations held until backward."""
  step = _step(model, recomputed, compiled=True)
  images = _images()
  function = step.get_concrete_function(images)
  loss, grads = function.outputs[0], function.outputs[1:]
  forward = _ancestors([loss.op])
  backward = _ancestors([g.op for g in grads]) - forward
  return {t.name for op in backward for t in op.inputs
          if t.op in forward and t.shape.rank == 4 and t.shape[0] == BATCH}


def test_backward_keeps_only_segment_inputs():
  """Plain: the backward pass reads the activations of nearly every layer;
  recomputed: of the stem and the blocks, only each one's input (the
  images, the stem's output, every block's but the last's), and the head's
  own (it is not recomputed: top_conv's and top_bn's outputs)."""
  assert len(_kept_activations(_model(), False)) > 5 * SEGMENTS
  model = _model()
  kept = _kept_activations(model, True)
  head = {name for name in kept
          if name.startswith(recompute.segments(model)[-1].name)}
  assert len(kept - head) == 1 + BLOCKS
  assert len(head) <= 3, head


def test_model_untouched(tmp_path):
  """Same layers, names and weights; a weights file saved before loads
  after (and the step changed no weight)."""
  model = _model()
  names = [layer.name for layer in model.layers]
  count = len(model.weights)
  path = str(tmp_path / "before.weights.h5")
  model.save_weights(path)
  trainable = [v.numpy() for v in model.trainable_variables]
  _step(model, True)(_images())
  assert [layer.name for layer in model.layers] == names
  assert len(model.weights) == count
  for v, before in zip(model.trainable_variables, trainable):
    np.testing.assert_array_equal(v, before)
  other = _model()
  other.load_weights(path)
  for a, b in zip(other.weights, model.weights):
    if "seed_generator" not in a.path and "moving" not in a.path:
      np.testing.assert_array_equal(a, b)


def test_one_replica_strategy():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  images = _images()
  results = []
  for recomputed in (False, True):
    with strategy.scope():
      model = _model()
      step = _step(model, recomputed)

    @tf.function
    def run(images, step=step):
      return strategy.run(step, (images,))

    results.append((model, lambda images, run=run: run(images)))
  _assert_same_step(results[0], results[1], images)


@pytest.fixture
def mixed_float16():
  keras.mixed_precision.set_global_policy("mixed_float16")
  yield
  keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_mixed_float16(mixed_float16):  # pylint: disable=redefined-outer-name,unused-argument
  """Finite float32 gradients, equal to the plain mixed step's."""
  images = _images()
  _, plain = _step(_model(), False, compiled=True)(images)
  model = _model()
  assert model.get_layer("stem_conv").compute_dtype == "float16"
  _, ours = _step(model, True, compiled=True)(images)
  for a, b in zip(plain, ours):
    assert b.dtype == tf.float32 and np.all(np.isfinite(b))
    np.testing.assert_allclose(b, a, rtol=1e-3,
                               atol=1e-3 * float(tf.reduce_max(tf.abs(a))))


# A two-block smoke run (configs/datasets.py's smoke row) without noise
# (each trainer's noise has seeds of its own): the drivers' wiring of
# train.recompute; masks and state are tested above.
_RUN = ("model.survival_prob=1.0,progressive.min_dropout=0,"
        "progressive.max_dropout=0," + TWO_BLOCK_RUN)


@pytest.mark.parametrize("cls", [custom_loop.CustomLoopTrainer,
                                 fit_loop.FitTrainer])
def test_both_drivers_recompute_with_the_setting(tmp_path, cls):
  trainers = {}
  for flag in ("false", "true"):
    config = config_lib.build_config("efficientnetv2-b0", "smoke",
                                     f"{_RUN},train.recompute={flag}")
    trainers[flag] = cls(config, str(tmp_path / flag),
                         tf.distribute.get_strategy(),
                         reporter=reporter_lib.Recorder())
  plain, ours = trainers["false"], trainers["true"]
  ours.model.set_weights(plain.model.get_weights())
  batch = next(iter(plain.train_dataset(plain.stages[0])))
  # The trainer's step (what both loops run) takes the recomputed path:
  # the same loss and update as the plain step on the same batch.
  losses = [float(tf.function(t.make_step_fn())(batch)[0])
            for t in (plain, ours)]
  assert losses[1] == pytest.approx(losses[0], rel=1e-5)
  for a, b in zip(plain.model.trainable_variables,
                  ours.model.trainable_variables):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
  summary = ours.train()
  assert ours.step == 4
  assert np.isfinite([h["loss"] for h in summary["history"]]).all()
