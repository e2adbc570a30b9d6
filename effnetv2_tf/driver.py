"""The run flow shared by main.py (custom loop) and main_tf2.py (Model.fit).

Both drivers parse the same flags (`cli.define_flags`), build the same
config, write the same config.json/summary.json/checkpoints and export the
same SavedModel; they differ only in the trainer class that runs a stage.
"""

import sys

from absl import app
from absl import logging
import keras

from effnetv2_tf import checkpoints
from effnetv2_tf import cli
from effnetv2_tf import config as config_lib
from effnetv2_tf import distribute
from effnetv2_tf import export
from effnetv2_tf import train_lib
from effnetv2_tf import trainer as trainer_lib
from effnetv2_tf import xla
from effnetv2_tf.data import sources
from effnetv2_tf.data import tfrecord_format

# Errors a user can cause and fix: one line on stderr, exit code 1.
USER_ERRORS = (config_lib.ConfigError, sources.DataNotFoundError,
               FileNotFoundError, distribute.StrategyError,
               trainer_lib.TrainingError, xla.XlaError, ValueError)


def run(values, trainer_cls):
  """Runs the configured mode with `trainer_cls`; returns the summary dict."""
  config = cli.config_from_flags(values)
  model_dir = cli.model_dir_from_flags(values, config)
  if config.runtime.deterministic:
    train_lib.make_deterministic(config.train.seed)
  strategy = distribute.get_strategy(values.strategy, values.use_tpu,
                                     values.tpu)
  if config.runtime.mixed_precision:
    policy = distribute.mixed_precision_policy(strategy)
    keras.mixed_precision.set_global_policy(policy)
    print(f"Mixed precision: {policy} (float32 variables, logits, loss and "
          "BN statistics)", flush=True)
  trainer = trainer_cls(config, model_dir, strategy)
  print(f"Steps: {trainer.xla_choice}", flush=True)
  if trainer.chief:
    config_lib.save_config(config, model_dir)
    if trainer.source.class_names:  # for export from a checkpoint
      tfrecord_format.write_class_names(model_dir,
                                        trainer.source.class_names)
  # --mode=eval with --init_checkpoint evaluates that checkpoint instead of
  # the latest one in --model_dir.
  given_eval = values.mode == "eval" and values.init_checkpoint
  restored = None if given_eval else trainer.restore()
  if restored:
    print(f"Restored {restored}: step {trainer.step} of "
          f"{trainer.total_steps}", flush=True)
  if not restored and values.init_checkpoint:
    with strategy.scope():
      loaded = checkpoints.init_from(trainer.model, values.init_checkpoint,
                                     cli.model_from_run_config)
      trainer.ema.reset_to_model()
    if given_eval and loaded < len(trainer.model.weights):
      raise ValueError(
          f"--init_checkpoint {values.init_checkpoint}: only {loaded} of "
          f"{len(trainer.model.weights)} weights fit; cannot evaluate it "
          "(another class count or model?).")
  elif values.mode == "eval" and not restored:
    raise FileNotFoundError(f"--mode=eval: no checkpoint in {model_dir}.")
  if values.mode in ("train", "train_and_eval"):
    print(f"Training {config.model.name} on {config.data.name}: "
          f"{trainer.total_steps} steps ({trainer.steps_per_epoch}/epoch) at "
          f"batch {trainer.global_batch}, {len(trainer.stages)} stages, "
          f"model_dir {model_dir}", flush=True)
    trainer.train(eval_every_stage=values.mode == "train_and_eval")
  result = None
  if values.mode in ("eval", "train_and_eval"):
    stages = trainer.summary["stages"]
    result = (dict(top1=stages[-1]["top1"], top5=stages[-1]["top5"])
              if values.mode == "train_and_eval" and stages and
              "top1" in stages[-1] else trainer.evaluate())
  summary = trainer.finish(result)
  if values.export_dir and trainer.chief:
    with trainer.ema.swapped():
      export.export_saved_model(
          trainer.model, values.export_dir, **export.serving_options(config),
          class_names=trainer.source.class_names)
    print(f"Exported SavedModel (EMA weights) to {values.export_dir}",
          flush=True)
  return summary


def main(argv, values, trainer_cls, prog):
  """absl `main` body: runs, turning user errors into one line + exit 1."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    run(values, trainer_cls)
  except USER_ERRORS as err:
    logging.debug("Failure details", exc_info=True)
    fail(prog, str(err))


def fail(prog, message):
  print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)
