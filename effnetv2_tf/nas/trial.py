"""One search trial: proxy training, minival accuracy, step time, parameters.

The candidate trains with the project's own training code (the custom
loop's step, optimizer and input pipeline) on the dataset config named by
`proxy.dataset_cfg`, in one stage at `proxy.image_size` for `proxy.epochs`
(or `proxy.steps`), and is evaluated with its EMA weights on the 'minival'
split, held out of the training data. Its training step time is then timed
on the device the trial runs on: the same step, after tracing, the median
of `proxy.timing_steps` calls, each waited for. The trainer's status lines
go to `<trial dir>/train.log` (a `reporter.Recorder`), not to stdout.
"""

import dataclasses
import os
import statistics
import time

import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf.training import custom_loop
from effnetv2_tf.training import reporter as reporter_lib


@dataclasses.dataclass(frozen=True)
class Measured:
  """What a trial measured."""
  accuracy: float   # top-1 on minival
  step_time: float  # seconds per training step (median)
  params: int
  seconds: float    # the trial's wall time, tracing and eval included


def proxy_overrides(search_config, blocks):
  """The config overrides (key -> value) of a trial of `blocks`."""
  proxy = search_config.proxy
  size = proxy.image_size
  overrides = {
      "model.blocks": " ".join(blocks),
      "model.depth_coefficient": 1.0,  # the sampled layer counts as they are
      "model.train_size": size, "model.eval_size": size,
      "progressive.num_stages": 1,
      "progressive.min_image_size": size, "progressive.max_image_size": size,
      "data.eval_split": "minival",
      "train.epochs": float(proxy.epochs),
      "train.min_steps": 0,
  }
  if proxy.steps:
    overrides["train.steps"] = int(proxy.steps)
  overrides.update(config_lib.parse_hparam_str(proxy.hparams))
  return overrides


def proxy_config(search_config, blocks):
  """The locked run config of a trial (ConfigError on a bad override)."""
  hparams = ",".join(f"{k}={v}" for k, v in
                     proxy_overrides(search_config, blocks).items())
  return config_lib.build_config(search_config.space.backbone,
                                 search_config.proxy.dataset_cfg,
                                 hparam_str=hparams)


def step_time(trainer, steps):
  """Median seconds of `steps` training steps at the run's first stage,
  after two untimed calls (tracing, warm-up)."""
  stage = trainer.stages[0]
  iterator = iter(trainer.train_dataset(stage))
  step_fn = trainer.make_step_fn()

  @tf.function
  def one_step(batch):
    loss, _ = trainer.strategy.run(step_fn, args=(batch,))
    return trainer.strategy.reduce(tf.distribute.ReduceOp.SUM, loss,
                                   axis=None)

  batch = next(iterator)
  for _ in range(2):
    float(one_step(batch))
  times = []
  for _ in range(max(1, steps)):
    started = time.perf_counter()
    float(one_step(batch))  # float(): waits for the device
    times.append(time.perf_counter() - started)
  return statistics.median(times)


def run(search_config, blocks, trial_dir, source=None):
  """Trains and measures `blocks` in `trial_dir`; returns `Measured`."""
  started = time.time()
  config = proxy_config(search_config, blocks)
  if tf.io.gfile.exists(trial_dir):  # what a killed try of it left
    tf.io.gfile.rmtree(trial_dir)
  tf.io.gfile.makedirs(trial_dir)
  log_path = os.path.join(trial_dir, "train.log")
  with open(log_path, "w") as log:
    trainer = custom_loop.CustomLoopTrainer(
        config, trial_dir, tf.distribute.get_strategy(), source=source,
        reporter=reporter_lib.Recorder(log))
    trainer.train()
    accuracy = trainer.evaluate()["top1"]
    seconds = step_time(trainer, search_config.proxy.timing_steps)
    params = trainer.model.count_params()
  return Measured(accuracy=accuracy, step_time=seconds, params=params,
                  seconds=time.time() - started)
