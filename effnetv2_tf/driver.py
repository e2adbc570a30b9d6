"""The run flow shared by main.py (custom loop) and main_tf2.py (Model.fit).

Both drivers parse the same flags (`cli.define_flags`), build the same
config, write the same config.json/summary.json/checkpoints and export the
same SavedModel; they differ only in the trainer class that runs a stage.
"""

from absl import app
import keras

from effnetv2_tf import cli
from effnetv2_tf import config as config_lib
from effnetv2_tf import errors
from effnetv2_tf import export
from effnetv2_tf import quiet_start
from effnetv2_tf.data import sources
from effnetv2_tf.data import tfrecord_format
from effnetv2_tf.runs import checkpoints
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import distribute
from effnetv2_tf.training import step as step_lib
from effnetv2_tf.training import trainer as trainer_lib


def run(values, trainer_cls):
  """Runs the configured mode with `trainer_cls`; returns the summary dict."""
  model_dir = cli.model_dir_from_flags(values)
  # --mode=eval of a run (its own config.json there) only reads the run
  # directory, which may then be read-only; a new one gets the result.
  reads_only = (values.mode == "eval" and
                run_dir.read_config(model_dir) is not None)
  if not reads_only:
    run_dir.check_writable(model_dir, "--model_dir")
  if values.export_dir:
    run_dir.check_writable(values.export_dir, "--export_dir")
  config = cli.config_from_flags(values, model_dir)
  if config.runtime.deterministic:
    step_lib.make_deterministic(config.train.seed)
  strategy = distribute.get_strategy(values.strategy, values.use_tpu,
                                     values.tpu)
  if config.runtime.mixed_precision:
    policy = distribute.mixed_precision_policy(strategy)
    keras.mixed_precision.set_global_policy(policy)
    print(f"Mixed precision: {policy} (float32 variables, logits, loss and "
          "BN statistics)", flush=True)
  source = sources.from_config(config)
  unreadable = source.drop_unreadable()
  if unreadable:
    print(f"Unreadable images left out ({len(unreadable)}): "
          f"{', '.join(unreadable[:5])}"
          + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5
             else ""), flush=True)
  # --mode=eval needs no training data (e.g. ImageNet's validation files).
  sources.check(source, (["train"] if values.mode != "eval" else []) + (
      [config.data.eval_split] if values.mode != "train" else []))
  config = cli.with_data_class_count(values, model_dir, config, source)
  print(source.describe(), flush=True)
  trainer = trainer_cls(config, model_dir, strategy, source=source)
  if reads_only:
    trainer.leave_model_dir_as_is()
  print(f"Steps: {trainer.steps_choice}", flush=True)
  if values.mode != "eval":  # checked before anything is written
    run_dir.check_free_space(
        model_dir, 2 * trainer.checkpoint_bytes(), "--model_dir",
        "a checkpoint (written beside the previous one)")
  if values.export_dir:
    run_dir.check_free_space(
        values.export_dir, trainer_lib.variable_bytes(trainer.model.weights),
        "--export_dir", "the SavedModel")
  if trainer.chief and values.mode != "eval":  # eval leaves the run as is
    config_lib.save_config(config, model_dir)
    if trainer.class_names:  # for export from a checkpoint
      tfrecord_format.write_class_names(model_dir, trainer.class_names)
  # --mode=eval with --init_checkpoint evaluates that checkpoint instead of
  # the latest one in --model_dir.
  given_eval = values.mode == "eval" and values.init_checkpoint
  restored = None if given_eval else trainer.restore()
  if restored:
    print(f"Restored {restored}: step {trainer.step} of "
          f"{trainer.total_steps}", flush=True)
  if not restored and values.init_checkpoint:
    note = (None if given_eval else
            checkpoints.scaling_note(config, values.init_checkpoint))
    if note:
      print(note, flush=True)
    trainer.init_from(values.init_checkpoint, whole=given_eval)
  elif values.mode == "eval" and not restored:
    raise errors.MissingInputError(
        f"--mode=eval: no checkpoint in {model_dir}.")
  if values.mode in ("train", "train_and_eval"):
    print(trainer.describe(), flush=True)
    trainer.train(eval_every_stage=values.mode == "train_and_eval")
  result = None
  if values.mode == "eval":
    result = trainer.evaluate()
  elif values.mode == "train_and_eval":
    result = trainer.final_eval()
  summary = trainer.finish(result)
  if values.export_dir and trainer.chief:
    with trainer.ema_model() as model:
      export.export_saved_model(
          model, values.export_dir, **export.serving_options(config),
          class_names=trainer.class_names)
    print(f"Exported SavedModel (EMA weights) to {values.export_dir}",
          flush=True)
  return summary


def main(argv, values, trainer_cls, prog):
  """absl `main` body: runs, turning user errors into one line + exit 1."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  quiet_start.quiet_info_logs(values)
  with errors.reported(prog):
    run(values, trainer_cls)
