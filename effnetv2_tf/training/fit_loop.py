"""main_tf2.py's training loop: the run of `trainer.Trainer`, through Model.fit.

Data, model, optimizer, EMA, checkpoint format, evaluation with the EMA
weights and summary.json are inherited from `Trainer`, so either driver
resumes, evaluates, finetunes from and exports the other's checkpoints.
What changes is the loop: one `fit` call per progressive stage, with
`initial_epoch`/`epochs` so epoch numbers run on across stages (the
learning rate follows `optimizer.iterations`, so it does too), and
`FitModel.train_step` runs the custom loop's own step
(`step.make_train_step`: kernel-only weight decay, soft mixup/CutMix
targets, EMA update; train.grad_accum_steps' micro-batches accumulate
inside it, so fit's steps, epochs and callbacks count optimizer steps, as
the custom loop does). The stage's dropout is set on the model's rate
variable; the train function is rebuilt per stage only where XLA needs
static shapes (`Trainer.retrace_per_stage`). Progress,
TensorBoard scalars and stage timings go through the same `run_log`
helpers as the custom loop's, periodic saves and stops on SIGTERM/SIGINT
through the same `Trainer.checkpoint_point` after each execution; the
progress lines (loss, learning rate,
images/s, ETA, elapsed time; main.py's, at its steps: executions end on
the steps `run_log.progress_due` reports) go to the trainer's reporter in
place of fit's own bar, which knows neither the stages nor the run's end.

Stages are whole fit epochs (`progressive.fit_epoch_steps`); only the
run's last epoch may be cut short, by `StopAtStep`. The finetuning
controls (`finetune.py`): executions end where the frozen phase does,
whose `PhaseSwitch` gives fit the whole network's step for the rest of
the same fit call (the data stream goes on), and on the evaluation
cadence, which `TrainingEval` runs.
"""

import math

from absl import logging
import keras
import tensorflow as tf

from effnetv2_tf.training import distribute
from effnetv2_tf.training import run_log
from effnetv2_tf.training import step as step_lib
from effnetv2_tf.training import trainer as trainer_lib


class LatestValue(keras.metrics.Metric):
  """The last value seen, summed over replicas when read (skipped images).

  Not in `FitModel.metrics`, so it is not a fit log value and not
  reset at epoch starts; `StageRecorder` reads it.
  """

  def __init__(self, name="latest"):
    super().__init__(name=name)
    self.value = self.add_variable((), "zeros", dtype="int64")

  def update_state(self, value):  # pylint: disable=arguments-differ
    self.value.assign(tf.cast(value, "int64"))

  def result(self):
    return tf.convert_to_tensor(self.value)  # sums replicas when read


class FitModel(keras.Model):
  """The network for `fit`: its train_step is the custom loop's step."""

  def __init__(self, net, step_fn, replicas, multi_worker=False):
    super().__init__(name="fit_model")
    self.net = net
    self.step_fn = step_fn  # replaced per stage by FitTrainer
    self._replicas = replicas
    self._multi_worker = multi_worker
    self.loss_tracker = keras.metrics.Mean(name="loss")
    self.skipped = LatestValue(name="skipped")
    self.built = True  # `net` is built; nothing for fit to build symbolically

  def call(self, images, training=False):
    return self.net(images, training=training)

  @property
  def metrics(self):
    return [self.loss_tracker]

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    # Keras' TF trainer, under any tf.distribute strategy, pulls one batch
    # and `strategy.reduce`s it to build the model symbolically. Here `net`,
    # the optimizer and the metrics are all built before `fit`, so there is
    # nothing to build; and that reduce of our dict batches fails under
    # MultiWorkerMirroredStrategy ("Attempt to convert a value ({'images':
    # PerReplica...}) to a Tensor", Keras 3.15, measured with 2 workers).
    # Skipping it also leaves the stage's input stream untouched.
    del iterator, data_batch

  def train_step(self, data):
    loss, skipped = self.step_fn(data)
    # `loss` is this replica's share of the global-batch mean.
    self.loss_tracker.update_state(loss * self._replicas)
    self.skipped.update_state(skipped)
    loss = self.loss_tracker.result()
    if self._multi_worker:
      # Across workers Keras averages logs with strategy.reduce(axis=0),
      # which a scalar has not (tensorflow/tensorflow#72388): give it one.
      loss = tf.reshape(loss, [1])
    return {"loss": loss}


