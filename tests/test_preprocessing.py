"""Model and dataset recipes against numbers written down from the reference.

Every expected value below is transcribed from the reference code
(google/automl, efficientnetv2/; the file is named at each test), computed
by hand from its formulas, not read back from our configs.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf import export
from effnetv2_tf.data import pipeline
from effnetv2_tf.data import preprocess
from effnetv2_tf.data import preprocessing
from effnetv2_tf.data import sources
from effnetv2_tf.data import tfrecord_format
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import progressive

REFERENCE = "progressive.preset=reference"


def _stages(model, dataset="imagenet", hparams=REFERENCE):
  config = config_lib.build_config(model, dataset, hparams)
  return [(s.image_size, s.randaug_magnitude, s.mixup_alpha, s.cutmix_alpha,
           s.dropout) for s in progressive.plan_stages(config, 400)]


# main_tf2.py stage loop (main.py the same), ibase=128 (hparams.py), per
# model (effnetv2_configs.py: train size, ram, mixup = cutmix, dropout):
#   size = int(128 + (train - 128) * (i + 1) / 4)
#   np.linspace(5, ram, 4)[i], np.linspace(0, mixup, 4)[i], same for CutMix
@pytest.mark.parametrize("model, expected", [
    ("efficientnetv2-s", [(171, 5.0, 0, 0, 0.2), (214, 20 / 3, 0, 0, 0.2),
                          (257, 25 / 3, 0, 0, 0.2), (300, 10.0, 0, 0, 0.2)]),
    ("efficientnetv2-m", [(192, 5.0, 0, 0, 0.3),
                          (256, 25 / 3, 0.2 / 3, 0.2 / 3, 0.3),
                          (320, 35 / 3, 0.4 / 3, 0.4 / 3, 0.3),
                          (384, 15.0, 0.2, 0.2, 0.3)]),
    ("efficientnetv2-l", [(192, 5.0, 0, 0, 0.4), (256, 10.0, 1 / 6, 1 / 6, 0.4),
                          (320, 15.0, 1 / 3, 1 / 3, 0.4),
                          (384, 20.0, 0.5, 0.5, 0.4)]),
    ("efficientnetv2-xl", [(192, 5.0, 0, 0, 0.4),
                           (256, 10.0, 1 / 6, 1 / 6, 0.4),
                           (320, 15.0, 1 / 3, 1 / 3, 0.4),
                           (384, 20.0, 0.5, 0.5, 0.4)]),
])
def test_reference_preset_stage_tables(model, expected):
  got = _stages(model)
  assert [g[0] for g in got] == [e[0] for e in expected]
  np.testing.assert_allclose([g[1:] for g in got], [e[1:] for e in expected],
                             rtol=1e-9, atol=1e-12)


def test_paper_preset_is_table_6_without_cutmix():
  # Paper Table 6 (S): size 128 -> 300, RandAugment 5 -> 15, mixup 0,
  # dropout 0.1 -> 0.3, at i / (M - 1); the paper's text uses no CutMix.
  got = _stages("efficientnetv2-l", hparams="")
  assert [g[0] for g in got] == [128, 212, 296, 380]
  np.testing.assert_allclose([g[3] for g in got], 0.0)
  np.testing.assert_allclose([g[2] for g in got], [0, 0.4 / 3, 0.8 / 3, 0.4])
  np.testing.assert_allclose([g[4] for g in got], [0.1, 0.2 + 1 / 30,
                                                   0.3 + 2 / 30, 0.5])


# main.py: train_size = int(eval_size * isize) // 16 * 16 for isize <= 16;
# ImagenetFt (datasets.py) isize=1.0, stages=0; eval sizes from
# effnetv2_configs.py.
@pytest.mark.parametrize("model, size", [
    ("efficientnetv2-s", 384), ("efficientnetv2-m", 480),
    ("efficientnetv2-l", 480), ("efficientnetv2-xl", 512),
    ("efficientnetv2-b0", 224), ("efficientnetv2-b2", 256),
    ("efficientnetv2-b3", 288), ("efficientnet-b4", 368)])
@pytest.mark.parametrize("dataset", ["imagenetft", "cifar10ft"])
def test_finetune_trains_one_stage_at_eval_size_rounded_to_16(model, size,
                                                              dataset):
  for preset in ("", REFERENCE):
    assert _stages(model, dataset, preset) == [(size, 0.0, 0.0, 0.0, 0.0)]


# effnetv2_configs.py: V1 train.isize=0.8 of the eval size (224, 240, 260,
# 300, 380, 456, 528, 600), no stages (hparams.py train.stages=0).
@pytest.mark.parametrize("model, size", [
    ("efficientnet-b0", 176), ("efficientnet-b1", 192),
    ("efficientnet-b2", 208), ("efficientnet-b3", 240),
    ("efficientnet-b4", 304), ("efficientnet-b5", 352),
    ("efficientnet-b6", 416), ("efficientnet-b7", 480)])
def test_v1_train_sizes_and_one_stage(model, size):
  for preset in ("", REFERENCE):
    stages = _stages(model, "imagenet", preset)
    assert len(stages) == 1 and stages[0][0] == size


def _image(height, width):
  pixels = np.arange(height * width * 3).reshape(height, width, 3) % 251
  return tf.constant(pixels, tf.uint8)


# preprocess_legacy.py _decode_and_center_crop: side int(size / (size + 32)
# * min(h, w)), offset ((h - side) + 1) // 2, at every size (V1 B4-B7 too).
@pytest.mark.parametrize("model, eval_size", [
    ("efficientnet-b4", 380), ("efficientnet-b5", 456),
    ("efficientnet-b6", 528), ("efficientnet-b7", 600)])
def test_v1_eval_center_crops_at_380_to_600(model, eval_size):
  config = config_lib.build_config(model, "imagenet")
  assert config.model.eval_size == eval_size
  image = _image(401, 500)
  side = int(eval_size / (eval_size + 32) * 401)
  top, left = (401 - side + 1) // 2, (500 - side + 1) // 2
  crop = preprocess.eval_crop({"image": image}, eval_size,
                              run_dir.preprocessing_of(config))
  np.testing.assert_array_equal(
      crop.numpy(), image.numpy()[top:top + side, left:left + side])


def test_imagenet21k_scales_every_model_to_minus_one_one():
  # datasets.py ImageNet21k: augname None, so preprocessing.py's non-ft
  # branch: (x - 128) / 128 and the < 320 px center crop, B0 included.
  for model in ("efficientnetv2-b0", "efficientnetv2-s", "efficientnet-b3"):
    config = config_lib.build_config(model, "imagenet21k")
    prep = run_dir.preprocessing_of(config)
    out = preprocess.normalize(tf.constant([0.0, 128.0, 255.0]),
                               prep.input_scaling)
    np.testing.assert_allclose(out.numpy(), [-1.0, 0.0, 127 / 128])
    assert prep.resize_method == "bilinear" and prep.crop_offset == "floor"
    assert prep.eval_crop and prep.skip_crop_from_size == 320
  # On ImageNet-1k B0 keeps its legacy mean/std scaling.
  legacy = run_dir.preprocessing_of(
      config_lib.build_config("efficientnetv2-b0", "imagenet"))
  assert legacy.input_scaling == preprocessing.SCALE_IMAGENET


def test_finetune_scaling_is_half_half_for_every_model():
  # preprocessing.py preprocess_for_finetune: (x / 255 - 0.5) / 0.5.
  for model in ("efficientnetv2-b0", "efficientnetv2-l"):
    prep = run_dir.preprocessing_of(config_lib.build_config(model,
                                                           "flowersft"))
    out = preprocess.normalize(tf.constant([0.0, 51.0, 255.0]),
                               prep.input_scaling)
    np.testing.assert_allclose(out.numpy(), [-1.0, -0.6, 1.0], atol=1e-6)
    assert not prep.train_crop and prep.cutout and not prep.eval_crop


def test_config_json_holds_every_resolved_preprocessing_value():
  config = config_lib.build_config("efficientnetv2-b0", "imagenet")
  data = json.loads(config.to_json())["data"]
  for name in preprocessing.FIELDS + ("preprocessing",):
    assert data[name] is not None, name
  # The legacy row (preprocess_legacy.py): area 0.08, 10 attempts, bicubic.
  assert (data["crop_area_min"], data["crop_max_attempts"],
          data["resize_method"]) == (0.08, 10, "bicubic")
  progressive_values = json.loads(config.to_json())["progressive"]
  assert progressive_values["max_image_size"] == 192  # B0's train size


def test_dataset_config_wins_over_model_and_user_over_both():
  config = config_lib.build_config(
      "efficientnetv2-b0", "imagenet21k", "data.resize_method=bicubic")
  assert config.data.preprocessing == "v2"
  assert config.data.input_scaling == preprocessing.SCALE_MINUS_ONE_ONE
  assert config.data.resize_method == "bicubic"
  with pytest.raises(config_lib.ConfigError, match="data.resize_method"):
    config_lib.build_config("efficientnetv2-b0", "imagenet",
                            "data.resize_method=area")


def test_decode_per_row_and_override():
  # preprocess_legacy.py L68, L125: decode_and_crop_jpeg (B0 on ImageNet);
  # preprocessing.py L142: decode_image, then a slice (B0 on ImageNet-21k,
  # its finetune branch too).
  for dataset, decode in (("imagenet", "fused"), ("imagenet21k", "whole"),
                          ("cifar10ft", "whole")):
    config = config_lib.build_config("efficientnetv2-b0", dataset)
    assert config.data.decode == decode, dataset
  config = config_lib.build_config("efficientnetv2-b0", "imagenet",
                                   "data.decode=whole")
  assert run_dir.preprocessing_of(config).decode == "whole"
  with pytest.raises(config_lib.ConfigError, match="data.decode"):
    config_lib.build_config("efficientnetv2-b0", "imagenet",
                            "data.decode=partial")
  # A config.json written before the field existed: its row's decode.
  old_run = run_dir.upgrade_config(
      {"model": {"name": "efficientnetv2-b0"},
       "data": {"name": "digits", "preprocessing": "legacy"}}, "x")
  assert run_dir.preprocessing_of(old_run).decode == "fused"


@pytest.mark.parametrize("row", sorted(preprocessing.ROWS))
@pytest.mark.parametrize("size", [224, 384])
def test_export_serves_the_eval_preprocessing(row, size):
  image = _image(301, 411)
  prep = preprocessing.ROWS[row]
  expected = preprocess.eval_preprocess({"image": image}, size, prep)
  module = export.ServingModule(None, size, prep)
  served = module.preprocess(tf.cast(image, tf.float32)[tf.newaxis])[0]
  np.testing.assert_allclose(served.numpy(), expected.numpy(), atol=1e-4)


def _write_shards(data_dir, split, count, multi_label=False):
  for i in range(count):
    jpeg = tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()
    label = [i + 1] if multi_label else i + 1
    path = data_dir / tfrecord_format.shard_name(split, i, count)
    with tf.io.TFRecordWriter(str(path)) as writer:
      writer.write(tfrecord_format.make_example(jpeg, label)
                   .SerializeToString())


def _file_indices(source, split):
  return sorted(int(np.argmax(ex["label"])) for ex in source.read(split))


def test_default_imagenet_split_leaves_20_minival_files_out(tmp_path):
  # datasets.py ImageNetInput: train slice(20, None) (1,256,144 images),
  # minival slice(0, 20).
  _write_shards(tmp_path, "train", 24)
  _write_shards(tmp_path, "validation", 1)
  config = config_lib.build_config(
      "efficientnetv2-b0", "imagenet",
      f"model.num_classes=24,data.data_dir={tmp_path}")
  source = sources.from_config(config)
  assert _file_indices(source, "train") == [20, 21, 22, 23]
  assert _file_indices(source, "minival") == list(range(20))
  assert source.num_examples("validation") == 1


def test_default_imagenet21k_splits(tmp_path):
  # datasets.py ImageNet21kInput: eval slice(0, 16), minival slice(16, 20),
  # train slice(20, None).
  _write_shards(tmp_path, "train", 24, multi_label=True)
  config = config_lib.build_config(
      "efficientnetv2-s", "imagenet21k",
      f"model.num_classes=24,data.data_dir={tmp_path}")
  source = sources.from_config(config)
  assert _file_indices(source, "validation") == list(range(16))
  assert _file_indices(source, "minival") == [16, 17, 18, 19]
  assert _file_indices(source, "train") == [20, 21, 22, 23]


def test_too_few_files_for_minival_names_the_key(tmp_path):
  _write_shards(tmp_path, "train", 3)
  config = config_lib.build_config(
      "efficientnetv2-b0", "imagenet",
      f"model.num_classes=3,data.data_dir={tmp_path}")
  with pytest.raises(ValueError, match="data.minival_files=0"):
    sources.from_config(config)


def test_finetune_train_example_is_the_whole_image_with_noise_cutout():
  # preprocess_for_finetune: no crop, resize, flip, cutout with [0, 1)
  # noise on the scaled image; a white image scales to 1.0 everywhere else.
  features = {"image": tf.fill([20, 30, 3], tf.constant(255, tf.uint8))}
  out = pipeline.train_preprocess(features, tf.constant([3, 4]), 32,
                                  preprocessing.ROWS["finetune"]).numpy()
  cut = out[..., 0] < 1.0 - 1e-6
  assert out.shape == (32, 32, 3) and 0 < cut.sum() <= 32 * 32 // 4
  np.testing.assert_allclose(out[~cut], 1.0, atol=1e-6)
  assert 0.0 <= out[cut].min() and out[cut].max() < 1.0


def test_include_preprocessing_takes_another_recipes_scaling():
  from effnetv2_tf import create_model  # pylint: disable=g-import-not-at-top
  tiny = dict(width_coefficient=0.1, depth_coefficient=0.1,
              input_shape=(32, 32, 3), include_preprocessing=True)
  model = create_model("efficientnetv2-b0", input_scaling=(
      preprocessing.SCALE_FINETUNE), **tiny)
  rescale = model.get_layer("rescaling")
  x = tf.constant([[[[0.0, 51.0, 255.0]]]])
  np.testing.assert_allclose(rescale(x).numpy().ravel(), [-1.0, -0.6, 1.0],
                             atol=1e-6)
  default = create_model("efficientnetv2-b0", **tiny).get_layer("rescaling")
  np.testing.assert_allclose(  # B0's own (legacy) row: mean/std
      default(tf.constant([[[[0.485 * 255, 0.456 * 255, 0.406 * 255]]]]))
      .numpy(), 0.0, atol=1e-5)
  with pytest.raises(ValueError, match="Unknown input scaling"):
    create_model("efficientnetv2-b0", input_scaling="bogus", **tiny)
