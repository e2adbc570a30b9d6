"""A run's checkpoints: save under the step, keep the latest few, restore.

`Checkpointer` holds the `tf.train.Checkpoint` of the run's objects (model,
optimizer, EMA, noise state; main.py's input iterator with
--deterministic) and its `CheckpointManager`. Only the chief saves into the
run directory; under tf.distribute every worker must save, so the others
write into scratch directories that `remove_scratch` deletes at the end.
`due` says when the loops save besides stage ends: every
`train.checkpoint_every` steps and `train.checkpoint_minutes` of wall time
after the last save, so a kill loses at most that. `keep_best` keeps the
checkpoint of the best evaluation so far in `best/` (train.keep_best; the
reference's --archive_ckpt, efficientnetv2/main.py L404-405 and
utils.py:archive_ckpt), for `--checkpoint=best`.
"""

import errno
import json
import math
import os
import time

from absl import logging
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf import fileio
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import faults


class TrainingError(errors.UserError, RuntimeError):
  """Training cannot go on (e.g. a non-finite loss); says step and stage."""


class CheckpointError(TrainingError):
  """A checkpoint could not be written (e.g. the disk is full)."""


CHECKPOINT_NAME = run_dir.CHECKPOINT_NAME  # ckpt-<step> (`Checkpointer.path`)
# TensorFlow writes a checkpoint's shards into `<prefix>_temp/` (a
# `_temp_<id>` suffix elsewhere) and merges them into the prefix; a process
# killed meanwhile leaves that folder behind.
_TEMP_PATTERN = f"{CHECKPOINT_NAME}-*_temp*"
# Why a write failed, by errno: no permission, or no room left (EFBIG: the
# file-size limit, the fault tests' stand-in for a full disk).
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def remove_stale_temp(model_dir):
  """Deletes the `ckpt-*_temp*` leftovers of saves that a killed run left
  in `model_dir`; returns their names, sorted.

  Only the holder of the run directory's lock (runs/lock.py) may call it:
  no other process saves there meanwhile, so none of them is in progress.
  """
  return [os.path.relpath(path, model_dir) for path in sorted(
      tf.io.gfile.glob(os.path.join(model_dir, _TEMP_PATTERN)) +
      tf.io.gfile.glob(os.path.join(model_dir, run_dir.BEST, _TEMP_PATTERN)))
          if _remove(path)]


def _remove(path):
  """Deletes file or folder `path`; whether it could (else a warning)."""
  try:
    if tf.io.gfile.isdir(path):
      tf.io.gfile.rmtree(path)
    else:
      tf.io.gfile.remove(path)
  except (OSError, tf.errors.OpError) as err:
    logging.warning("Could not remove %s: %s", path, err)
    return False
  return True


def _errno_of(err):
  """The errno behind a failed write (OSError or tf.errors.OpError, whose
  message carries the system's text for it), or None."""
  if isinstance(err, OSError) and err.errno:
    return err.errno
  if isinstance(err, tf.errors.PermissionDeniedError):
    return errno.EACCES
  text = getattr(err, "message", "")
  for code in _NOT_WRITABLE + _NO_SPACE:
    if os.strerror(code) in text:
      return code
  return None


def _remedy(err, directory):
  """What to do about the failed write `err` into `directory`."""
  code = _errno_of(err)
  if code in _NOT_WRITABLE:
    return f"make {directory} writable"
  if code in _NO_SPACE:
    return "free disk space"
  return "fix the cause"


