"""Finetuning controls of both loops: a frozen-backbone phase and an
evaluation cadence (`train` section).

Frozen phase (`train.freeze_steps` or `train.freeze_epochs`): the run's
first steps train the head alone (the `predictions` layer, behind the head
dropout) on the features of the backbone in inference mode (batch norm on
its moving statistics, no stochastic depth: Keras' transfer-learning
recipe, base_model(x, training=False)); from then on the whole network
trains. The step is traced once more at the switch, and the backbone's
optimizer slots start there at their initial zeros (no gradient reached
them before). The EMA goes on over every weight: the frozen backbone's
averages equal its weights, which do not move.

Evaluation cadence (`train.eval_every_steps` or `train.eval_every_epochs`):
with --mode=train_and_eval, an evaluation every so many steps besides the
stage ends; both loops end a device call (fit: an execution) there.

Epochs count data epochs (`progressive.step_counts`' steps per epoch), so
both drivers switch and evaluate at the same steps. Pure Python.
"""

import dataclasses
import math

from effnetv2_tf import errors
from effnetv2_tf.settings import Setting


def _alone(other):
  """A `Setting` check: the value may not be given with key `other`."""
  def check(value, section):
    if section[other] is not None:
      raise ValueError(f"this or train.{other}, not both; set "
                       f"train.{other}=null")
    return True
  return check


def _bounded(valid, test, other):
  """A `Setting`'s valid text and check: `test(value)`, and not given with
  key `other`."""
  alone = _alone(other)
  return dict(valid=valid, check=lambda v, s: test(v) and alone(v, s))


# The config's keys (`train` section); None: no frozen phase, no cadence.
SETTINGS = (
    Setting("freeze_steps", None, int, "the first steps train only the head "
            "(predictions), the backbone frozen with batch norm in inference "
            "mode; then the whole network (needs initial weights)",
            fills="none",
            **_bounded(">= 0, or null", lambda v: v >= 0, "freeze_epochs")),
    Setting("freeze_epochs", None, float, "the frozen phase in epochs, in "
            "place of freeze_steps", fills="none",
            **_bounded(">= 0, or null", lambda v: v >= 0, "freeze_steps")),
    Setting("eval_every_steps", None, int, "--mode=train_and_eval: an "
            "evaluation every so many steps, besides the stage ends",
            fills="none",
            **_bounded(">= 1, or null", lambda v: v >= 1,
                       "eval_every_epochs")),
    Setting("eval_every_epochs", None, float, "the evaluation cadence in "
            "epochs, in place of eval_every_steps", fills="none",
            **_bounded("> 0, or null", lambda v: v > 0, "eval_every_steps")),
)


FREEZE_KEYS = ("freeze_steps", "freeze_epochs")
CADENCE_KEYS = ("eval_every_steps", "eval_every_epochs")


def epochs_to_steps(epochs, steps_per_epoch):
  """Whole steps of `epochs` (rounded up; 1e-6 of float error ignored)."""
  return math.ceil(round(epochs * steps_per_epoch, 6))


@dataclasses.dataclass(frozen=True)
class Controls:
  """The run's frozen phase and evaluation cadence, in steps (0: none)."""
  freeze_steps: int = 0
  eval_every: int = 0

  def frozen_at(self, step):
    """Whether the step after `step` trains the head alone."""
    return step < self.freeze_steps

  def eval_due(self, step):
    """Whether the cadence evaluates at `step` (after it)."""
    return bool(self.eval_every) and step > 0 and step % self.eval_every == 0

  def cut(self, start_step, evaluates=True):
    """Steps from `start_step` to the next switch or (when the run
    `evaluates`) cadence step: a device call ends there; None when
    neither comes."""
    ends = [self.freeze_steps] if start_step < self.freeze_steps else []
    if self.eval_every and evaluates:
      ends.append(start_step + self.eval_every - start_step % self.eval_every)
    return min(ends) - start_step if ends else None

  def execution_divisors(self, start_step, stage_end, evaluates=True):
    """Step counts fit's steps_per_execution must divide, so executions
    from `start_step` end on the switch and (when the run `evaluates`) the
    cadence steps."""
    divisors = []
    if start_step < self.freeze_steps < stage_end:
      divisors.append(self.freeze_steps - start_step)
    if self.eval_every and evaluates:
      divisors += [self.eval_every, start_step]
    return divisors


def _pick(config, steps_key, epochs_key, steps_per_epoch):
  """The steps of a steps-or-epochs pair of keys: (steps or None, key)."""
  train = config.train
  if train[steps_key] is not None:
    return train[steps_key], f"train.{steps_key}={train[steps_key]}"
  if train[epochs_key] is not None:
    return (epochs_to_steps(train[epochs_key], steps_per_epoch),
            f"train.{epochs_key}={train[epochs_key]:g}")
  return None, None


def controls(config, steps_per_epoch, total_steps):
  """The `Controls` of a config; a ConfigError line when the frozen phase
  is longer than the run or the cadence never comes."""
  freeze, given = _pick(config, "freeze_steps", "freeze_epochs",
                        steps_per_epoch)
  if freeze is not None and freeze > total_steps:
    raise errors.ConfigError(
        f"{given}: the frozen phase ({freeze} steps) is longer than the run "
        f"({total_steps} steps); make it shorter, or 0 for none.")
  every, given = _pick(config, "eval_every_steps", "eval_every_epochs",
                       steps_per_epoch)
  if every is not None and every > total_steps:
    raise errors.ConfigError(
        f"{given}: one evaluation every {every} steps never comes in a "
        f"run of {total_steps} steps; make it at most {total_steps}, or "
        "null (stage ends only).")
  return Controls(freeze_steps=freeze or 0, eval_every=every or 0)


def _unusable(mode, has_weights):
  """(keys, why) of the controls this command cannot run."""
  return ([(FREEZE_KEYS, "a frozen backbone needs trained weights, and "
            "this run starts from random ones")] if not has_weights
          else []) + ([(CADENCE_KEYS, "--mode=train does not evaluate")]
                      if mode == "train" else [])


def drop_unusable(config, mode, has_weights, given):
  """Turns off, in a draft `config`, the controls its dataset config gives
  that this command cannot run (folderft's frozen phase without initial
  weights, its cadence with --mode=train); returns a line for each.

  Keys in `given` (set by --hparam_str or --config_file) stay, for
  `check_start` to refuse in one line.
  """
  lines = []
  for keys, why in ([] if mode == "eval" else
                    _unusable(mode, has_weights)):
    for key in keys:
      if config.train[key] and f"train.{key}" not in given:
        lines.append(f"train.{key}: off, as {why} (the "
                     f"{config.data.dataset_cfg} config says "
                     f"{config.train[key]:g})")
        config.train[key] = None
  return lines


def check_start(config, mode, has_weights):
  """Raises one ConfigError line, before any work, when --mode cannot run
  these controls: a frozen phase without initial weights (no
  --init_checkpoint, no checkpoint to resume), a cadence with --mode=train.
  `has_weights`: the run starts from --init_checkpoint or resumes."""
  if mode == "eval":
    return
  for keys, why in _unusable(mode, has_weights):
    for key in keys:
      if config.train[key]:
        fix = ("give --init_checkpoint, or set " if keys == FREEZE_KEYS else
               "use --mode=train_and_eval, or set ")
        raise errors.ConfigError(
            f"train.{key}={config.train[key]:g}: {why}; {fix}"
            f"train.{key}=null.")
