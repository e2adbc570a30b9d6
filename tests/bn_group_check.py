"""Runs in its own process: 4 logical CPU devices under MirroredStrategy.

Called by tests/test_bn_groups.py (the logical devices must be configured
before TensorFlow initialises, hence a subprocess; one MirroredStrategy
for every case, as tests/multi_replica_check.py explains). Prints one JSON
line: for each case (model option bn_group_size, per-replica batch sizes),
one training step of the batch norm the model builder makes for it, on
known per-replica inputs: the inputs, the loss weights, the layer's
weights before the step, and per replica its outputs, the gradient of
sum(outputs * weights) by its inputs and its copy of the moving statistics
after the step.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

REPLICAS = 4
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

from effnetv2_tf.models import model as model_lib  # pylint: disable=g-import-not-at-top

CHANNELS = 3
# (bn_group_size, examples per replica)
CASES = ((1, (2, 2, 2, 2)), (2, (2, 2, 2, 2)), (4, (2, 2, 2, 2)),
         (0, (2, 2, 2, 2)), (2, (1, 3, 2, 2)))


def _case(strategy, group_size, batches, rng):
  # Each replica's examples with its own offset and scale, so that pooling
  # the wrong replicas shows.
  inputs = [(rng.normal(size=(b, 2, 2, CHANNELS)) * (1 + r) + 2 * r)
            .astype(np.float32) for r, b in enumerate(batches)]
  weights = [rng.normal(size=x.shape).astype(np.float32) for x in inputs]
  state = [rng.uniform(0.5, 1.5, CHANNELS), rng.normal(0, 0.5, CHANNELS),
           rng.normal(0, 0.5, CHANNELS), rng.uniform(0.5, 2.0, CHANNELS)]
  state = [s.astype(np.float32) for s in state]  # gamma, beta, moving m, v
  options = model_lib.ModelOptions(dropout_rate=0.0,
                                   bn_group_size=group_size)
  with strategy.scope():
    layer = model_lib._Builder(options).batch_norm("bn")  # pylint: disable=protected-access
    layer.build((None, 2, 2, CHANNELS))
    layer.set_weights(state)

  def replica_values(context):
    r = context.replica_id_in_sync_group
    return inputs[r], weights[r]

  values = strategy.experimental_distribute_values_from_function(
      replica_values)

  def step(x, w):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=True)
      loss = tf.reduce_sum(y * w)
    return y, tape.gradient(loss, x)

  outputs, grads = tf.function(
      lambda v: strategy.run(step, args=v))(values)
  local = strategy.experimental_local_results
  return {
      "group_size": group_size, "batches": list(batches),
      "layer": type(layer).__name__,
      "inputs": [x.tolist() for x in inputs],
      "weights": [w.tolist() for w in weights],
      "state": [s.tolist() for s in state],
      "momentum": layer.momentum, "epsilon": layer.epsilon,
      "outputs": [y.numpy().tolist() for y in local(outputs)],
      "grads": [g.numpy().tolist() for g in local(grads)],
      "moving_mean": [v.numpy().tolist()
                      for v in layer.moving_mean.value.values],
      "moving_variance": [v.numpy().tolist()
                          for v in layer.moving_variance.value.values],
  }


def main():
  strategy = tf.distribute.MirroredStrategy(
      [d.name for d in tf.config.list_logical_devices("CPU")])
  assert strategy.num_replicas_in_sync == REPLICAS
  rng = np.random.default_rng(0)
  cases = [_case(strategy, size, batches, rng) for size, batches in CASES]
  print("RESULT " + json.dumps(cases), flush=True)


if __name__ == "__main__":
  main()
