"""main.py's training loop: a custom tf.distribute loop (paper Algorithm 1).

Each stage gets its own input pipeline; a `train_loop` runs
`runtime.steps_per_loop` steps of the shared step (`step.make_train_step`)
per device call (each step one optimizer step, its micro-batches
accumulated inside it with train.grad_accum_steps), traced anew per stage
only where XLA needs static shapes (`Trainer.retrace_per_stage`);
checkpoints, summary.json and evaluation are `trainer.Trainer`'s. After
each call `checkpoint_point` saves when due and stops the run, saved, on
SIGTERM/SIGINT, and `eval_point` evaluates on the cadence; a call ends
where the frozen phase does (`finetune.py`), and the next takes the whole
network's step. With --deterministic the input iterator is saved in
checkpoints, so a resumed run continues the data stream where it stopped.
"""

from absl import logging
import tensorflow as tf

from effnetv2_tf.training import run_log
from effnetv2_tf.training import step as step_lib
from effnetv2_tf.training import trainer as trainer_lib

SUM = tf.distribute.ReduceOp.SUM


class CustomLoopTrainer(trainer_lib.Trainer):
  """`Trainer` whose stages run in a custom `tf.function` loop."""

  checkpoints_input = True
  _train_loop = None
  _loop_step = None  # the step `_train_loop` runs

  def _track_iterator(self, iterator, stage):
    """--deterministic: the stage's input position goes into checkpoints.

    A run resumed mid-stage then continues the data stream where the saved
    one was, instead of restarting the stage's data order. Opt-in: the
    saved state holds the shuffle and prefetch buffers (and an in-memory
    cache), which is large for ImageNet.
    """
    self.checkpointer.add(train_iterator=iterator)
    path = self.checkpointer.restored_path
    if not path or not stage.start_step < self.step < stage.end_step:
      return  # a fresh stage starts at its first element
    names = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    if not any(n.startswith("train_iterator/") for n in names):
      logging.warning("%s holds no input iterator (saved without "
                      "--deterministic): stage %d restarts its data order.",
                      path, stage.index + 1)
      return
    tf.train.Checkpoint(train_iterator=iterator).read(path).expect_partial()
    self.reporter.line(f"Restored the stage {stage.index + 1} input "
                       f"iterator from {path}")

  def _make_train_loop(self):
    """The stage's tf.function: `steps` optimizer steps per call, on device.

    A new one per stage with `retrace_per_stage`, else the first one again
    (its input has no static image size, so it does not retrace), until
    the frozen phase ends: a new one for the whole network's step.
    """
    step_fn = self.make_compiled_step()
    if self._train_loop is not None and self._loop_step is step_fn:
      return self._train_loop

    @tf.function
    def train_loop(iterator, steps):
      total = tf.constant(0.0)
      skipped = tf.constant(0, tf.int64)
      for _ in tf.range(steps):
        loss, per_replica_skipped = self.strategy.run(
            step_fn, args=(next(iterator),))
        total += self.strategy.reduce(SUM, loss, axis=None)
        skipped = tf.reduce_max(tf.stack(
            self.strategy.experimental_local_results(per_replica_skipped)))
      return total / tf.cast(steps, tf.float32), skipped

    self._train_loop, self._loop_step = train_loop, step_fn
    return train_loop

  def _run_stage(self, stage):
    step_lib.set_dropout(self.model, stage.dropout)
    iterator = iter(self.train_dataset(stage))
    if self.config.runtime.deterministic:
      self._track_iterator(iterator, stage)
    train_loop = self._make_train_loop()
    steps_per_loop = self.config.runtime.steps_per_loop
    every = self.checkpointer.every
    progress = self.progress_every
    clock = run_log.StageClock(self.global_batch)
    while self.step < stage.end_step:
      start_step = self.step
      switched = self.phase_changed()
      if switched:  # the frozen phase ended: the whole network's step
        train_loop = self._make_train_loop()
      # A call ends at the stage end, at a multiple of steps_per_loop, at
      # every checkpoint step (train.checkpoint_every is exact whatever
      # steps_per_loop is; the steps are a tensor: no retrace) and at every
      # progress step (`run_log.progress_due`); with one worker it lasts
      # about PROGRESS_SECONDS at most, so slow steps still print that
      # often (several workers' calls must end on the same steps, which
      # their clocks would not agree on), at the frozen phase's end and
      # on the evaluation cadence (`finetune.Controls.cut`). A stage's
      # first call, which may trace, is one step: a first line (and a
      # clean retrace time) early; so is the first after the switch.
      within = (clock.steps_within(run_log.PROGRESS_SECONDS)
                if self.workers == 1 else None)
      steps = 1 if clock.first_call is None or switched else min(
          steps_per_loop - start_step % steps_per_loop,
          stage.end_step - start_step,
          every - start_step % every if every else steps_per_loop,
          progress - start_step % progress, within or steps_per_loop,
          self.controls.cut(start_step, self._evaluates) or steps_per_loop)
      traces = self.traces
      clock.start()
      with self.xla_errors("the train step"):
        loss, skipped = train_loop(iterator, tf.constant(steps))
        loss = float(loss)  # waits for the device
      rate = clock.stop(steps)
      if self.traces > traces:  # the switch's trace: no images/s
        rate = None
      self.check_finite(loss, start_step, stage)
      self.record_progress(stage, loss, rate, int(skipped), start_step)
      self.checkpoint_point(start_step)
      self.eval_point(stage)
    self.save()
    return clock.stage_record(stage)
