"""The augmentation ops' arithmetic (`data.augment_arithmetic`): its default
follows the progressive preset, an explicit value wins, and it reaches the
training pipeline (the ops themselves: tests/test_augment.py)."""

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf.data import pipeline
from effnetv2_tf.data import preprocessing
from effnetv2_tf.data import sources
from effnetv2_tf.training import custom_loop
from effnetv2_tf.training import progressive


def _arithmetic(hparams=""):
  return config_lib.build_config("efficientnetv2-s", "imagenet",
                                 hparams).data.augment_arithmetic


def test_default_follows_the_preset_and_an_explicit_value_wins():
  assert _arithmetic() == "paper"  # configs/base.py: preset "paper"
  assert _arithmetic("progressive.preset=reference") == "reference"
  assert _arithmetic("progressive.preset=reference,"
                     "data.augment_arithmetic=paper") == "paper"
  assert _arithmetic("data.augment_arithmetic=reference") == "reference"


def test_unknown_arithmetic_is_a_config_error():
  with pytest.raises(config_lib.ConfigError,
                     match="data.augment_arithmetic: 'pil'.*'reference'"):
    _arithmetic("data.augment_arithmetic=pil")


def test_an_older_run_without_the_key_follows_its_preset():
  run = config_lib.build_config(
      "efficientnetv2-s", "imagenet", "progressive.preset=reference")
  old = run.to_dict()
  del old["data"]["augment_arithmetic"]
  config = config_lib.build_config(dataset_cfg=None, run_config=old)
  assert config.data.augment_arithmetic == "reference"


def test_train_preprocess_passes_the_arithmetic():
  # RandAugment at m = 10: Solarize's threshold 256 inverts every pixel
  # under the reference's arithmetic and none under the paper's, so some
  # seeds (those drawing Solarize, Contrast, ...) differ.
  image = np.random.RandomState(0).randint(0, 256, (32, 32, 3), np.uint8)
  prep = preprocessing.ROWS["v2"]

  def run(seed, arithmetic):
    return pipeline.train_preprocess(
        {"image": image}, tf.constant([seed, 0], tf.int64), 32, prep,
        "randaug", 10.0, augment_arithmetic=arithmetic).numpy()

  same = [np.array_equal(run(s, "reference"), run(s, "paper"))
          for s in range(12)]
  assert any(same) and not all(same)


def test_train_dataset_passes_the_arithmetic():
  stage = progressive.Stage(index=0, start_step=0, steps=1, image_size=16,
                            randaug_magnitude=10.0, mixup_alpha=0.0,
                            cutmix_alpha=0.0, dropout=0.0)
  digits = sources.digits_source()

  def batch(arithmetic):
    train_input = pipeline.TrainInput(preprocessing.ROWS["v2"], augname="randaug",
                                      augment_arithmetic=arithmetic,
                                      shuffle_buffer=1)
    ds = pipeline.build_train_dataset(digits, 32, stage, train_input, seed=1)
    return next(iter(ds))["images"].numpy()

  ref, paper = batch("reference"), batch("paper")
  same = [np.array_equal(r, p) for r, p in zip(ref, paper)]
  assert any(same) and not all(same)


def test_trainer_hands_the_config_value_to_its_input(tmp_path):
  config = config_lib.build_config("efficientnetv2-b0", "smoke",
                                   "progressive.preset=reference")
  trainer = custom_loop.CustomLoopTrainer(config, str(tmp_path),
                                          tf.distribute.get_strategy())
  assert trainer.train_input.augment_arithmetic == "reference"


def test_stage_line_names_the_arithmetic():
  stage = progressive.Stage(index=3, start_step=0, steps=1, image_size=300,
                            randaug_magnitude=10.0, mixup_alpha=0.0,
                            cutmix_alpha=0.0, dropout=0.2)
  v2 = preprocessing.ROWS["v2"]
  line = progressive.describe(stage, 4, "reference", v2, "randaug",
                              "reference")
  assert "flip, RandAugment magnitude 10 (reference ops), mixup" in line
  line = progressive.describe(stage, 4, "paper", v2, "autoaug", "paper")
  assert "flip, AutoAugment (paper ops), mixup" in line
