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
from effnetv2_tf.training import reporter as reporter_lib
from effnetv2_tf.training import step as step_lib
from effnetv2_tf.training import trainer as trainer_lib


def run(values, trainer_cls):
  """Runs the configured mode with `trainer_cls`; returns the summary dict."""
  report = reporter_lib.Printer()
  model_dir = cli.model_dir_from_flags(values)
  reads_only = _check_directories(values, model_dir)
  draft = cli.draft_from_flags(values, model_dir)
  if draft.config.runtime.deterministic:
    step_lib.make_deterministic(draft.config.train.seed)
  strategy = _strategy(values, draft.config, report)
  source = _checked_source(values, draft.config, report)
  config = draft.lock(values, source)  # the data's class count
  report.line(source.describe())
  trainer = trainer_cls(config, model_dir, strategy, source=source,
                        reporter=report)
  if reads_only:
    trainer.leave_model_dir_as_is()
  report.line(f"Steps: {trainer.steps_choice}")
  _check_free_space(values, trainer)
  if trainer.chief and values.mode != "eval":  # eval leaves the run as is
    config_lib.save_config(config, model_dir)
    if trainer.class_names:  # for export from a checkpoint
      tfrecord_format.write_class_names(model_dir, trainer.class_names)
  _restore_or_init(values, trainer, report)
  result = _train_and_evaluate(values, trainer, report)
  summary = trainer.finish(result)
  if values.export_dir and trainer.chief:
    with trainer.ema_model() as model:
      export.export_saved_model(
          model, values.export_dir, **export.serving_options(config),
          class_names=trainer.class_names)
    report.line(f"Exported SavedModel (EMA weights) to {values.export_dir}")
  return summary


def _check_directories(values, model_dir):
  """Checks the directories the run writes; returns whether it only reads
  --model_dir."""
  # --mode=eval of a run (its own config.json there) only reads the run
  # directory, which may then be read-only; a new one gets the result.
  reads_only = (values.mode == "eval" and
                run_dir.read_config(model_dir) is not None)
  if not reads_only:
    run_dir.check_writable(model_dir, "--model_dir")
  if values.export_dir:
    run_dir.check_writable(values.export_dir, "--export_dir")
  return reads_only


def _strategy(values, config, report):
  """The flags' tf.distribute strategy, with the mixed-precision policy."""
  strategy = distribute.get_strategy(values.strategy, values.use_tpu,
                                     values.tpu)
  if config.runtime.mixed_precision:
    policy = distribute.mixed_precision_policy(strategy)
    keras.mixed_precision.set_global_policy(policy)
    report.line(f"Mixed precision: {policy} (float32 variables, logits, "
                "loss and BN statistics)")
  return strategy


def _checked_source(values, config, report):
  """The config's data source, its unreadable images left out, checked to
  hold the splits the mode reads."""
  source = sources.from_config(config)
  unreadable = source.drop_unreadable()
  if unreadable:
    report.line(f"Unreadable images left out ({len(unreadable)}): "
                f"{', '.join(unreadable[:5])}"
                + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5
                   else ""))
  # --mode=eval needs no training data (e.g. ImageNet's validation files).
  sources.check(source, (["train"] if values.mode != "eval" else []) + (
      [config.data.eval_split] if values.mode != "train" else []))
  return source


def _check_free_space(values, trainer):
  """Room for a checkpoint and the SavedModel, before anything is written."""
  if values.mode != "eval":
    run_dir.check_free_space(
        trainer.model_dir, 2 * trainer.checkpoint_bytes(), "--model_dir",
        "a checkpoint (written beside the previous one)")
  if values.export_dir:
    run_dir.check_free_space(
        values.export_dir, trainer_lib.variable_bytes(trainer.model.weights),
        "--export_dir", "the SavedModel")


def _restore_or_init(values, trainer, report):
  """Resumes from the run's latest checkpoint, else starts from
  --init_checkpoint; --mode=eval without either is an error."""
  # --mode=eval with --init_checkpoint evaluates that checkpoint instead of
  # the latest one in --model_dir.
  given_eval = values.mode == "eval" and values.init_checkpoint
  restored = None if given_eval else trainer.restore()
  if restored:
    report.line(f"Restored {restored}: step {trainer.step} of "
                f"{trainer.total_steps}")
  if not restored and values.init_checkpoint:
    note = (None if given_eval else
            checkpoints.scaling_note(trainer.config, values.init_checkpoint))
    if note:
      report.line(note)
    trainer.init_from(values.init_checkpoint, whole=given_eval)
  elif values.mode == "eval" and not restored:
    raise errors.MissingInputError(
        f"--mode=eval: no checkpoint in {trainer.model_dir}.")


def _train_and_evaluate(values, trainer, report):
  """Trains and/or evaluates as --mode says; returns the final eval or
  None."""
  if values.mode in ("train", "train_and_eval"):
    report.line(trainer.describe())
    trainer.train(eval_every_stage=values.mode == "train_and_eval")
  if values.mode == "eval":
    return trainer.evaluate()
  if values.mode == "train_and_eval":
    return trainer.final_eval()
  return None


def main(argv, values, trainer_cls, prog):
  """absl `main` body: runs, turning user errors into one line + exit 1."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  quiet_start.quiet_info_logs(values)
  with errors.reported(prog):
    run(values, trainer_cls)
