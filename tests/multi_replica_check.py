"""Runs in its own process: 2 logical CPU devices under MirroredStrategy.

Called by tests/test_distributed.py (the logical devices must be configured
before TensorFlow initialises, hence a subprocess). Prints one JSON line:

  single vs mirrored, one train step of main.py's step function on the same
  global batch of 8 (4 different examples per replica): loss, weights and BN
  moving means after the step (BN over all replicas, runtime.bn_group_size=0,
  must see all 8 examples); then a short main.py and main_tf2.py run under
  the 2-replica strategy with the default batch norm (per replica); then
  the fused optimizers (fused_optim.py) against Keras' under it.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2)

from effnetv2_tf import config as config_lib  # pylint: disable=g-import-not-at-top
from effnetv2_tf.training import custom_loop
from effnetv2_tf.training import fit_loop
from effnetv2_tf.training import fused_optim
from effnetv2_tf.training import xla

# On the smoke config (configs/datasets.py): 2 stages of 16 and 24 px.
HPARAMS = ("model.survival_prob=1.0,progressive.min_dropout=0,"
           "progressive.max_dropout=0,train.batch_size=8,"
           "train.warmup_epochs=0,train.steps=4,runtime.steps_per_loop=2")


def _trainer(cls, model_dir, strategy, hparams=""):
  config = config_lib.build_config("efficientnetv2-b0", "smoke",
                                   HPARAMS + hparams)
  return cls(config, model_dir, strategy)


def one_step_comparison(tmp, mirrored_strategy, single_hparams="",
                        mirrored_hparams=",runtime.bn_group_size=0",
                        name=""):
  """One step of each on the same global batch of 8 (weights copied)."""
  rng = np.random.default_rng(0)
  images = rng.normal(size=(8, 16, 16, 3)).astype(np.float32)
  labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)]
  batch = {"images": images, "labels": labels,
           "skipped": np.zeros([], np.int64)}

  single = _trainer(custom_loop.CustomLoopTrainer,
                    os.path.join(tmp, name + "single"),
                    tf.distribute.get_strategy(), single_hparams)
  mirrored = _trainer(custom_loop.CustomLoopTrainer,
                      os.path.join(tmp, name + "mirrored"),
                      mirrored_strategy, mirrored_hparams)
  mirrored.model.set_weights(single.model.get_weights())
  mirrored.ema.reset_to_model()
  single.ema.reset_to_model()

  single_loss = float(tf.function(single.make_step_fn())(batch)[0])

  def replica_batch(context):
    i = context.replica_id_in_sync_group
    return {"images": images[4 * i:4 * i + 4],
            "labels": labels[4 * i:4 * i + 4],
            "skipped": np.zeros([], np.int64)}

  values = mirrored_strategy.experimental_distribute_values_from_function(
      replica_batch)
  step_fn = mirrored.make_step_fn()

  @tf.function
  def run(values):
    loss, _ = mirrored_strategy.run(step_fn, args=(values,))
    return mirrored_strategy.reduce(tf.distribute.ReduceOp.SUM, loss,
                                    axis=None)

  mirrored_loss = float(run(values))
  weight_diff = max(
      float(np.max(np.abs(a - b))) for a, b in zip(
          single.model.get_weights(), mirrored.model.get_weights()))
  trainable_diff = max(
      float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(
          single.model.trainable_variables,
          mirrored.model.trainable_variables))
  bn = "stem_bn"
  mean_single = single.model.get_layer(bn).moving_mean.numpy()
  mean_mirrored = mirrored.model.get_layer(bn).moving_mean.numpy()
  # What the moving mean would be with per-replica (unsynchronised) stats:
  # the first replica's 4 examples only.
  return {
      "replicas": mirrored.replicas,
      "per_replica_batch": int(values["images"].values[0].shape[0]),
      "bn_group_size": mirrored.bn_group_size,
      "bn_layer": type(mirrored.model.get_layer(bn)).__name__,
      "single_loss": single_loss, "mirrored_loss": mirrored_loss,
      "max_weight_diff": weight_diff, "max_trainable_diff": trainable_diff,
      "moving_mean_diff": float(np.max(np.abs(mean_single - mean_mirrored))),
      "moving_mean_change": float(np.max(np.abs(mean_single))),
  }


def short_runs(tmp, strategy):
  steps = {}
  for name, cls in (("main", custom_loop.CustomLoopTrainer),
                    ("main_tf2", fit_loop.FitTrainer)):
    trainer = _trainer(cls, os.path.join(tmp, name), strategy)
    first = next(iter(trainer.train_dataset(trainer.stages[0])))
    steps[name + "_pipeline_batches"] = [
        int(v.shape[0]) for v in first["images"].values]
    trainer.train()
    steps[name] = trainer.step
    steps[name + "_bn_choice"] = trainer.steps_choice
    bn = trainer.model.get_layer("stem_bn")
    steps[name + "_bn_layer"] = type(bn).__name__
    # Per-replica statistics; both replicas' copies of the moving mean.
    first, second = (v.numpy() for v in bn.moving_mean.value.values)
    steps[name + "_bn_copies_diff"] = float(np.max(np.abs(first - second)))
    steps[name + "_bn_moved"] = float(np.max(np.abs(first)))
    steps[name + "_traces"] = trainer.traces
    steps[name + "_loss_finite"] = bool(all(
        np.isfinite(h["loss"]) for h in trainer.summary["history"]))
  return steps


def fused_optimizers(strategy):
  """Three updates with replica-dependent gradients (their sum is applied):
  {name: [max |fused - keras| over both replicas' copies, replicas equal]}.
  The fused kernels write through each replica's own variable handle."""
  result = {}
  for fused, plain, options in (
      (fused_optim.FusedRMSprop, keras.optimizers.RMSprop,
       {"momentum": 0.9, "epsilon": 1e-3}),
      (fused_optim.FusedSGD, keras.optimizers.SGD,
       {"momentum": 0.9, "nesterov": True})):
    copies = []
    for cls in (fused, plain):
      with strategy.scope():
        variable = keras.Variable(np.linspace(-1, 1, 6, dtype=np.float32))
        optimizer = cls(0.1, **options)
        optimizer.build([variable])

      def replica_update(variable=variable, optimizer=optimizer):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        grad = tf.range(6, dtype=tf.float32) * tf.cast(replica + 1, tf.float32)
        optimizer.apply_gradients([(grad, variable)])

      update = tf.function(lambda fn=replica_update: strategy.run(fn))
      for _ in range(3):
        update()
      copies.append([c.numpy() for c in variable.value.values])
    (fused_0, fused_1), (plain_0, plain_1) = copies
    result[fused.__name__] = [
        float(max(np.max(np.abs(fused_0 - plain_0)),
                  np.max(np.abs(fused_1 - plain_1)))),
        bool(np.array_equal(fused_0, fused_1)),
        float(np.max(np.abs(plain_0 - np.linspace(-1, 1, 6))))]
  return result


def main():
  tmp = sys.argv[1]
  # One strategy for everything, as in a driver: a second MirroredStrategy
  # in the process reuses the first's collective instance keys, and a step
  # traced with an unknown image size then failed on a key the first had
  # used ("Shape mismatch in the collective instance").
  strategy = tf.distribute.MirroredStrategy(
      [d.name for d in tf.config.list_logical_devices("CPU")])
  result = one_step_comparison(tmp, strategy)
  # Gradient accumulation: one device's 4 micro-batches of 2 are the two
  # replicas' 2 micro-batches of 2 each (rows 0-1, 2-3 | 4-5, 6-7), so
  # batch norm in training mode normalizes the same examples together.
  # The replicas also recompute their blocks' activations (inside the
  # micro-batch loop): the gradients must not change.
  result["accumulation"] = one_step_comparison(
      tmp, strategy, ",train.grad_accum_steps=4",
      ",train.grad_accum_steps=2,train.recompute=true",
      name="accumulation_")
  result.update(short_runs(tmp, strategy))
  result["fused_optimizers"] = fused_optimizers(strategy)
  try:
    xla.resolve(True, strategy)
    result["xla_refused"] = ""
  except xla.XlaError as err:
    result["xla_refused"] = str(err)
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
