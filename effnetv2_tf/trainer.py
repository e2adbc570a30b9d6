"""The custom tf.distribute training loop of main.py (paper Algorithm 1).

Read top to bottom: `Trainer.__init__` builds data source, model,
optimizer, EMA and checkpointing under the strategy; `train` walks the
progressive stages, each with its own input pipeline and a freshly traced
`train_loop` (the image size changes, so it must retrace, exactly once per
stage); `evaluate` runs the padded eval pipeline with the EMA weights.
"""

import contextlib
import math
import os
import time

from absl import logging
import tensorflow as tf

from effnetv2_tf import distribute
from effnetv2_tf import faults
from effnetv2_tf import optim
from effnetv2_tf import progressive
from effnetv2_tf import train_lib
from effnetv2_tf import xla
from effnetv2_tf.data import pipeline

SUM = tf.distribute.ReduceOp.SUM


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss); says step and stage."""


class CheckpointError(TrainingError):
  """A checkpoint could not be written (e.g. the disk is full)."""


class Trainer:
  """Owns the model, optimizer, EMA and checkpoints of one run."""

  # --deterministic saves the input iterator in checkpoints (main.py only).
  checkpoints_input = True

  def __init__(self, config, model_dir, strategy):
    self.config = config
    self.model_dir = model_dir
    self.strategy = strategy
    self.chief = distribute.is_chief(strategy)
    self.replicas = strategy.num_replicas_in_sync
    if (config.runtime.deterministic and self.checkpoints_input
        and distribute.distributes_input(strategy)):
      raise TrainingError(
          f"--deterministic: {type(strategy).__name__} feeds replicas "
          "through a tf.distribute DistributedIterator, which checkpoints "
          "cannot save (tensorflow/tensorflow#56372), so a resumed run "
          "could not continue the input where it stopped. Use it with one "
          "device (the default strategy), or main_tf2.py, whose resumed "
          "stages restart their data order.")
    self.jit_compile, self.xla_choice = xla.resolve(
        config.runtime.jit_compile, strategy)
    self.global_batch = config.train.batch_size
    for key, batch in (("train.batch_size", self.global_batch),
                       ("eval.batch_size", config.eval.batch_size)):
      if batch % self.replicas:
        raise ValueError(f"{key}={batch} is not divisible by the "
                         f"{self.replicas} replicas.")
    self.source = train_lib.build_source(config)
    self.num_classes = self.source.num_classes
    self.steps_per_epoch, self.total_steps = train_lib.step_counts(
        config, self.source.num_examples("train"), self.global_batch)
    self.stages = self.plan_stages()
    with strategy.scope():
      self.model = train_lib.build_model(config, self.num_classes,
                                         self.stages[0].dropout,
                                         self.replicas)
      self.schedule = optim.build_schedule(
          config.train, self.global_batch, self.steps_per_epoch,
          self.total_steps)
      self.optimizer = optim.build_optimizer(config.train, self.schedule)
      self.optimizer.build(self.model.trainable_variables)
      self.ema = optim.ExponentialMovingAverage(self.model,
                                                config.train.ema_decay)
    self.decay_variables = optim.decay_variables(self.model)
    # Keras keeps the dropout/stochastic-depth noise state in seed generator
    # variables that Model weights leave out; saved so a resumed run draws
    # the noise an uninterrupted one would.
    rng = [v for v in self.model.variables
           if v.path.endswith("seed_generator_state")]
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, ema=self.ema, rng=rng)
    self.restored_path = None
    self.ckpt_dir = model_dir if self.chief else os.path.join(
        model_dir, f"worker_tmp_{strategy.cluster_resolver.task_id}")
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, self.ckpt_dir,
        max_to_keep=config.train.keep_checkpoints)
    self.traces = 0  # incremented when train_loop is traced
    self.step_function = None  # the current stage's (compiled) step
    self.writer = tf.summary.create_file_writer(
        os.path.join(model_dir, "train")) if self.chief else None
    self.summary = train_lib.read_summary(model_dir) or {
        "model": config.model.name, "dataset": config.data.name,
        "preset": ("random_resize" if config.progressive.random_resize
                   else config.progressive.preset),
        "total_steps": self.total_steps, "stages": [], "history": [],
        "eval": None}

  def plan_stages(self):
    return progressive.plan(self.config, self.total_steps,
                            self.steps_per_epoch)

  @property
  def step(self):
    return int(self.optimizer.iterations.numpy())

  # ------------------------------------------------------------ checkpoints
  def restore(self, path=None):
    """Restores `path` or the latest checkpoint; returns the path or None.

    Every worker restores the chief's latest checkpoint (the others save
    only into scratch directories).
    """
    path = path or tf.train.latest_checkpoint(self.model_dir)
    if path:
      self.checkpoint.restore(path).expect_partial()
      self.restored_path = path
      logging.info("Restored %s at step %d.", path, self.step)
      # summary.json is written after each checkpoint, so it can hold
      # steps past a checkpoint that then failed; those rerun.
      self.summary["history"] = [h for h in self.summary["history"]
                                 if h["step"] <= self.step]
    return path

  def save(self):
    """Checkpoints the current step (once); raises CheckpointError.

    TensorFlow writes the files under a temporary name and only then
    records them in the `checkpoint` state file, so a kill or a failed
    write mid-save leaves the previous checkpoint the latest.
    """
    step, latest = self.step, self.manager.latest_checkpoint
    if latest and latest.endswith(f"-{step}"):
      return
    try:
      with faults.checkpoint_save(step) as options:
        self.manager.save(checkpoint_number=step, options=options)
        if self.chief:  # the loss history so far survives a kill
          train_lib.write_summary(self.model_dir, self.summary)
    except (OSError, tf.errors.OpError) as err:
      self._remove_partial_save(f"{self.ckpt_dir}/ckpt-{step}")
      reason = getattr(err, "message", str(err)).rsplit("; ", 1)[-1]
      # The latest checkpoint is the previous one, or this step's when
      # only summary.json failed.
      latest = self.manager.latest_checkpoint or "none"
      raise CheckpointError(
          f"Could not write the checkpoint of step {step} to "
          f"{self.ckpt_dir}: {reason.split(' [Op:')[0]}. The latest "
          f"checkpoint ({latest}) is kept; free disk space and rerun the "
          "same command to resume from it.") from None

  def _remove_partial_save(self, prefix):
    """Deletes what a failed save of `prefix` left (never a kept one)."""
    if prefix in self.manager.checkpoints:
      return
    for path in tf.io.gfile.glob(prefix + ".*") + tf.io.gfile.glob(
        prefix + "_temp"):
      try:
        if tf.io.gfile.isdir(path):
          tf.io.gfile.rmtree(path)
        else:
          tf.io.gfile.remove(path)
      except (OSError, tf.errors.OpError):
        logging.warning("Could not remove %s of the failed save.", path)

  # ----------------------------------------------------------------- input
  def _train_dataset(self, stage):
    config = self.config

    def dataset_fn(context):
      return self._checked_input(pipeline.build_train_dataset(
          self.source, context.get_per_replica_batch_size(self.global_batch),
          stage.image_size, train_lib.preprocessing(config),
          augname=config.data.augname,
          randaug_magnitude=stage.randaug_magnitude,
          num_layers=config.data.num_layers, mixup_alpha=stage.mixup_alpha,
          cutmix_alpha=stage.cutmix_alpha,
          label_smoothing=config.train.label_smoothing,
          seed=config.train.seed + 1000 * stage.index,
          input_context=context, shuffle_buffer=config.data.shuffle_buffer,
          cache=config.data.cache), "the training input")

    return self.strategy.distribute_datasets_from_function(dataset_fn)

  def _checked_input(self, dataset, what):
    """`dataset`, after checking its shapes are static where XLA needs it."""
    if self.jit_compile or isinstance(self.strategy,
                                      tf.distribute.TPUStrategy):
      xla.check_static_shapes(dataset.element_spec, what)
    return dataset

  def _track_iterator(self, iterator, stage):
    """--deterministic: the stage's input position goes into checkpoints.

    A run resumed mid-stage then continues the data stream where the saved
    one was, instead of restarting the stage's data order. Opt-in: the
    saved state holds the shuffle and prefetch buffers (and an in-memory
    cache), which is large for ImageNet.
    """
    self.checkpoint.train_iterator = iterator
    path = self.restored_path
    if not path or not stage.start_step < self.step < stage.end_step:
      return  # a fresh stage starts at its first element
    names = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    if not any(n.startswith("train_iterator/") for n in names):
      logging.warning("%s holds no input iterator (saved without "
                      "--deterministic): stage %d restarts its data order.",
                      path, stage.index + 1)
      return
    tf.train.Checkpoint(train_iterator=iterator).read(path).expect_partial()
    logging.info("Restored the stage %d input iterator from %s.",
                 stage.index + 1, path)

  # ------------------------------------------------------------------ step
  def make_step_fn(self):
    """One optimizer step on a per-replica batch -> (loss, skipped images).

    The loss is this replica's share of the global-batch mean (so replicas
    sum to it) plus its share of the kernel weight decay; both drivers run
    this same step (main.py in `train_loop`, main_tf2.py in `train_step`).
    """
    model, optimizer, ema = self.model, self.optimizer, self.ema
    weight_decay = self.config.train.weight_decay

    def step_fn(batch):
      with tf.GradientTape() as tape:
        logits = model(batch["images"], training=True)
        loss = tf.nn.compute_average_loss(
            train_lib.cross_entropy(batch["labels"], logits),
            global_batch_size=self.global_batch)
        decay = optim.weight_decay_loss(self.decay_variables, weight_decay)
        total = loss + decay / self.replicas
        # Inside the tape: the loss scale's product must be recorded, or
        # mixed_float16's gradients are all None.
        scaled = optimizer.scale_loss(total)
      grads = tape.gradient(scaled, model.trainable_variables)
      optimizer.apply_gradients(zip(grads, model.trainable_variables))
      ema.update(optimizer.iterations)
      return total, batch["skipped"]

    return step_fn

  def make_compiled_step(self):
    """`make_step_fn()`'s step, XLA-compiled when runtime.jit_compile is on.

    A new function each call, so each stage traces (and compiles) its own
    step with its image size and dropout rate; kept as `self.step_function`.
    """
    self.step_function = xla.compiled(self.make_step_fn(), self.jit_compile)
    return self.step_function

  def _make_train_loop(self):
    """A new tf.function: `steps` optimizer steps per call, on device."""
    step_fn = self.make_compiled_step()

    @tf.function
    def train_loop(iterator, steps):
      self.traces += 1  # Python: runs only while tracing
      total = tf.constant(0.0)
      skipped = tf.constant(0, tf.int64)
      for _ in tf.range(steps):
        loss, per_replica_skipped = self.strategy.run(
            step_fn, args=(next(iterator),))
        total += self.strategy.reduce(SUM, loss, axis=None)
        skipped = tf.reduce_max(tf.stack(
            self.strategy.experimental_local_results(per_replica_skipped)))
      return total / tf.cast(steps, tf.float32), skipped

    return train_loop

  # ----------------------------------------------------------------- train
  def train(self, eval_every_stage=False):
    """Runs (or resumes) every stage; returns the summary dict."""
    num_stages = len(self.stages)
    for stage in self.stages:
      if stage.end_step <= self.step:
        continue
      print(progressive.describe(stage, num_stages, self.summary["preset"],
                                 self.config.data.augname), flush=True)
      record = self._train_stage(stage)
      if eval_every_stage:
        record.update(self.evaluate())
      self._record_stage(record)
    return self.summary

  def _train_stage(self, stage):
    train_lib.set_dropout(self.model, stage.dropout)
    iterator = iter(self._train_dataset(stage))
    if self.config.runtime.deterministic:
      self._track_iterator(iterator, stage)
    train_loop = self._make_train_loop()
    steps_per_loop = self.config.runtime.steps_per_loop
    every = self.config.train.checkpoint_every
    first_call, timed_seconds, timed_steps = None, 0.0, 0
    while self.step < stage.end_step:
      start_step = self.step
      steps = min(steps_per_loop, stage.end_step - start_step)
      started = time.time()
      with self.xla_errors("the train step"):
        loss, skipped = train_loop(iterator, tf.constant(steps))
        loss = float(loss)  # waits for the device
      seconds = time.time() - started
      rate = None  # the first call traces: no rate
      if first_call is None:
        first_call = (seconds, steps)
      else:
        timed_seconds, timed_steps = timed_seconds + seconds, (
            timed_steps + steps)
        rate = steps * self.global_batch / seconds
      self.check_finite(loss, start_step, stage)
      self.record_progress(stage, loss, rate, int(skipped))
      if every and self.step // every > start_step // every:
        self.save()
    self.save()
    return self._stage_record(stage, first_call, timed_seconds, timed_steps)

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
      raise TrainingError(
          f"Non-finite loss {loss} in steps {start_step + 1}-{self.step} "
          f"(stage {stage.index + 1}); stopping. The latest checkpoint "
          f"({self.manager.latest_checkpoint}) is the last good one.")

  def _stage_record(self, stage, first_call, timed_seconds, timed_steps):
    """summary.json's entry of a stage from its timings.

    Args:
      stage: the `progressive.Stage`.
      first_call: (seconds, steps) of the first device call (traces).
      timed_seconds, timed_steps: the later calls together.
    """
    if timed_steps:
      per_step = timed_seconds / timed_steps
    else:
      per_step = first_call[0] / first_call[1]
    return dict(
        stage=stage.index, image_size=stage.image_size,
        randaug_magnitude=stage.randaug_magnitude,
        mixup_alpha=stage.mixup_alpha, cutmix_alpha=stage.cutmix_alpha,
        dropout=stage.dropout, steps=stage.steps,
        images_per_sec=self.global_batch / per_step,
        retrace_seconds=max(0.0, first_call[0] - per_step * first_call[1]))

  def record_progress(self, stage, loss, images_per_sec, skipped,
                      echo=True):
    """History, TensorBoard scalars and (`echo`) the progress line.

    `images_per_sec` is None for a stage's first call, which traces.
    """
    step = self.step
    lr = float(self.schedule(step))
    every = self.config.train.log_every
    self.summary["history"].append(
        {"step": step, "loss": loss, "learning_rate": lr})
    if self.writer:
      with self.writer.as_default(step=step):
        tf.summary.scalar("loss", loss)
        tf.summary.scalar("learning_rate", lr)
        if images_per_sec is not None:
          tf.summary.scalar("images_per_sec", images_per_sec)
    if echo and (step % every < self.config.runtime.steps_per_loop or
                 step == stage.end_step):
      print(f"step {step}/{self.total_steps} stage "
            f"{stage.index + 1}/{len(self.stages)} loss {loss:.4f} "
            f"lr {lr:.3g} " + (f"{images_per_sec:.1f} images/s"
                               if images_per_sec is not None else
                               "(first call: includes tracing)")
            + (f" skipped {skipped}" if skipped else ""), flush=True)

  def _record_stage(self, record):
    stages = [s for s in self.summary["stages"]
              if s["stage"] != record["stage"]]
    self.summary["stages"] = sorted(stages + [record],
                                    key=lambda s: s["stage"])
    if self.chief:
      train_lib.write_summary(self.model_dir, self.summary)

  # ------------------------------------------------------------------ eval
  def make_eval_step(self):
    """Per-replica eval step: [top-1 hits, top-5 hits, examples] of a
    padded batch; XLA-compiled when runtime.jit_compile is on."""
    model = self.model

    def eval_step(batch):
      logits = model(batch["images"], training=False)
      return train_lib.topk_hits(batch["labels"], logits, batch["mask"])

    return xla.compiled(eval_step, self.jit_compile)

  def evaluate(self, image_size=None, use_ema=True):
    """Top-1/top-5 on the eval split with the EMA weights."""
    config = self.config
    size = image_size or config.model.eval_size
    split = config.data.eval_split
    eval_batch = config.eval.batch_size
    steps = pipeline.eval_steps(self.source.num_examples(split), eval_batch)

    def dataset_fn(context):
      dataset = pipeline.build_eval_dataset(
          self.source, context.get_per_replica_batch_size(eval_batch), size,
          train_lib.preprocessing(config), split=split,
          input_context=context)
      return self._checked_input(dataset, "the eval input")

    dataset = self.strategy.distribute_datasets_from_function(dataset_fn)
    eval_step = self.make_eval_step()

    @tf.function
    def eval_loop(iterator):
      counts = tf.zeros([3])
      for _ in tf.range(steps):
        counts += self.strategy.reduce(
            SUM, self.strategy.run(eval_step, args=(next(iterator),)),
            axis=None)
      return counts

    started = time.time()
    with self.xla_errors("the eval step"), (
        self.ema.swapped() if use_ema else contextlib.nullcontext()):
      counts = eval_loop(iter(dataset)).numpy()
    result = {"top1": float(counts[0] / counts[2]),
              "top5": float(counts[1] / counts[2]),
              "eval_examples": int(counts[2]), "eval_image_size": size}
    print(f"eval at step {self.step} ({size} px, {int(counts[2])} images, "
          f"{time.time() - started:.1f}s): top-1 {result['top1']:.4f} "
          f"top-5 {result['top5']:.4f}", flush=True)
    if self.writer:
      with self.writer.as_default(step=self.step):
        tf.summary.scalar("eval/top1", result["top1"])
        tf.summary.scalar("eval/top5", result["top5"])
    return result

  def finish(self, eval_result=None):
    """Records the final eval in summary.json; removes a worker's scratch."""
    if eval_result is not None:
      self.summary["eval"] = eval_result
    self.summary["final_step"] = self.step
    if self.chief:
      train_lib.write_summary(self.model_dir, self.summary)
    elif tf.io.gfile.exists(self.ckpt_dir):
      tf.io.gfile.rmtree(self.ckpt_dir)
    return self.summary

