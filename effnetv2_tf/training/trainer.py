"""What both training loops share (paper Algorithm 1), around their stage loop.

Read top to bottom: `Trainer.__init__` builds data source, stage plan,
model, optimizer, EMA and its `checkpointer.Checkpointer` under the
strategy; `train` walks the progressive stages, each with its own input
pipeline and a freshly traced step where XLA needs static shapes (TPUs,
jit_compile: exactly one trace per stage), else one step traced with an
unknown image size for all stages (`xla.resolve_retrace`); the dropout rate
reaches either through a variable; `evaluate` runs the padded eval pipeline
with the EMA weights. Status lines go to the caller's reporter
(`reporter`). Between device calls the loops ask `checkpoint_point`,
which saves on the checkpointer's cadence and stops the run, saved, when a
signal asked for it (`preemption`). A subclass runs one stage (`_run_stage`):
`custom_loop.CustomLoopTrainer` (main.py) and `fit_loop.FitTrainer`
(main_tf2.py). The finetuning controls (`finetune.py`): the step of the
current phase (frozen backbone or whole network, `make_compiled_step`),
and after each device call `eval_point`, the evaluation cadence.
"""

import concurrent.futures
import contextlib
import math
import signal
import time

from absl import logging
import numpy as np
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf.data import pipeline
from effnetv2_tf.data import sources
from effnetv2_tf.models import ema as ema_lib
from effnetv2_tf.models import names
from effnetv2_tf.runs import checkpoints
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import checkpointer as checkpointer_lib
from effnetv2_tf.training import distribute
from effnetv2_tf.training import faults
from effnetv2_tf.training import finetune
from effnetv2_tf.training import optim
from effnetv2_tf.training import preemption
from effnetv2_tf.training import progressive
from effnetv2_tf.training import reporter as reporter_lib
from effnetv2_tf.training import run_log
from effnetv2_tf.training import step as step_lib
from effnetv2_tf.training import xla

SUM = tf.distribute.ReduceOp.SUM
# The eval top-1's TensorBoard name (the reference's), which train.keep_best
# scores.
TOP1_SCALAR = "eval/acc_top1"


def variable_bytes(variables):
  """The bytes `variables` (Keras or TensorFlow) hold."""
  return sum(math.prod(v.shape) * tf.as_dtype(v.dtype).size
             for v in variables)


def check_batches(config, replicas, bn_group_size=1):
  """Raises ConfigError (one line) unless both batch sizes split evenly
  over `replicas` and the per-replica training batch into
  train.grad_accum_steps micro-batches, and accumulation keeps batch norm
  per replica (`bn_group_size` 1): pooled statistics all-reduce inside
  the micro-batch loop, a synchronization in control flow that
  tf.distribute refuses (`merge_call`)."""
  for key, batch in (("train.batch_size", config.train.batch_size),
                     ("eval.batch_size", config.eval.batch_size)):
    if batch % replicas:
      raise errors.ConfigError(
          f"{key}={batch} is not divisible by the {replicas} replicas.")
  per_replica = config.train.batch_size // replicas
  accum = config.train.grad_accum_steps
  if per_replica % accum:
    raise errors.ConfigError(
        f"train.grad_accum_steps={accum} does not divide the per-replica "
        f"batch {per_replica} (train.batch_size={config.train.batch_size} "
        f"over {replicas} replicas); set it to a divisor of {per_replica}.")
  if accum > 1 and bn_group_size != 1:
    raise errors.ConfigError(
        f"train.grad_accum_steps={accum} needs batch norm per replica, not "
        f"pooled over {bn_group_size} replicas: set "
        "runtime.bn_group_size=1 (the micro-batch loop cannot all-reduce "
        "statistics).")


# Raised by the trainer and its checkpointer; named here for the callers.
TrainingError = checkpointer_lib.TrainingError
CheckpointError = checkpointer_lib.CheckpointError


