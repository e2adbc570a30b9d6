"""Progressive learning with adaptive regularization (paper Algorithm 1).

Training is split into M stages. Stage i (0..M-1) trains N/M steps (the
remainder goes to the last stage); its image size and regularization
(RandAugment magnitude, mixup and CutMix alpha, dropout rate) are
interpolated between a preset's (min, max) values. Weights, optimizer
slots, EMA and the step counter carry over; only the input pipeline and the
traced train step change.

Two presets:
  paper:     Algorithm 1 with Table 6: every value at i / (M - 1) from its
             min to its max (size 128 to the Table 6 size, RandAugment 5 to
             15/20/25, mixup 0 to 0/0.2/0.4, dropout 0.1 to 0.3/0.4/0.5;
             XL and B0-B3, not in Table 6, to their registry values). The
             paper uses no CutMix.
  reference: the released code (main.py and main_tf2.py, the stage loop):
             size int(128 + (train size - 128) * (i + 1) / M), and
             np.linspace(5, RandAugment, M)[i], np.linspace(0, mixup, M)[i],
             np.linspace(0, CutMix, M)[i] (that is i / (M - 1)), the
             model's fixed dropout.
One stage (M = 1: V1, ImageNet-21k, the finetune configs; the reference's
`train.stages=0`) trains at the model's train size with the max values.
Random resize (paper Table 13) instead draws a stage uniformly every K
epochs.
"""

import dataclasses
import math
from typing import List

import numpy as np

from effnetv2_tf import errors
from effnetv2_tf import settings
from effnetv2_tf.models import registry
from effnetv2_tf.settings import Setting

KEYS = ("image_size", "randaug", "mixup", "cutmix", "dropout")
# Table 6: (max size, max RandAugment, max mixup, max dropout); every model
# starts at size 128, RandAugment 5, mixup 0, dropout 0.1.
PAPER_MIN = {"image_size": 128, "randaug": 5.0, "mixup": 0.0, "cutmix": 0.0,
             "dropout": 0.1}
PAPER_MAX = {
    "efficientnetv2-s": {"image_size": 300, "randaug": 15.0, "mixup": 0.0,
                         "dropout": 0.3},
    "efficientnetv2-m": {"image_size": 380, "randaug": 20.0, "mixup": 0.2,
                         "dropout": 0.4},
    "efficientnetv2-l": {"image_size": 380, "randaug": 25.0, "mixup": 0.4,
                         "dropout": 0.5},
}
REFERENCE_MIN_SIZE = 128  # hparams.py data.ibase
REFERENCE_MIN_RANDAUG = 5.0
PRESETS = ("paper", "reference")


def _range_setting(bound, key):
  """progressive.min_/max_<key>: the preset's value where unset."""
  size = key == "image_size"
  return Setting(f"{bound}_{key}", None, int if size else float,
                 f"the {'first' if bound == 'min' else 'last'} stage's "
                 f"{key.replace('_', ' ')}", fills="the preset's",
                 **settings.at_least(8 if size else 0))


# The run's length (`train` section) and its stages (`progressive`).
TRAIN_SETTINGS = (
    Setting("epochs", 350.0, float, "training epochs",
            valid="> 0", check=lambda v, _: v > 0),
    Setting("steps", None, int, "training steps, in place of epochs",
            fills="from epochs",
            **settings.at_least(1, ", or null")),
    Setting("min_steps", 0, int, "at least this many steps (finetuning)",
            **settings.at_least(0)),
    Setting("batch_size", 4096, int, "the global training batch",
            **settings.at_least(1)),
)
SETTINGS = (
    Setting("preset", "paper", str, "Table 6 (paper) or the released code's "
            "stage values (reference)", choices=PRESETS),
    Setting("num_stages", None, int, "progressive stages",
            fills="the registry's (V1: 1)", **settings.at_least(1)),
    Setting("random_resize", False, bool, "paper Table 13: a random stage "
            "every random_resize_epochs instead"),
    Setting("random_resize_epochs", 8.0, float,
            "epochs between random-resize draws",
            valid="> 0", check=lambda v, _: v > 0),
) + tuple(_range_setting(bound, key) for key in KEYS
          for bound in ("min", "max"))


