"""What both loops record while they train: summary.json, TensorBoard, timing.

`RunLog` holds summary.json's contents (stages, numbered from 1 as the
log numbers them, loss history, eval) and the run's one TensorBoard writer
(`model_dir/train`); `StageClock` times a stage's device calls;
`progress_due` decides which device calls print a progress line; `clock`
formats the progress lines' times. The custom loop and the fit callbacks
call these, so the two drivers write the same files and print the same
lines.
"""

import math
import os
import time

import tensorflow as tf

from effnetv2_tf.runs import run_dir

# What an evaluation scores (Trainer.evaluate; precision@1 on multi-label
# data only), as summary.json's stage records and "eval" hold them.
EVAL_SCORES = ("top1", "top5", "precision@1")


# A progress line at least every PROGRESS_SECONDS of wall time and every
# PROGRESS_FRACTION of the run's steps, besides train.log_every steps.
PROGRESS_SECONDS = 30.0
PROGRESS_FRACTION = 0.1


def progress_every(log_every, total_steps):
  """Steps between progress lines: train.log_every, or a tenth of the run
  when that is fewer (a 30-step finetune: 3)."""
  return max(1, min(log_every,
                    math.ceil(total_steps * PROGRESS_FRACTION)))


def progress_due(start_step, step, every, stage_end, first_call,
                 seconds_since_line, call_seconds=0.0):
  """Whether the device call of steps start_step+1..step prints a line.

  It does at a stage's first call (a sign of life; it may trace), at the
  stage's end, when it reached a multiple of `every` (`progress_every`) and
  when waiting for the next call (as long as this one, `call_seconds`)
  would leave more than PROGRESS_SECONDS since the last line. Both loops
  end their calls on the multiples of `every` (custom loop: `steps` cut
  there; Model.fit: steps_per_execution divides it), so both print those
  steps.
  """
  return (first_call or step == stage_end or
          step // every > start_step // every or
          seconds_since_line + call_seconds > PROGRESS_SECONDS)


def clock(seconds):
  """Seconds as h:mm:ss (or m:ss under an hour), for progress lines."""
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else (
      f"{minutes}:{secs:02d}")


class StageClock:
  """Times one stage's device calls; the first one traces (and compiles)."""

  def __init__(self, global_batch):
    self.global_batch = global_batch
    self.first_call = None  # (seconds, steps)
    self.timed_seconds, self.timed_steps = 0.0, 0
    self._started = None

  def start(self):
    self._started = time.time()

  def stop(self, steps):
    """Ends a call of `steps` steps; returns its images/s (None: traced)."""
    seconds = time.time() - self._started
    if self.first_call is None:
      self.first_call = (seconds, steps)
      return None
    self.timed_seconds += seconds
    self.timed_steps += steps
    return steps * self.global_batch / seconds

  def steps_within(self, seconds):
    """The steps the stage's timed calls ran in `seconds`, at least 1;
    before a timed call, at the first call's pace (slower: it may trace);
    None before any call."""
    if self.timed_seconds:
      spent, steps = self.timed_seconds, self.timed_steps
    elif self.first_call:
      spent, steps = self.first_call
    else:
      return None
    return max(1, int(seconds * steps / max(spent, 1e-9)))

  def stage_record(self, stage):
    """summary.json's entry of `stage` (a `progressive.Stage`)."""
    first_seconds, first_steps = self.first_call
    per_step = (self.timed_seconds / self.timed_steps if self.timed_steps
                else first_seconds / first_steps)
    return dict(
        stage=stage.index + 1, image_size=stage.image_size,
        randaug_magnitude=stage.randaug_magnitude,
        mixup_alpha=stage.mixup_alpha, cutmix_alpha=stage.cutmix_alpha,
        dropout=stage.dropout, steps=stage.steps,
        images_per_sec=self.global_batch / per_step,
        retrace_seconds=max(0.0, first_seconds - per_step * first_steps))


class RunLog:
  """summary.json's contents and TensorBoard scalars.

  Only the chief writes files (none with `writes` off); every worker keeps
  the same contents.
  """

  def __init__(self, model_dir, chief, header):
    """`header`: model, dataset, preset, num_stages, total_steps and
    learning_rate_schedule (the schedule's `get_config()`) of a new
    summary."""
    self.model_dir = model_dir
    self.writes = chief  # False: nothing goes into model_dir (an eval)
    self._writer = None
    self.summary = run_dir.read_summary(model_dir) or dict(
        header, stages=[], history=[], eval=None)
    # Stages written 0-based (before issue 37) are renumbered from 1.
    stages = self.summary["stages"]
    if any(s["stage"] == 0 for s in stages):
      for s in stages:
        s["stage"] += 1
    # What this run plans from now on (a resumed run may be longer); runs
    # before issue 37 had no schedule here (plot.py draws their history).
    for key in ("num_stages", "total_steps", "learning_rate_schedule"):
      if key in header:
        self.summary[key] = header[key]

  def resume_at(self, step):
    """Drops history past `step`: summary.json is written after each
    checkpoint, so it can hold steps of one that then failed; those rerun."""
    self.summary["history"] = [h for h in self.summary["history"]
                               if h["step"] <= step]

  def write(self):
    if self.writes:
      run_dir.write_summary(self.model_dir, self.summary)

  @property
  def writer(self):
    """The TensorBoard writer (chief only), made at the first scalar."""
    if self.writes and self._writer is None:
      self._writer = tf.summary.create_file_writer(
          os.path.join(self.model_dir, "train"))
    return self._writer

  def scalars(self, step, values):
    """TensorBoard scalars {name: value} at `step` (chief only)."""
    if self.writer:
      with self.writer.as_default(step=step):
        for name, value in values.items():
          tf.summary.scalar(name, value)

  def progress(self, step, loss, learning_rate, images_per_sec):
    """History and TensorBoard scalars of one device call (or fit batch).

    `images_per_sec` is None for a stage's first call (which may trace).
    """
    self.summary["history"].append(
        {"step": step, "loss": loss, "learning_rate": learning_rate})
    values = {"loss": loss, "learning_rate": learning_rate}
    if images_per_sec is not None:
      values["images_per_sec"] = images_per_sec
    self.scalars(step, values)

  def record_stage(self, record):
    """Adds (or replaces, on a rerun) a stage's entry; writes summary.json."""
    stages = [s for s in self.summary["stages"]
              if s["stage"] != record["stage"]]
    self.summary["stages"] = sorted(stages + [record],
                                    key=lambda s: s["stage"])
    self.write()

  def last_stage_eval(self):
    """The eval scores (top1, top5, precision@1 for multi-label data) of the
    last recorded stage when it was evaluated."""
    stages = self.summary["stages"]
    if stages and "top1" in stages[-1]:
      return {k: stages[-1][k] for k in EVAL_SCORES if k in stages[-1]}
    return None

  def finish(self, step, eval_result=None):
    if eval_result is not None:
      self.summary["eval"] = eval_result
    self.summary["final_step"] = step
    self.write()
    return self.summary
