"""Tests of the progressive-learning schedule (paper Algorithm 1, Table 6)."""

import dataclasses

import pytest

from effnetv2_tf import config as config_lib
from effnetv2_tf.data import preprocessing
from effnetv2_tf.training import progressive


def _stages(model, dataset="imagenet", hparams="", total=400):
  config = config_lib.build_config(model, dataset, hparams)
  return progressive.plan_stages(config, total)


def _values(stages):
  return [(s.image_size, s.randaug_magnitude, s.mixup_alpha, s.dropout)
          for s in stages]


@pytest.mark.parametrize("model, maxima", [
    ("efficientnetv2-s", (300, 15, 0.0, 0.3)),
    ("efficientnetv2-m", (380, 20, 0.2, 0.4)),
    ("efficientnetv2-l", (380, 25, 0.4, 0.5)),
])
def test_paper_preset_is_algorithm_1_with_table_6(model, maxima):
  s_e, r_e, m_e, d_e = maxima
  s_0, r_0, m_0, d_0 = 128, 5, 0.0, 0.1  # Table 6 minima
  expected = []
  for i in range(4):
    t = i / 3
    expected.append((int(s_0 + (s_e - s_0) * t), r_0 + (r_e - r_0) * t,
                     m_0 + (m_e - m_0) * t, d_0 + (d_e - d_0) * t))
  got = _values(_stages(model))
  for g, e in zip(got, expected):
    assert g[0] == e[0]
    assert g[1:] == pytest.approx(e[1:])
  assert got[-1][0] == s_e  # the last stage is exactly S_e


def test_paper_preset_s_sizes_by_hand():
  assert [s.image_size for s in _stages("efficientnetv2-s")] == [
      128, 185, 242, 300]


def test_reference_preset_regularization_uses_its_own_ratio():
  # main_tf2.py: the size at (i + 1) / M, regularization at
  # np.linspace(...)[i], i / (M - 1): RandAugment starts at 5, not at 6.25.
  # (Full reference tables: tests/test_preprocessing.py.)
  stages = _stages("efficientnetv2-s", hparams="progressive.preset=reference")
  assert [s.image_size for s in stages] == [171, 214, 257, 300]
  assert stages[0].randaug_magnitude == 5.0
  assert stages[-1].randaug_magnitude == 10.0
  assert all(s.dropout == 0.2 for s in stages)


def test_models_without_table_6_column():
  stages = _stages("efficientnetv2-b0")
  assert stages[0].image_size == 128 and stages[-1].image_size == 192
  assert stages[-1].randaug_magnitude == 15 and stages[-1].dropout == 0.2
  assert stages[0].dropout == 0.1


def test_steps_split_with_remainder_to_last_stage():
  stages = _stages("efficientnetv2-s", total=403)
  assert [s.steps for s in stages] == [100, 100, 100, 103]
  assert [s.start_step for s in stages] == [0, 100, 200, 300]
  assert [s.end_step for s in stages] == [100, 200, 300, 403]
  with pytest.raises(ValueError, match="cannot fill"):
    _stages("efficientnetv2-s", total=3)


def test_config_overrides_and_single_stage():
  stages = _stages("efficientnetv2-b0", "digits")
  assert [s.image_size for s in stages] == [32, 40, 48, 56]
  one = _stages("efficientnetv2-s", "imagenet21k")
  assert len(one) == 1 and one[0].image_size == 224
  assert (one[0].mixup_alpha, one[0].dropout) == (0, 0)


def test_random_resize_draws_stage_values_every_k_epochs():
  config = config_lib.build_config(
      "efficientnetv2-s", "imagenet",
      "progressive.random_resize=true,progressive.random_resize_epochs=2")
  stages = progressive.plan(config, total_steps=100, steps_per_epoch=10)
  assert [s.steps for s in stages] == [20] * 5
  allowed = {v for v in _values(progressive.plan_stages(config, 100))}
  assert all(v in allowed for v in _values(stages))


def test_describe_line_names_the_augmentation_used():
  stage = _stages("efficientnetv2-m")[1]
  v2 = preprocessing.ROWS["v2"]  # random crop and flip (reference preprocessing.py)
  line = progressive.describe(stage, 4, "paper", v2, "randaug")
  for part in ("stage 2/4 (paper preset)", "image size 212",
               "random crop, flip, RandAugment magnitude", "mixup alpha",
               "cutmix alpha", "dropout"):
    assert part in line
  # The magnitude only where RandAugment runs.
  assert "flip, AutoAugment," in progressive.describe(stage, 4, "paper", v2,
                                                      "autoaug")
  # The finetune recipe: whole image, flip, cutout; one stage, no preset.
  first = _stages("efficientnetv2-m")[0]
  finetune = preprocessing.ROWS["finetune"]
  line = progressive.describe(first, 1, "paper", finetune, "")
  assert line.startswith("stage 1/1: ") and " flip, cutout, mixup" in line
  bare = dataclasses.replace(finetune, random_flip=False, cutout=False)
  assert "no augmentation," in progressive.describe(first, 1, "paper", bare,
                                                    "")


def test_remaining_cost_weighs_later_stages_by_their_pixels():
  def stage(index, start, size):
    return progressive.Stage(index, start, 10, size, 5.0, 0.0, 0.0, 0.1)
  stages = [stage(0, 0, 100), stage(1, 10, 200), stage(2, 20, 150)]
  # 5 steps left at 100 px, then 10 at 4x and 10 at 2.25x the pixels.
  assert progressive.remaining_cost(stages, stages[0], 5) == 5 + 40 + 22.5
  assert progressive.remaining_cost(stages, stages[2], 20) == 10
  assert progressive.remaining_cost(stages, stages[2], 30) == 0
