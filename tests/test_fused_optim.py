"""fused_optim: TensorFlow's fused update kernels compute Keras' updates.

The expectation is Keras' own optimizer on a copy of the same variables
with the same gradients; the traced graph shows which path ran. (Under 2
replicas: tests/test_distributed.py.)
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf.training import fused_optim
from effnetv2_tf.training import optim

SHAPES = [(3, 3, 4, 8), (8,), (5, 2)]
RMSPROP = {"rho": 0.9, "momentum": 0.9, "epsilon": 1e-3}  # the paper's
PAIRS = {  # name -> (fused, Keras' class, arguments, the fused kernel)
    "rmsprop": (fused_optim.FusedRMSprop, keras.optimizers.RMSprop, RMSPROP,
                "ResourceApplyRMSProp"),
    "rmsprop_no_momentum": (  # the digits demo's
        fused_optim.FusedRMSprop, keras.optimizers.RMSprop,
        {"rho": 0.9, "momentum": 0.0, "epsilon": 1e-7},
        "ResourceApplyRMSProp"),
    "sgd_nesterov": (fused_optim.FusedSGD, keras.optimizers.SGD,
                     {"momentum": 0.9, "nesterov": True},
                     "ResourceApplyKerasMomentum"),
    "sgd": (fused_optim.FusedSGD, keras.optimizers.SGD, {"momentum": 0.9},
            "ResourceApplyKerasMomentum"),
    "sgd_no_momentum": (fused_optim.FusedSGD, keras.optimizers.SGD, {},
                        "ResourceApplyGradientDescent"),
}


def _run(cls, options, steps=6, sparse=False):
  """Variables, optimizer and the ops of one traced update after `steps`
  updates with seeded gradients and a decaying learning rate."""
  rng = np.random.default_rng(0)
  variables = [keras.Variable(rng.normal(size=s).astype(np.float32))
               for s in SHAPES]
  schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 2, 0.5)
  optimizer = cls(schedule, **options)
  grads = [[rng.normal(size=s).astype(np.float32) for s in SHAPES]
           for _ in range(steps)]

  @tf.function
  def update(step_grads):
    if sparse:  # rows 0 and 2 of the last variable
      step_grads = step_grads[:-1] + [tf.IndexedSlices(
          tf.gather(step_grads[-1], [0, 2]), tf.constant([0, 2]),
          tf.constant(SHAPES[-1]))]
    optimizer.apply_gradients(zip(step_grads, variables))

  for step_grads in grads:
    update(step_grads)
  if not grads:
    return variables, optimizer, set()
  graph = update.get_concrete_function(grads[0]).graph.as_graph_def()
  ops = {node.op for node in graph.node}  # and in branches (loss scale):
  ops.update(node.op for function in graph.library.function
             for node in function.node_def)
  return variables, optimizer, ops


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_fused_update_equals_keras_update(pair, tmp_path):
  fused_cls, keras_cls, options, kernel = PAIRS[pair]
  fused, fused_opt, fused_ops = _run(fused_cls, options)
  plain, plain_opt, plain_ops = _run(keras_cls, options)
  start = _run(keras_cls, options, steps=0)[0]
  for f, p, s in zip(fused, plain, start):
    assert np.max(np.abs(p.numpy() - s.numpy())) > 1e-3  # it moved
    np.testing.assert_allclose(f.numpy(), p.numpy(), rtol=1e-5, atol=1e-6)
  # Keras' slot variables and values; a checkpoint of the fused optimizer
  # restores into Keras' (without momentum it has one more slot).
  for f, p in zip(fused_opt.variables, plain_opt.variables):
    np.testing.assert_allclose(f.numpy(), p.numpy(), rtol=1e-5, atol=1e-6)
  path = tf.train.Checkpoint(optimizer=fused_opt).write(str(tmp_path / "c"))
  fresh_vars, fresh_opt, _ = _run(keras_cls, options, steps=0)
  fresh_opt.build(fresh_vars)
  status = tf.train.Checkpoint(optimizer=fresh_opt).read(path)
  status.assert_existing_objects_matched()
  for f, r in zip(fused_opt.variables, fresh_opt.variables):
    np.testing.assert_array_equal(f.numpy(), r.numpy())
  assert kernel in fused_ops and kernel not in plain_ops
  if pair.startswith("rmsprop"):  # the kernel replaces Keras' elementwise ops
    assert "Sqrt" in plain_ops and "Sqrt" not in fused_ops


def test_centered_rmsprop_falls_back_to_keras():
  options = {"momentum": 0.9, "centered": True}
  fused, _, ops = _run(fused_optim.FusedRMSprop, options, steps=3)
  plain, _, _ = _run(keras.optimizers.RMSprop, options, steps=3)
  assert "ResourceApplyRMSProp" not in ops
  for f, p in zip(fused, plain):
    np.testing.assert_array_equal(f.numpy(), p.numpy())


def test_sparse_gradient_falls_back_to_keras():
  fused, _, _ = _run(fused_optim.FusedRMSprop, RMSPROP, steps=3, sparse=True)
  plain, _, _ = _run(keras.optimizers.RMSprop, RMSPROP, steps=3, sparse=True)
  start = _run(keras.optimizers.RMSprop, RMSPROP, steps=0)[0]
  # Row 1 of the sparse variable has no gradient: it stays.
  np.testing.assert_array_equal(fused[-1].numpy()[1], start[-1].numpy()[1])
  for f, p in zip(fused, plain):
    np.testing.assert_allclose(f.numpy(), p.numpy(), rtol=1e-5, atol=1e-6)


def test_loss_scale_wrapper_uses_the_kernel():
  fused, _, ops = _run(
      lambda lr, **kw: keras.optimizers.LossScaleOptimizer(
          fused_optim.FusedRMSprop(lr, **kw)), RMSPROP)
  plain, _, _ = _run(
      lambda lr, **kw: keras.optimizers.LossScaleOptimizer(
          keras.optimizers.RMSprop(lr, **kw)), RMSPROP)
  assert "ResourceApplyRMSProp" in ops
  for f, p in zip(fused, plain):
    np.testing.assert_allclose(f.numpy(), p.numpy(), rtol=1e-5, atol=1e-6)


def test_serialization_round_trip():
  optimizer = fused_optim.FusedRMSprop(0.1, **RMSPROP)
  restored = keras.optimizers.deserialize(
      keras.optimizers.serialize(optimizer))
  assert type(restored) is fused_optim.FusedRMSprop
  assert restored.get_config() == optimizer.get_config()


@pytest.mark.parametrize("name,fused,cls", [
    ("rmsprop", True, fused_optim.FusedRMSprop),
    ("rmsprop", False, keras.optimizers.RMSprop),
    ("sgd", True, fused_optim.FusedSGD),
    ("sgd", False, keras.optimizers.SGD),
])
def test_build_optimizer_fused_switch(name, fused, cls):
  config = config_lib.build_config(
      "efficientnetv2-b0", "digits",
      f"train.optimizer={name},train.fused_optimizer={fused}")
  assert type(optim.build_optimizer(config.train, 0.1)) is cls