class Checkpointer:
  """Saves, keeps and restores the checkpoints of `objects` in `model_dir`.

  `keep`: how many checkpoints stay; `every`: save every that many steps
  and `minutes`: that much wall time after the last save (`due`; 0: only
  where the loop saves anyway); `task_id`: a worker other than the chief
  (saves into `model_dir/worker_tmp_<task_id>`); `clock`: seconds, for
  tests. `keep_best` saves `objects` (not those `add`ed later) into
  `best/`.
  """

  def __init__(self, model_dir, objects, keep, every=0, minutes=0.0,
               task_id=None, clock=time.monotonic):
    self.model_dir = model_dir
    self.every = every
    self.minutes = minutes
    self._clock = clock
    self._last_save = clock()  # or the start: the time rule's origin
    self.directory = model_dir if task_id is None else os.path.join(
        model_dir, f"worker_tmp_{task_id}")
    self.restored_path = None  # the checkpoint `restore` read, if any
    self._checkpoint = tf.train.Checkpoint(**objects)
    self._manager = tf.train.CheckpointManager(
        self._checkpoint, self.directory, max_to_keep=keep,
        checkpoint_name=CHECKPOINT_NAME)
    # The weights to keep, without an input iterator (`add`): the best
    # checkpoint is for evaluation and export, not for resuming.
    self._best_checkpoint = tf.train.Checkpoint(**objects)
    # Every worker reads the chief's record, so all take the same decision
    # (and all join a save, whose variable reads may be collectives).
    self._best = run_dir.read_best(model_dir)

  @property
  def latest(self):
    """The latest checkpoint's path (this worker's), or None."""
    return self._manager.latest_checkpoint

  @property
  def checkpoints(self):
    """The kept checkpoints' paths, oldest first."""
    return list(self._manager.checkpoints)

  @property
  def best(self):
    """The best checkpoint's record (step, metric, score, checkpoint: its
    name in best/), or None."""
    return None if self._best is None else dict(self._best)

  def add(self, **objects):
    """Saves (and restores) `objects` too from now on."""
    for name, value in objects.items():
      setattr(self._checkpoint, name, value)

  def due(self, start_step, step):
    """Whether steps start_step+1..step crossed a multiple of `every`, or
    `minutes` passed since the last save (or since this was made)."""
    by_steps = bool(self.every) and (
        step // self.every > start_step // self.every)
    return by_steps or bool(self.minutes) and (
        self._clock() - self._last_save >= 60 * self.minutes)

  def path(self, step):
    """The run's checkpoint of `step` (the chief's, whichever worker)."""
    return os.path.join(self.model_dir, f"{CHECKPOINT_NAME}-{step}")

  def restore(self, path=None):
    """Restores `path` or the latest checkpoint; returns the path or None.

    Every worker restores the chief's latest checkpoint (the others save
    only into scratch directories).
    """
    path = path or tf.train.latest_checkpoint(self.model_dir)
    if path:
      self._checkpoint.restore(path).expect_partial()
      self.restored_path = path
    return path

  def save(self, step, then=None):
    """Checkpoints `step` (once); raises CheckpointError.

    `then` (summary.json) runs after the files are written, inside the same
    error handling. TensorFlow writes the files under a temporary name and
    only then records them in the `checkpoint` state file, so a kill or a
    failed write mid-save leaves the previous checkpoint the latest.
    """
    latest = self.latest
    if latest and latest.endswith(f"-{step}"):
      self._last_save = self._clock()
      return
    try:
      with faults.checkpoint_save(step) as options:
        self._manager.save(checkpoint_number=step, options=options)
        if then is not None:
          then()
      self._last_save = self._clock()
    except (OSError, tf.errors.OpError) as err:
      self._remove_partial_save(
          f"{self.directory}/{CHECKPOINT_NAME}-{step}")
      # The latest checkpoint is the previous one, or this step's when
      # only `then` failed.
      raise self._error(err, "the checkpoint", step, self.directory
                        ) from None

  def _error(self, err, what, step, directory):
    """The CheckpointError of the failed write `err` of `what` of `step`
    into `directory`."""
    reason = getattr(err, "message", str(err)).rsplit("; ", 1)[-1]
    return CheckpointError(
        f"Could not write {what} of step {step} to {directory}: "
        f"{reason.split(' [Op:')[0]}. The latest checkpoint "
        f"({self.latest or 'none'}) is kept; {_remedy(err, directory)} and "
        "rerun the same command to resume from it.")

  def keep_best(self, step, score, metric):
    """Keeps the checkpoint of `step` in best/ when `score` (of `metric`,
    higher is better) is at least the best so far (a tie keeps the later
    step, as the reference's utils.archive_ckpt L245 keeps only a worse
    score out); returns whether it did. Raises CheckpointError.

    Writes best/ckpt-<step>, then best.json (step, metric, score and the
    checkpoint's name), then best/'s `checkpoint` state file, and only then
    deletes the previous best, so best.json names a whole checkpoint
    whenever a save fails or is killed. Every worker must call it (the
    others write into their scratch directory).
    """
    score = float(score)
    if not math.isfinite(score) or (
        self._best is not None and score < self._best["score"]):
      return False
    directory = os.path.join(self.directory, run_dir.BEST)
    name = f"{CHECKPOINT_NAME}-{step}"
    record = {"step": int(step), "metric": metric, "score": score,
              "checkpoint": name}
    try:
      tf.io.gfile.makedirs(directory)
      self._best_checkpoint.write(os.path.join(directory, name))
      fileio.write_atomic(os.path.join(directory, run_dir.BEST_FILENAME),
                          json.dumps(record, indent=2))
      self._best = record
      # TensorFlow's state file (CheckpointState as text), for
      # tf.train.latest_checkpoint(best/) and --init_checkpoint=RUN/best.
      fileio.write_atomic(
          os.path.join(directory, "checkpoint"),
          f'model_checkpoint_path: "{name}"\n'
          f'all_model_checkpoint_paths: "{name}"\n')
    except (OSError, tf.errors.OpError) as err:
      if self._best is not record and (
          self._best is None or self._best["checkpoint"] != name):
        self._remove_partial_save(os.path.join(directory, name))
      raise self._error(err, "the best checkpoint", step, directory
                        ) from None
    for path in tf.io.gfile.glob(os.path.join(directory,
                                              f"{CHECKPOINT_NAME}-*")):
      if not os.path.basename(path).startswith(name + "."):
        _remove(path)
    logging.info("Kept the checkpoint of step %d in %s: %s %.4f.", step,
                 directory, metric, score)
    return True

  def _remove_partial_save(self, prefix):
    """Deletes what a failed save of `prefix` left (never a kept one)."""
    if prefix in self._manager.checkpoints:
      return
    for path in tf.io.gfile.glob(prefix + ".*") + tf.io.gfile.glob(
        prefix + "_temp*"):
      _remove(path)

  def remove_scratch(self):
    """Deletes a worker's scratch directory (never the chief's run)."""
    if self.directory != self.model_dir and tf.io.gfile.exists(
        self.directory):
      tf.io.gfile.rmtree(self.directory)
