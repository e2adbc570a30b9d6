"""The run flow shared by main.py (custom loop) and main_tf2.py (Model.fit).

Both drivers parse the same flags (`cli.define_flags`), build the same
config, write the same config.json/summary.json/checkpoints and export the
same SavedModel; they differ only in the trainer class that runs a stage.
SIGTERM and SIGINT stop a run with one line and exit status 143/130
(`main`, training/preemption.py): during training after a save that
resumes exactly, elsewhere at once.
"""

import contextlib
import sys

from absl import app
import keras
import tensorflow as tf

from effnetv2_tf import cli
from effnetv2_tf import config as config_lib
from effnetv2_tf import errors
from effnetv2_tf import export
from effnetv2_tf import quiet_start
from effnetv2_tf.data import sources
from effnetv2_tf.data import tfrecord_format
from effnetv2_tf.runs import checkpoints
from effnetv2_tf.runs import lock as run_lock
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import checkpointer as checkpointer_lib
from effnetv2_tf.training import distribute
from effnetv2_tf.training import faults
from effnetv2_tf.training import finetune
from effnetv2_tf.training import plan
from effnetv2_tf.training import preemption
from effnetv2_tf.training import reporter as reporter_lib
from effnetv2_tf.training import step as step_lib
from effnetv2_tf.training import trainer as trainer_lib


def run(values, trainer_cls):
  """Runs the configured mode with `trainer_cls`; returns the summary dict."""
  report = reporter_lib.Printer()
  model_dir = cli.model_dir_from_flags(values)
  with _check_directories(values, model_dir, report) as reads_only:
    return _run(values, trainer_cls, report, model_dir, reads_only)


def _run(values, trainer_cls, report, model_dir, reads_only):
  """`run` once the directories are checked (and --model_dir held)."""
  checkpoint = _eval_checkpoint(values, model_dir)
  draft = cli.draft_from_flags(values, model_dir)
  # A frozen phase needs weights; an eval cadence, --mode=train_and_eval.
  has_weights = bool(values.init_checkpoint) or (
      tf.train.latest_checkpoint(model_dir) is not None)
  for line in finetune.drop_unusable(draft.config, values.mode, has_weights,
                                     cli.given_keys(values)):
    report.line(line)
  finetune.check_start(draft.config, values.mode, has_weights)
  if draft.config.runtime.deterministic:
    step_lib.make_deterministic(draft.config.train.seed)
  strategy = _strategy(values, draft.config, report)
  preemption.reinstall()  # over TensorFlow's own (multi-worker)
  source = _checked_source(values, draft.config, report)
  config = draft.lock(values, source)  # the data's class count
  report.line(source.describe())
  if values.mode != "eval":  # a batch the split and the memory hold
    plan.check_fits(config, source, strategy)
  faults.pause("delay_start")
  trainer = trainer_cls(config, model_dir, strategy, source=source,
                        reporter=report)
  if reads_only:
    trainer.leave_model_dir_as_is()
  report.line(f"Steps: {trainer.steps_choice}")
  _check_free_space(values, trainer)
  _restore_or_init(values, trainer, report, checkpoint)
  # Written once the model is initialised: a failed --init_checkpoint
  # leaves a new --model_dir as it was, so the fixed command starts afresh.
  if trainer.chief and values.mode != "eval":  # eval leaves the run as is
    config_lib.save_config(config, model_dir)
    if trainer.class_names:  # for export from a checkpoint
      tfrecord_format.write_class_names(model_dir, trainer.class_names)
  # Training and evaluation stop a signal themselves (`Trainer.train`).
  preemption.set_where(
      "during the evaluation; rerun the same command to evaluate."
      if values.mode == "eval" else
      "during training; rerun the same command to resume.")
  result = _train_and_evaluate(values, trainer, report)
  preemption.set_where(
      "after the evaluation; rerun the same command to finish."
      if values.mode == "eval" else
      f"after training, at step {trainer.step} of {trainer.total_steps}; "
      "rerun the same command to finish.")
  summary = trainer.finish(result)
  if values.export_dir and trainer.chief:
    preemption.set_where(f"during the export to {values.export_dir}; rerun "
                         "the same command to export.")
    with trainer.ema_model() as model:
      export.export_saved_model(
          model, values.export_dir, **export.serving_options(config),
          class_names=trainer.class_names, overwrite=values.overwrite_export)
    weights = ("EMA weights" if checkpoint is None else
               f"EMA weights of {checkpoint}")
    report.line(f"Exported SavedModel ({weights}) to {values.export_dir}")
  return summary