class StageError(errors.UserError, ValueError):
  """The run is too short for its stages; the message says by how much."""


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage (or random-resize segment) of progressive learning."""
  index: int
  start_step: int
  steps: int
  image_size: int
  randaug_magnitude: float
  mixup_alpha: float
  cutmix_alpha: float
  dropout: float

  @property
  def end_step(self):
    return self.start_step + self.steps


def remaining_cost(stages, stage, step):
  """Steps left after `step` of `stage`, in steps of `stage`'s image size.

  A step's cost grows with the image's pixels, so a later stage's step
  counts (its size / this size) ** 2 of this stage's: the ETA at this
  stage's measured rate then covers the larger stages to come.
  """
  later = sum(s.steps * (s.image_size / stage.image_size) ** 2
              for s in stages if s.start_step >= stage.end_step)
  return max(0, stage.end_step - step) + later


def preset_ranges(config):
  """(min, max) dicts of `KEYS` for a config.

  The preset gives the values; any `progressive.min_*`/`max_*` set in the
  config overrides them.
  """
  spec = registry.get_model_spec(config.model.name)
  preset = config.progressive.preset
  if preset == "paper":
    # Models without a Table 6 column (XL, B0-B3) go to their registry
    # values (B0-B3 have no RandAugment magnitude: S's).
    lo = dict(PAPER_MIN)
    hi = dict(PAPER_MAX.get(spec.name, {
        "image_size": config.model.train_size,
        "randaug": float(spec.randaug_magnitude or
                         PAPER_MAX["efficientnetv2-s"]["randaug"]),
        "mixup": spec.mixup_alpha, "dropout": spec.dropout_rate}),
              cutmix=0.0)
  elif preset == "reference":
    lo = {"image_size": REFERENCE_MIN_SIZE, "randaug": REFERENCE_MIN_RANDAUG,
          "mixup": 0.0, "cutmix": 0.0, "dropout": spec.dropout_rate}
    hi = {"image_size": config.model.train_size,
          "randaug": float(spec.randaug_magnitude),
          "mixup": spec.mixup_alpha, "cutmix": spec.cutmix_alpha,
          "dropout": spec.dropout_rate}
  else:
    raise ValueError(f"Unknown progressive preset {preset!r}; valid: "
                     f"{', '.join(map(repr, PRESETS))}.")
  if config.progressive.num_stages == 1:
    hi["image_size"] = config.model.train_size
  for key in KEYS:
    low = config.progressive[f"min_{key}"]
    high = config.progressive[f"max_{key}"]
    lo[key] = lo[key] if low is None else low
    hi[key] = hi[key] if high is None else high
  return lo, hi


def stage_ratios(preset, index, num_stages):
  """(size ratio, regularization ratio) of stage `index` in [0, 1]."""
  reg = index / (num_stages - 1) if num_stages > 1 else 1.0
  if preset == "reference":
    return (index + 1) / num_stages, reg
  return reg, reg


def stage_values(config, index):
  """Image size and regularization of stage `index` (0-based)."""
  lo, hi = preset_ranges(config)
  size_ratio, reg = stage_ratios(config.progressive.preset, index,
                                 config.progressive.num_stages)
  value = {k: lo[k] + (hi[k] - lo[k]) * (size_ratio if k == "image_size"
                                         else reg) for k in KEYS}
  return dict(
      image_size=int(value["image_size"]),
      randaug_magnitude=float(value["randaug"]),
      mixup_alpha=float(value["mixup"]),
      cutmix_alpha=float(value["cutmix"]),
      dropout=float(value["dropout"]))


def plan_stages(config, total_steps, epoch_steps=1) -> List[Stage]:
  """The fixed M-stage schedule of Algorithm 1 over `total_steps` steps.

  With `epoch_steps` > 1 (main_tf2.py: one Model.fit epoch) every stage but
  the last is a whole number of epochs, N/M rounded down to one; the rest
  go to the last stage. When the run is whole epochs and M divides them
  (the digits demo) both drivers get the same stages.
  """
  num_stages = config.progressive.num_stages
  if total_steps < num_stages * epoch_steps:
    raise StageError(f"{total_steps} training steps cannot fill "
                     f"{num_stages} progressive stages"
                     + (f" of whole {epoch_steps}-step epochs"
                        if epoch_steps > 1 else "")
                     + f"; set train.steps to at least "
                     f"{num_stages * epoch_steps}, or progressive.num_stages "
                     f"to at most {max(1, total_steps // epoch_steps)}.")
  per_stage = total_steps // num_stages // epoch_steps * epoch_steps
  stages, start = [], 0
  for i in range(num_stages):
    steps = per_stage if i < num_stages - 1 else total_steps - start
    stages.append(Stage(index=i, start_step=start, steps=steps,
                        **stage_values(config, i)))
    start += steps
  return stages


def plan_random_resize(config, total_steps, steps_per_epoch) -> List[Stage]:
  """Paper Table 13: every K epochs, a uniformly drawn stage's values."""
  segment = max(1, int(round(config.progressive.random_resize_epochs *
                             steps_per_epoch)))
  rng = np.random.default_rng(config.train.seed)
  stages, start = [], 0
  while start < total_steps:
    steps = min(segment, total_steps - start)
    pick = int(rng.integers(config.progressive.num_stages))
    stages.append(Stage(index=len(stages), start_step=start, steps=steps,
                        **stage_values(config, pick)))
    start += steps
  return stages