class _ExecutionCallback(keras.callbacks.Callback):
  """Knows the run's step and time when the current execution began."""

  def __init__(self, trainer):
    super().__init__()
    self._trainer = trainer
    self._start_step = 0

  def on_train_batch_begin(self, batch, logs=None):
    self._start_step = self._trainer.step


class StopAtStep(keras.callbacks.Callback):
  """Ends `fit` once the optimizer has taken `end_step` steps."""

  def __init__(self, trainer, end_step):
    super().__init__()
    self._trainer = trainer
    self._end_step = end_step

  def on_train_batch_end(self, batch, logs=None):
    if self._trainer.step >= self._end_step:
      self.model.stop_training = True


class NanGuard(_ExecutionCallback):
  """Stops with `TrainingError` naming the step and stage on a NaN/inf loss.

  Keras' TerminateOnNaN only sets stop_training, and the epoch-end
  checkpoint would then save the bad weights; raising keeps the last good
  checkpoint the latest. Put it before `StageCheckpoint`.
  """

  def __init__(self, trainer, stage):
    super().__init__(trainer)
    self._stage = stage

  def on_train_batch_end(self, batch, logs=None):
    self._trainer.check_finite(float(logs["loss"]), self._start_step,
                               self._stage)


class StageCheckpoint(_ExecutionCallback):
  """Saves the run checkpoint (model, optimizer, EMA) at every epoch end.

  Unlike keras.callbacks.BackupAndRestore, which deletes its backup when a
  `fit` ends and restores only the epoch, this keeps the run's
  CheckpointManager checkpoints across fit calls; the step in them tells a
  rerun its stage and epoch. After each execution `checkpoint_point` adds
  the checkpointer's mid-epoch saves (steps, wall time) and, on a signal,
  saves and raises `preemption.Interrupted` out of `fit` (as NanGuard
  raises its error).
  """

  def on_train_batch_end(self, batch, logs=None):
    self._trainer.checkpoint_point(self._start_step)

  def on_epoch_end(self, epoch, logs=None):
    self._trainer.save()
    self._trainer.checkpoint_point()


class TrainingEval(keras.callbacks.Callback):
  """The evaluation cadence's evaluations after executions
  (`Trainer.eval_point`); a signal during one raises out of `fit`."""

  def __init__(self, trainer, stage):
    super().__init__()
    self._trainer = trainer
    self._stage = stage

  def on_train_batch_end(self, batch, logs=None):
    self._trainer.eval_point(self._stage)


class PhaseSwitch(keras.callbacks.Callback):
  """Where the frozen phase ends within a stage, the next executions of
  the same `fit` run the whole network's step: a new train function (fit
  calls `model.train_function` anew each execution), the one retrace."""

  def __init__(self, trainer, stage):
    super().__init__()
    self._trainer = trainer
    self._stage = stage

  def on_train_batch_end(self, batch, logs=None):
    trainer = self._trainer
    if trainer.phase_changed() and trainer.step < self._stage.end_step:
      self.model.step_fn = trainer.make_compiled_step()
      self.model.make_train_function(force=True)


class StageRecorder(_ExecutionCallback):
  """Timings (images/s, retrace seconds) and the loss history of a stage."""

  def __init__(self, trainer, stage):
    super().__init__(trainer)
    self._stage = stage
    self.clock = run_log.StageClock(trainer.global_batch)
    self._traces = 0

  def on_train_batch_begin(self, batch, logs=None):
    super().on_train_batch_begin(batch, logs)
    self._traces = self._trainer.traces
    self.clock.start()

  def on_train_batch_end(self, batch, logs=None):
    trainer = self._trainer
    rate = self.clock.stop(trainer.step - self._start_step)
    if trainer.traces > self._traces:  # the frozen phase's end: traced
      rate = None
    trainer.record_progress(self._stage, float(logs["loss"]), rate,
                            int(self.model.skipped.result()),
                            self._start_step)