@contextlib.contextmanager
def _check_directories(values, model_dir, report):
  """Checks the directories the run writes and holds --model_dir's lock
  while it writes there; yields whether the run only reads --model_dir."""
  # --mode=eval of a run (its own config.json there) only reads the run
  # directory, which may then be read-only; a new one gets the result.
  reads_only = (values.mode == "eval" and
                run_dir.read_config(model_dir) is not None)
  if (values.mode == "eval" and not reads_only and not values.init_checkpoint
      and tf.train.latest_checkpoint(model_dir) is None):
    raise errors.MissingInputError(
        f"--mode=eval: no run in {model_dir} (no config.json, no "
        "checkpoint); check --model_dir, or give --init_checkpoint to "
        "evaluate other weights.")
  if not reads_only:
    run_dir.check_writable(model_dir, "--model_dir")
  if values.export_dir:
    run_dir.check_writable(values.export_dir, "--export_dir")
    export.check_export_dir(values.export_dir, values.overwrite_export,
                            "--export_dir", "--overwrite_export")
  # One writer at a time (runs/lock.py); readers and non-chief workers
  # (the chief writes the run) take no lock.
  writes = not reads_only and _chief_task(values)
  with (run_lock.hold(model_dir, "--model_dir", report.line) if writes
        else contextlib.nullcontext()):
    if writes:
      _remove_stale_temp(model_dir, report)
    yield reads_only


def _remove_stale_temp(model_dir, report):
  """Deletes what saves of a killed run left half-written in `model_dir`
  (the lock is held: no other run saves there); one line when any."""
  removed = checkpointer_lib.remove_stale_temp(model_dir)
  if removed:
    report.line(f"Removed {len(removed)} unfinished checkpoint save(s) of an "
                f"earlier run from {model_dir}: "
                f"{errors.first_few(removed)}")


def _chief_task(values):
  """Whether this process writes the run directory: every one but the
  non-chief workers of --strategy=multi_worker, known from TF_CONFIG
  before the strategy is built (the rule of `distribute.is_chief`)."""
  if values.strategy != "multi_worker":
    return True
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  return distribute.is_chief_task(resolver.task_type, resolver.task_id)


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
  for note in source.notes:  # files left out, images read from sub-folders
    report.line(note)
  if unreadable:
    report.line(f"Unreadable images left out ({len(unreadable)}): "
                f"{errors.first_few(unreadable, 5)}")
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


def _eval_checkpoint(values, model_dir):
  """The checkpoint prefix --checkpoint names (--mode=eval), or None for
  the latest; a misused flag or a missing checkpoint is one line."""
  name = values.checkpoint
  if name == run_dir.LATEST:
    return None
  if values.mode != "eval":
    raise errors.ConfigError(
        f"--checkpoint={name} picks the checkpoint --mode=eval evaluates; "
        f"--mode={values.mode} resumes from the latest one: drop it.")
  if values.init_checkpoint:
    raise errors.ConfigError(
        f"--checkpoint={name} and --init_checkpoint both name the weights "
        "to evaluate; give one.")
  return run_dir.checkpoint_of(model_dir, name)


def _restore_or_init(values, trainer, report, checkpoint=None):
  """Resumes from the run's latest checkpoint (`checkpoint`, when given:
  --checkpoint of --mode=eval), else starts from --init_checkpoint;
  --mode=eval without either is an error."""
  # --mode=eval with --init_checkpoint evaluates that checkpoint instead of
  # the latest one in --model_dir.
  given_eval = values.mode == "eval" and values.init_checkpoint
  restored = None if given_eval else trainer.restore(checkpoint)
  if restored:
    best = trainer.checkpointer.best
    of_best = (f" (the best {best['metric']} {best['score']:.4f})"
               if values.checkpoint == run_dir.BEST else "")
    report.line(f"Restored {restored}: step {trainer.step} of "
                f"{trainer.total_steps}{of_best}")
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
  """absl `main` body: runs, turning user errors into one line + exit 1
  and SIGTERM/SIGINT into one line + exit 143/130."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  quiet_start.quiet_info_logs(values)
  what = "the evaluation" if values.mode == "eval" else "training"
  stop = None
  with preemption.watching(f"before {what} started; rerun the same "
                           "command to start it."):
    with errors.reported(prog):
      try:
        run(values, trainer_cls)
      except preemption.Interrupted as interrupted:  # not `reported`'s 1
        stop = interrupted
  if stop is not None:
    preemption.ignore_further()  # the process exits now
    print(stop, file=sys.stderr, flush=True)
    sys.exit(stop.status)