def step_counts(config, num_train_examples, global_batch_size):
  """(steps per epoch, total steps) of a run."""
  steps_per_epoch = max(1, num_train_examples // global_batch_size)
  total = config.train.steps or int(
      math.ceil(config.train.epochs * steps_per_epoch))
  return steps_per_epoch, max(total, config.train.min_steps)


def fit_epoch_steps(config, steps_per_epoch, total_steps):
  """Steps in one Model.fit epoch: a data epoch, or a stage for tiny runs."""
  return max(1, min(steps_per_epoch,
                    total_steps // config.progressive.num_stages))


def plan(config, total_steps, steps_per_epoch, epoch_steps=1):
  """The run's stages: Algorithm 1, or random resize when configured.

  `epoch_steps` > 1 keeps Algorithm 1's stages to whole epochs of that
  many steps (main_tf2.py: `fit_epoch_steps`).
  """
  if config.progressive.random_resize:
    return plan_random_resize(config, total_steps, steps_per_epoch)
  return plan_stages(config, total_steps, epoch_steps)


def augmentation(prep, augname, magnitude, arithmetic=None):
  """What the training input does to each image, in words ("random crop,
  flip, RandAugment magnitude 10 (reference ops)"; the ops' arithmetic when
  given); "no augmentation" when nothing."""
  ops = f" ({arithmetic} ops)" if arithmetic else ""
  parts = (["random crop"] if prep.train_crop else []) + (
      ["flip"] if prep.random_flip else []) + (
          [{"randaug": f"RandAugment magnitude {magnitude:g}",
            "autoaug": "AutoAugment"}[augname] + ops] if augname else []) + (
                ["cutout"] if prep.cutout else [])
  return ", ".join(parts) or "no augmentation"


def describe(stage, num_stages, preset, prep, augname, arithmetic=None):
  """The one log line printed at each stage start.

  Names the augmentation each image gets (the RandAugment magnitude only
  where RandAugment runs, the ops' `arithmetic` when given) and the preset
  only for several stages.
  """
  how = f" ({preset} preset)" if num_stages > 1 else ""
  aug = augmentation(prep, augname, stage.randaug_magnitude, arithmetic)
  return (f"stage {stage.index + 1}/{num_stages}{how}: "
          f"steps {stage.start_step}-{stage.end_step} ({stage.steps}), "
          f"image size {stage.image_size}, {aug}, mixup "
          f"alpha {stage.mixup_alpha:g}, cutmix alpha {stage.cutmix_alpha:g}, "
          f"dropout {stage.dropout:g}")
