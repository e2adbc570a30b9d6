"""Fault injection for tests: crash, fail or slow down a run on purpose.

Set the environment variable EFFNETV2_FAULT=KIND@STEP, e.g. kill_in_save@4:

  kill_after_save  SIGKILL as soon as the checkpoint of STEP is complete.
  kill_in_save     SIGKILL after the checkpoint files of STEP are written but
                   before the `checkpoint` state file names them, the moment
                   where a preemption could do the most harm.
  disk_full        the save of STEP fails inside TensorFlow's file writer: the
                   process' file-size limit (RLIMIT_FSIZE) is 0 bytes during
                   that save, so the write fails where a full disk fails it
                   (with EFBIG, "File too large", instead of ENOSPC).
  delay_save       the save of STEP sleeps DELAY_SECONDS where kill_in_save
                   kills: a window for signals sent during a save.
  delay_eval       the evaluation at STEP sleeps DELAY_SECONDS before its
                   first batch.
  delay_start      the driver sleeps DELAY_SECONDS once the data is read,
                   before it builds the model (STEP 0).

A delay first prints "EFFNETV2_FAULT: KIND at step STEP", so a test knows
when to send its signal. Unset, as outside tests, every hook here does
nothing.
"""

import contextlib
import os
import signal
import time

import tensorflow as tf

ENV = "EFFNETV2_FAULT"
KINDS = ("kill_after_save", "kill_in_save", "disk_full", "delay_save",
         "delay_eval", "delay_start")
DELAY_SECONDS = 3.0


def _fault_at(step):
  """The fault kind injected at `step`, or None."""
  spec = os.environ.get(ENV)
  if not spec:
    return None
  kind, _, at = spec.partition("@")
  if kind not in KINDS or not at.isdigit():
    raise ValueError(f"{ENV}={spec!r}: expected KIND@STEP with KIND one of "
                     f"{', '.join(KINDS)}.")
  return kind if int(at) == step else None


def _kill(_=None):
  os.kill(os.getpid(), signal.SIGKILL)


def pause(kind, step=0):
  """Sleeps DELAY_SECONDS when the fault is `kind`@`step` (a delay kind)."""
  if _fault_at(step) == kind:
    print(f"{ENV}: {kind} at step {step}", flush=True)
    time.sleep(DELAY_SECONDS)  # a signal handler that returns resumes it


@contextlib.contextmanager
def checkpoint_save(step):
  """Wraps the save of `step`; yields the CheckpointOptions to save with."""
  kind = _fault_at(step)
  options, limit = None, None
  if kind == "kill_in_save":
    # Write callbacks run after the files are written; CheckpointManager's
    # own callback, which records them in the state file, runs after ours.
    options = tf.train.CheckpointOptions(experimental_write_callbacks=[_kill])
  elif kind == "delay_save":
    options = tf.train.CheckpointOptions(experimental_write_callbacks=[
        lambda _: pause(kind, step)])
  elif kind == "disk_full":
    import resource  # pylint: disable=g-import-not-at-top  (POSIX only)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, limit[1]))
  try:
    yield options
  finally:
    if limit is not None:
      resource.setrlimit(resource.RLIMIT_FSIZE, limit)
  if kind == "kill_after_save":
    _kill()