class FitTrainer(trainer_lib.Trainer):
  """`Trainer` whose stages run through `keras.Model.fit`."""

  def __init__(self, config, model_dir, strategy, source=None,
               reporter=None):
    # fit cannot save its input iterator (`checkpoints_input` stays False).
    super().__init__(config, model_dir, strategy, whole_epochs=True,
                     source=source, reporter=reporter)
    with strategy.scope():
      self.fit_model = FitModel(
          self.model, self.make_step_fn(), self.replicas,
          multi_worker=distribute.num_workers(strategy) > 1)
      # XLA is runtime.jit_compile's choice, applied to the step itself
      # (`make_compiled_step`); Keras' "auto" would turn it on for GPUs.
      self.fit_model.compile(optimizer=self.optimizer, jit_compile=False)
    if config.runtime.deterministic:
      logging.info("--deterministic: fit does not checkpoint its input "
                   "iterator, so a resumed stage restarts its data order "
                   "(main.py resumes it exactly).")

  def _run_stage(self, stage):
    step_lib.set_dropout(self.model, stage.dropout)
    execution = self._execution_steps(stage)
    # With retrace_per_stage a new step (new size, compiled again under
    # XLA) in a new train function; otherwise the step and the train
    # function of the first stage, unless the execution length (a
    # constant of Keras' traced loop) or the phase (`finetune.py`)
    # changed.
    step_fn = self.make_compiled_step()
    retrace = (step_fn is not self.fit_model.step_fn or
               execution != self.fit_model.steps_per_execution)
    self.fit_model.steps_per_execution = execution
    self.fit_model.step_fn = step_fn
    every = self.checkpointer.every
    if every and every % execution:
      self.reporter.line(
          f"train.checkpoint_every={every}: fit checks it after each "
          f"{execution}-step execution, so a save comes at the first "
          f"execution end past each multiple of {every}.")
    if retrace:
      self.fit_model.train_function = None
    recorder = StageRecorder(self, stage)
    # NanGuard first (no recording or saving of a NaN), the recorder before
    # the checkpoint (summary.json, saved with it, then has its step), the
    # phase switch last (its line after the step's progress line).
    callbacks = [StopAtStep(self, stage.end_step), NanGuard(self, stage),
                 recorder, StageCheckpoint(self), TrainingEval(self, stage),
                 PhaseSwitch(self, stage)]
    with self.strategy.scope(), self.xla_errors("the train step"):
      self.fit_model.fit(
          self.train_dataset(stage),
          initial_epoch=self.step // self.epoch_steps,
          epochs=math.ceil(stage.end_step / self.epoch_steps),
          steps_per_epoch=self.epoch_steps, callbacks=callbacks,
          shuffle=False, verbose=0)  # StageRecorder reports the progress
    self.save()
    return recorder.clock.stage_record(stage)

  def _execution_steps(self, stage):
    """fit's steps_per_execution in `stage`: the greatest common divisor
    of runtime.steps_per_loop, the epoch, the stage's remaining steps,
    `progress_every` and the finetuning controls' steps (executions end
    exactly on epoch and stage ends, on the steps whose progress lines
    main.py prints, where the frozen phase ends and on the evaluation
    cadence); 1 with mirrored replicas."""
    execution = math.gcd(
        self.config.runtime.steps_per_loop, self.epoch_steps,
        stage.end_step - self.step, self.progress_every,
        *self.controls.execution_divisors(self.step, stage.end_step,
                                          self._evaluates))
    if execution > 1 and self.replicas > 1 and not isinstance(
        self.strategy, tf.distribute.TPUStrategy):
      # Keras 3's multi-step loop puts apply_gradients' merge_call inside a
      # tf.cond, which fails under MirroredStrategy ("You must feed a value
      # for placeholder tensor", keras-team/keras#19246; measured here with
      # 2 replicas). One step per execution works.
      logging.warning("steps_per_execution %d -> 1 with %d mirrored "
                      "replicas (keras-team/keras#19246).", execution,
                      self.replicas)
      execution = 1
    return execution