class Trainer:
  """Owns the model, optimizer, EMA and checkpoints of one run.

  `whole_epochs`: plan stages of whole `progressive.fit_epoch_steps`
  epochs (Model.fit); otherwise any step count. `source`: the config's
  `sources.Source` when the caller has built (and checked) it already.
  `reporter`: where status lines go (`reporter.Printer` when None).
  """

  # --deterministic saves the input iterator in checkpoints (main.py only).
  checkpoints_input = False

  def __init__(self, config, model_dir, strategy, whole_epochs=False,
               source=None, reporter=None):
    self.config = config
    self.model_dir = model_dir
    self.strategy = strategy
    self.reporter = reporter or reporter_lib.Printer()
    self.chief = distribute.is_chief(strategy)
    self.workers = distribute.num_workers(strategy)
    self.replicas = strategy.num_replicas_in_sync
    self._check_input_checkpoints()
    (self.jit_compile, self.retrace_per_stage, self.bn_group_size,
     self.steps_choice) = self._step_options()
    self.global_batch = config.train.batch_size
    check_batches(config, self.replicas, self.bn_group_size)
    self.source = source or sources.from_config(config)
    self.num_classes = self.source.num_classes
    self.steps_per_epoch, self.total_steps, self.epoch_steps = (
        self._step_counts(whole_epochs))
    self.controls = self._controls()
    self.stages = progressive.plan(config, self.total_steps,
                                   self.steps_per_epoch, self.epoch_steps)
    self.preprocessing = run_dir.preprocessing_of(config)
    self.train_input = self._train_input()
    with strategy.scope():
      self.model, self.schedule, self.optimizer, self.ema = (
          self._build_model_and_optimizer())
    self.checkpointer = self._make_checkpointer()
    self._train_started = time.time()
    self._skip_hint_shown = False
    self.traces = 0  # train-step traces, both loops (`make_compiled_step`)
    self._traces_before_stage = 0
    self._inputs_ahead = {}  # stage index -> Future of its training input
    self.step_function = None  # the current stage's (compiled) step
    self._eval_loop = None  # `_make_eval_loop`'s, made at the first eval
    self._step_frozen = None  # whether it is the frozen backbone's
    self._evaluates = False  # evaluations during training (`train_stage`)
    self._sum_over_workers = None  # `_agreed`'s all-reduce, made at need
    # (stage, whether a cadence evaluation) while one evaluates in `train`.
    self._training_stage = None
    self.progress_every = run_log.progress_every(config.train.log_every,
                                                 self.total_steps)
    self._last_line = time.time()  # of the last progress line
    self.log = run_log.RunLog(model_dir, self.chief, {
        "model": config.model.name, "dataset": config.data.dataset,
        "preset": ("random_resize" if config.progressive.random_resize
                   else config.progressive.preset),
        "num_stages": len(self.stages), "total_steps": self.total_steps,
        "learning_rate_schedule": self.schedule.get_config()})

  # -------------------------------------------------------------- building
  def _check_input_checkpoints(self):
    """--deterministic needs an input iterator checkpoints can save."""
    if (self.config.runtime.deterministic and self.checkpoints_input
        and distribute.distributes_input(self.strategy)):
      raise TrainingError(
          f"--deterministic: {type(self.strategy).__name__} feeds replicas "
          "through a tf.distribute DistributedIterator, which checkpoints "
          "cannot save (tensorflow/tensorflow#56372), so a resumed run "
          "could not continue the input where it stopped. Use it with one "
          "device (the default strategy), or main_tf2.py, whose resumed "
          "stages restart their data order.")

  def _step_options(self):
    """jit_compile, retrace_per_stage, bn_group_size and the drivers'
    "Steps: ..." line saying how the steps run."""
    runtime, strategy = self.config.runtime, self.strategy
    jit_compile, xla_choice = xla.resolve(runtime.jit_compile, strategy)
    retrace, retrace_choice = xla.resolve_retrace(
        runtime.retrace_per_stage,
        jit_compile or isinstance(strategy, tf.distribute.TPUStrategy))
    bn_group_size, bn_choice = distribute.bn_group_size(
        runtime.bn_group_size, strategy)
    return (jit_compile, retrace, bn_group_size,
            f"{xla_choice}; {retrace_choice}; {bn_choice}")

  def _step_counts(self, whole_epochs):
    """steps_per_epoch, total_steps and the steps stages are whole
    multiples of (an epoch with `whole_epochs`, else 1)."""
    # sources.check asks training data of every mode but eval; without
    # it (validation files alone) the step counts only label eval's line.
    train_examples = (self.source.num_examples("train") if "train" in
                      self.source.split_sizes else 0)
    steps_per_epoch, total_steps = progressive.step_counts(
        self.config, train_examples, self.global_batch)
    epoch_steps = (progressive.fit_epoch_steps(
        self.config, steps_per_epoch, total_steps) if whole_epochs else 1)
    return steps_per_epoch, total_steps, epoch_steps

  def _controls(self):
    """The frozen phase and evaluation cadence (`finetune.Controls`); none
    without training data (--mode=eval of validation files alone)."""
    if "train" not in self.source.split_sizes:
      return finetune.Controls()
    return finetune.controls(self.config, self.steps_per_epoch,
                             self.total_steps)

  def _train_input(self):
    """The per-example training preprocessing of every stage."""
    data = self.config.data
    return pipeline.TrainInput(
        self.preprocessing, augname=data.augname or None,
        num_layers=data.num_layers,
        augment_arithmetic=data.augment_arithmetic,
        label_smoothing=self.config.train.label_smoothing,
        shuffle_buffer=data.shuffle_buffer, cache=data.cache)

  def _build_model_and_optimizer(self):
    """Model (first stage's dropout), schedule, optimizer and EMA; under
    the strategy's scope."""
    train = self.config.train
    model = run_dir.model_from_config(
        self.config.model, self.num_classes,
        dropout_rate=self.stages[0].dropout,
        bn_group_size=self.bn_group_size)
    step_lib.schedule_dropout(model)
    schedule = optim.build_schedule(train, self.global_batch,
                                    self.steps_per_epoch, self.total_steps)
    optimizer = optim.build_optimizer(train, schedule, model=model)
    optimizer.build(model.trainable_variables)
    ema = ema_lib.ExponentialMovingAverage(model, train.ema_decay)
    return model, schedule, optimizer, ema

  def _make_checkpointer(self):
    """The run's checkpoints: model, optimizer, EMA and noise state."""
    # Keras keeps the dropout/stochastic-depth noise state in seed generator
    # variables that Model weights leave out; saved so a resumed run draws
    # the noise an uninterrupted one would.
    rng = [v for v in self.model.variables
           if v.path.endswith("seed_generator_state")]
    return checkpointer_lib.Checkpointer(
        self.model_dir,
        dict(model=self.model, optimizer=self.optimizer, ema=self.ema,
             rng=rng),
        keep=self.config.train.keep_checkpoints,
        every=self.config.train.checkpoint_every,
        minutes=self.config.train.checkpoint_minutes,
        task_id=(None if self.chief else
                 self.strategy.cluster_resolver.task_id))

  @property
  def step(self):
    return int(self.optimizer.iterations.numpy())

  @property
  def summary(self):
    """summary.json's contents so far."""
    return self.log.summary

  @property
  def class_names(self):
    """The source's class names in label order (may be empty)."""
    return self.source.class_names

  def leave_model_dir_as_is(self):
    """--mode=eval of a run: summary.json and TensorBoard stay untouched
    (the result is printed and returned)."""
    self.log.writes = False

  def describe(self):
    """The line printed before training."""
    data = self.config.data
    dataset = data.dataset + (f" ({data.dataset_cfg})"
                              if data.dataset_cfg != data.dataset else "")
    return (f"Training {self.config.model.name} on {dataset}: "
            f"{self.total_steps} steps ({self.steps_per_epoch}/epoch) at "
            f"batch {self.global_batch}{self._accumulation()}, "
            f"{len(self.stages)} "
            f"stage{'s' if len(self.stages) > 1 else ''}, "
            f"model_dir {self.model_dir}")

  def _accumulation(self):
    """`describe`'s " (K micro-batches of M per replica)", or "" (K = 1)."""
    accum = self.config.train.grad_accum_steps
    if accum == 1:
      return ""
    micro = self.global_batch // self.replicas // accum
    return f" ({accum} micro-batches of {micro} per replica)"

  def init_from(self, path, whole=False):
    """Initialises the model (and EMA) from `path` (`--init_checkpoint`).

    `whole`: every weight must fit (evaluating that checkpoint), else
    `checkpoints.CheckpointMismatchError`.
    """
    with self.strategy.scope():
      loaded = checkpoints.init_from(self.model, path)
      self.ema.reset_to_model()
    total = len(self.model.weights)
    if whole and loaded < total:
      raise checkpoints.CheckpointMismatchError(
          f"--init_checkpoint {path}: only {loaded} of {total} weights "
          "fit; cannot evaluate it (another class count or model?).")
    return loaded

  def checkpoint_bytes(self):
    """About what one checkpoint takes on disk: weights, optimizer slots
    and the EMA's shadows."""
    return variable_bytes(self.model.variables + self.optimizer.variables +
                          self.ema.shadows)

  @contextlib.contextmanager
  def ema_model(self):
    """Within the block: the model, holding its EMA weights (export)."""
    with self.ema.swapped():
      yield self.model

  # ------------------------------------------------------------ checkpoints
  def restore(self, path=None):
    """Restores `path` or the latest checkpoint; returns the path or None."""
    path = self.checkpointer.restore(path)
    if path:
      logging.info("Restored %s at step %d.", path, self.step)
      self.log.resume_at(self.step)
      if "evals" in self.summary:  # those past it run again
        self.summary["evals"] = [e for e in self.summary["evals"]
                                 if e["step"] <= self.step]
    return path

  def save(self):
    """Checkpoints the current step (once), summary.json with it; raises
    CheckpointError."""
    # The loss history so far survives a kill.
    self.checkpointer.save(self.step, then=self.log.write)

  def checkpoint_point(self, start_step=None):
    """After a device call (steps start_step+1..step; None: between
    stages): saves when the checkpointer says it is due or a signal asked
    the run to stop, then raises `preemption.Interrupted` for the latter.

    Every worker takes the same decision (`_agreed`), so all of them reach
    the save, whose variable reads may be collectives, and stop at the
    same step.
    """
    due = start_step is not None and self.checkpointer.due(start_step,
                                                           self.step)
    signum, elsewhere, due = self._agreed(due)
    if signum is None and due:
      self.save()
      signum, elsewhere, _ = self._agreed(False)  # one during the save
    if signum is None:
      return
    step, total = self.step, self.total_steps
    if step == 0:  # nothing trained yet (a fresh run or a finetune)
      saved = "nothing to save"
    else:
      self.save()
      saved = f"saved {self.checkpointer.path(step)}"
    raise preemption.Interrupted(signum, (
        f"Interrupted ({self._signal_text(signum, elsewhere)}) at step "
        f"{step} of {total}: {saved}; rerun the same command to resume."))

  def _agreed(self, due):
    """(signal number or None, whether it came from another worker, `due`)
    as all workers see them: with several, any worker's signal or due save
    is every worker's (one small all-reduce per device call)."""
    signum = preemption.requested()
    if self.workers == 1:
      return signum, False, due
    if self._sum_over_workers is None:
      @tf.function
      def sum_over_workers(values):
        return self.strategy.reduce(
            SUM, self.strategy.run(tf.identity, args=(values,)), axis=None)
      self._sum_over_workers = sum_over_workers
    term, inter, any_due = self._sum_over_workers(tf.constant(
        [signum == signal.SIGTERM, signum == signal.SIGINT, due],
        tf.int32)).numpy()
    agreed = (signal.SIGTERM if term else signal.SIGINT if inter else None)
    return agreed, signum is None and agreed is not None, bool(any_due)

  @staticmethod
  def _signal_text(signum, elsewhere):
    name = preemption.signal_name(signum)
    return f"{name} on another worker" if elsewhere else name

  # ----------------------------------------------------------------- input
  def train_dataset(self, stage):
    """The stage's (distributed) training input: built ahead by `train`'s
    builder thread, else now."""
    ahead = self._inputs_ahead.pop(stage.index, None)
    return ahead.result() if ahead else self._build_train_dataset(stage)

  def _build_train_dataset(self, stage):
    seed = self.config.train.seed + 1000 * stage.index

    def dataset_fn(context):
      return self._checked_input(pipeline.build_train_dataset(
          self.source, context.get_per_replica_batch_size(self.global_batch),
          stage, self.train_input, seed=seed, input_context=context,
          static_image_size=self.retrace_per_stage), "the training input")

    return self.strategy.distribute_datasets_from_function(dataset_fn)

  def _checked_input(self, dataset, what):
    """`dataset`, after checking its shapes are static where XLA needs it."""
    if self.jit_compile or isinstance(self.strategy,
                                      tf.distribute.TPUStrategy):
      xla.check_static_shapes(dataset.element_spec, what)
    return dataset

  # ------------------------------------------------------------------ step
  def make_step_fn(self, frozen=False):
    """`step.make_train_step` for this run's model, optimizer and EMA;
    `frozen`: the frozen backbone's step (the head alone trains). With
    train.grad_accum_steps K > 1 the step accumulates the gradients of K
    micro-batches and applies them once: the loops, checkpoints and the
    schedule see one step per global batch, and never a step in the middle
    of an accumulation. train.recompute: the step recomputes activations
    in its backward pass."""
    return step_lib.make_train_step(
        self.model, self.optimizer, self.ema,
        optim.coupled_weight_decay(self.config.train),
        self.global_batch, self.replicas, frozen=frozen,
        accum_steps=self.config.train.grad_accum_steps,
        recompute=self.config.train.recompute)

  def make_compiled_step(self):
    """`make_step_fn()`'s step of the current phase (frozen backbone or
    whole network), XLA-compiled when runtime.jit_compile is on.

    With `retrace_per_stage`, a new function each call, so each stage
    traces (and compiles) its own step with its static image size;
    otherwise the first one, for every stage, until the frozen phase ends
    (one more). Kept as `self.step_function`; a line says when the phase
    starts and ends. Counts `self.traces` once per graph the step is
    traced into (the replicas of a mirrored trace share it).
    """
    frozen = self.controls.frozen_at(self.step)
    if (self.step_function is not None and not self.retrace_per_stage
        and frozen == self._step_frozen):
      return self.step_function
    freeze = self.controls.freeze_steps
    if frozen and self._step_frozen is None:
      self.reporter.line(
          f"steps {self.step}-{freeze}: backbone frozen (batch norm in "
          "inference mode, no stochastic depth); only the head "
          f"({names.CLASSIFIER_LAYER}) trains")
    elif not frozen and (self._step_frozen or self.step == freeze > 0):
      self.reporter.line(f"step {self.step}: backbone unfrozen; the whole "
                         "network trains from here")
    self._step_frozen = frozen
    step_fn = self.make_step_fn(frozen)
    graphs = []

    def counted_step(batch):
      graph = tf.compat.v1.get_default_graph()  # Python: only while tracing
      if not any(graph is seen for seen in graphs):
        graphs.append(graph)
        self.traces += 1
      return step_fn(batch)

    self.step_function = xla.compiled(counted_step, self.jit_compile)
    return self.step_function

  def phase_changed(self):
    """Whether the frozen phase ended since the current step was built
    (the loops then end their call and take `make_compiled_step`'s)."""
    return bool(self._step_frozen) and not self.controls.frozen_at(
        self.step)

  # ----------------------------------------------------------------- train
  def train(self, eval_every_stage=False):
    """Runs (or resumes) every stage; returns the summary dict.

    `eval_every_stage`: evaluates at every stage end and on the cadence
    (train.eval_every_steps / eval_every_epochs, `eval_point`).

    The stages' input pipelines are built in a thread, the first at once
    and the others while it trains (tf.data's graph building is Python;
    the step runs outside the GIL), so later stages start without waiting
    for theirs.
    """
    self._train_started = self._last_line = time.time()
    todo = [stage for stage in self.stages if stage.end_step > self.step]
    builder = concurrent.futures.ThreadPoolExecutor(1)
    # A signal stops the run at the next device call's end (saved there),
    # at a stage's start or in an evaluation (`checkpoint_point`).
    with preemption.deferred():
      try:
        for stage in todo:  # one worker: in stage order, the first at once
          self._inputs_ahead[stage.index] = builder.submit(
              self._build_train_dataset, stage)
        for stage in todo:
          self.checkpoint_point()
          self._evaluates = eval_every_stage
          self.eval_point(stage)  # resumed where one did not finish
          self.train_stage(stage, evaluate=eval_every_stage)
        self.checkpoint_point()
      finally:  # a failed stage does not wait for the later inputs
        builder.shutdown(cancel_futures=True)
        self._inputs_ahead.clear()
    return self.summary

  def train_stage(self, stage, evaluate=False):
    """Trains `stage` to its end step, then evaluates with `evaluate`;
    records it in summary.json and returns that entry."""
    data = self.config.data
    self.reporter.line(progressive.describe(
        stage, len(self.stages), self.summary["preset"], self.preprocessing,
        data.augname, data.augment_arithmetic))
    self._traces_before_stage = self.traces
    self._evaluates = evaluate
    record = self._run_stage(stage)
    if evaluate:
      try:
        record.update(self._training_eval(stage))
      except preemption.Interrupted:
        # Trained and saved: a rerun goes on with the next stage, and a
        # final eval runs anew (this record has none).
        self.log.record_stage(record)
        raise
    self.log.record_stage(record)
    return record

  def eval_point(self, stage):
    """After a device call in `stage`: the cadence's evaluation when one is
    due (`finetune.Controls.eval_due`; a stage end evaluates anyway), after
    a save of this step, so that a signal during it stops a run that
    resumes here and evaluates this step first (as it does when the step's
    evaluation is not in summary.json)."""
    step = self.step
    if not (self._evaluates and stage.start_step < step < stage.end_step
            and self.controls.eval_due(step)):
      return
    if any(e["step"] == step for e in self.summary.get("evals", ())):
      return  # evaluated before this run resumed here
    self.save()
    self._training_eval(stage, cadence=True)

  def _training_eval(self, stage, cadence=False):
    """An evaluation during training (a stage end's or the cadence's): in
    summary.json's "evals" and TensorBoard, then offered to
    train.keep_best; returns its result."""
    self._training_stage = (stage, cadence)
    try:
      result = self.evaluate()
    finally:
      self._training_stage = None
    self.summary.setdefault("evals", []).append(
        dict(step=self.step, stage=stage.index + 1, **result))
    self.log.write()
    if self.config.train.keep_best:
      self.checkpointer.keep_best(self.step, result["top1"], TOP1_SCALAR)
    return result

  def _run_stage(self, stage):
    """Trains `stage` to its end step; returns its summary.json entry."""
    raise NotImplementedError

  @contextlib.contextmanager
  def xla_errors(self, what):
    """An op XLA cannot compile becomes one XlaError line naming it."""
    try:
      yield
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as err:
      error = xla.compile_error(err, what) if self.jit_compile else None
      if error is None:
        raise
      raise error from None

  def check_finite(self, loss, start_step, stage):
    """Raises TrainingError when `loss` (of steps start_step+1..) is NaN/inf."""
    if not math.isfinite(loss):
      steps = (f"steps {start_step + 1}-{self.step}"
               if self.step > start_step + 1 else f"step {self.step}")
      raise TrainingError(
          f"Non-finite loss {loss} in {steps} "
          f"(stage {stage.index + 1}); stopping. The latest checkpoint "
          f"({self.checkpointer.latest}) is the last good one.")

  def record_progress(self, stage, loss, images_per_sec, skipped,
                      start_step=None):
    """History and TensorBoard scalars of the device call of steps
    start_step+1..step (default: one step), and its progress line when
    `run_log.progress_due` says so.

    `images_per_sec` is None for a stage's first call (which traces, when
    the stage needs a trace).
    """
    step = self.step
    lr = float(self.schedule(step))
    self.log.progress(step, loss, lr, images_per_sec)
    now = time.time()
    start_step = step - 1 if start_step is None else start_step
    call_seconds = ((step - start_step) * self.global_batch / images_per_sec
                    if images_per_sec else 0.0)
    # Also at the frozen phase's end: its last loss.
    if step == self.controls.freeze_steps or run_log.progress_due(
        start_step, step, self.progress_every, stage.end_step,
        images_per_sec is None, now - self._last_line, call_seconds):
      self._last_line = now
      self.reporter.line(self._progress_line(stage, loss, lr,
                                             images_per_sec, skipped))
    if skipped and not self._skip_hint_shown:
      self._skip_hint_shown = True
      self.reporter.line(
          f"skipped {skipped} unreadable image(s) (tf.data logs each "
          "error)" + (
              "; `python -m effnetv2_tf.data.check_tfrecords --data_dir="
              f"{self.source.data_dir}` names the records"
              if isinstance(self.source, sources.TFRecordSource) else ""))

  def _progress_line(self, stage, loss, lr, images_per_sec, skipped):
    """"step 3/6 stage 1/2 loss ... lr ... <speed>, elapsed 0:05"."""
    step = self.step
    elapsed = time.time() - self._train_started
    if images_per_sec is None:
      speed = ("(first call: includes tracing)"
               if self.traces > self._traces_before_stage else
               "(first call)")
    else:
      eta = (progressive.remaining_cost(self.stages, stage, step)
             * self.global_batch / images_per_sec)
      speed = f"{images_per_sec:.1f} images/s, ETA {run_log.clock(eta)}"
    return (f"step {step}/{self.total_steps} stage "
            f"{stage.index + 1}/{len(self.stages)} loss {loss:.4f} "
            f"lr {lr:.3g} {speed}, elapsed {run_log.clock(elapsed)}"
            + (f", skipped {skipped}" if skipped else ""))

  # ------------------------------------------------------------------ eval
  def make_eval_step(self):
    """`step.make_eval_step`, XLA-compiled when runtime.jit_compile is on."""
    return xla.compiled(step_lib.make_eval_step(self.model), self.jit_compile)

  def evaluate(self, image_size=None, use_ema=True):
    """Top-1/top-5 on the eval split with the EMA weights.

    A signal stops it at the next device call's end (`_stop_eval`).
    """
    size = image_size or self.config.model.eval_size
    with preemption.deferred():
      counts, seconds = self._eval_counts(size, use_ema)
    examples = counts[3]
    result = {"top1": float(counts[0] / examples),
              "top5": float(counts[1] / examples),
              "eval_examples": int(examples), "eval_image_size": size}
    scalars = {TOP1_SCALAR: result["top1"],
               "eval/acc_top5": result["top5"]}
    scores = f"top-1 {result['top1']:.4f} top-5 {result['top5']:.4f}"
    if self.source.multi_label:
      # The reference's names (main.py L262-283): acc_top1/acc_top5 score the
      # lowest-index label, precision@1 the arg-max against every label.
      result["precision@1"] = scalars["eval/precision@1"] = float(
          counts[2] / examples)
      scores = (f"acc_top1 {result['top1']:.4f} acc_top5 "
                f"{result['top5']:.4f} (lowest-index label) precision@1 "
                f"{result['precision@1']:.4f} (any label)")
    self.reporter.line(
        f"eval at step {self.step} ({size} px, {int(examples)} images, "
        f"{seconds:.1f}s): {scores}")
    self.log.scalars(self.step, scalars)
    return result

  def _eval_counts(self, size, use_ema):
    """`step.topk_hits`' four counts summed over the eval split at `size`
    px, and the seconds the eval loop took.

    The loop runs runtime.steps_per_loop batches per device call, so a
    signal stops it within one call (`_stop_eval`).
    """
    split = self.config.data.eval_split
    eval_batch = self.config.eval.batch_size
    steps = pipeline.eval_steps(self.source.num_examples(split), eval_batch)

    def dataset_fn(context):
      dataset = pipeline.build_eval_dataset(
          self.source, context.get_per_replica_batch_size(eval_batch), size,
          self.preprocessing, split=split,
          input_context=context)
      return self._checked_input(dataset, "the eval input")

    dataset = self.strategy.distribute_datasets_from_function(dataset_fn)
    eval_loop = self._make_eval_loop()
    started = time.time()
    # float32 as on the device: whole counts, exact below 2**24.
    counts, done = np.zeros(4, np.float32), 0
    per_call = self.config.runtime.steps_per_loop
    faults.pause("delay_eval", self.step)
    with self.xla_errors("the eval step"), (
        self.ema.swapped() if use_ema else contextlib.nullcontext()):
      iterator = iter(dataset)
      while done < steps:
        self._stop_eval()
        batches = min(per_call, steps - done)
        counts += eval_loop(iterator, tf.constant(batches)).numpy()
        done += batches
    self._stop_eval()
    return counts, time.time() - started

  def _make_eval_loop(self):
    """The tf.function of `runtime.steps_per_loop` eval steps per call, made
    once: every evaluation of the run (stage ends, the cadence's) reuses
    its trace, as their inputs have the same spec."""
    if self._eval_loop is None:
      eval_step = self.make_eval_step()

      @tf.function
      def eval_loop(iterator, batches):
        counts = tf.zeros([4])
        for _ in tf.range(batches):
          counts += self.strategy.reduce(
              SUM, self.strategy.run(eval_step, args=(next(iterator),)),
              axis=None)
        return counts

      self._eval_loop = eval_loop
    return self._eval_loop

  def _stop_eval(self):
    """Raises `preemption.Interrupted` when a signal (on any worker) asked
    the run to stop; nothing to save: an evaluation changes no weights."""
    signum, elsewhere, _ = self._agreed(False)
    if signum is None:
      return
    text = self._signal_text(signum, elsewhere)
    if self._training_stage is not None:  # its checkpoint is saved
      stage, cadence = self._training_stage
      where = "" if cadence else f" of stage {stage.index + 1}"
      raise preemption.Interrupted(signum, (
          f"Interrupted ({text}) during the evaluation{where} at step "
          f"{self.step} of {self.total_steps}: its checkpoint "
          f"{self.checkpointer.path(self.step)} is saved; rerun the same "
          "command to resume" + (f" (it evaluates step {self.step} first)."
                                  if cadence else ".")))
    raise preemption.Interrupted(signum, (
        f"Interrupted ({text}) during the evaluation at step {self.step}: "
        "no result was written; rerun the same command to evaluate."))

  def final_eval(self):
    """The last stage's evaluation when it had one, else a new one."""
    return self.log.last_stage_eval() or self.evaluate()

  def finish(self, eval_result=None):
    """Records the final eval in summary.json; removes a worker's scratch."""
    summary = self.log.finish(self.step, eval_result)
    self.checkpointer.remove_scratch()
    return summary
