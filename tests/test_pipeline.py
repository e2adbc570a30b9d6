"""Tests of the per-stage training and the padded evaluation pipelines."""

import shutil

import numpy as np
import pytest
import tensorflow as tf

import dataclasses

from effnetv2_tf.data import pipeline
from effnetv2_tf.data import preprocessing
from effnetv2_tf.data import sources
from effnetv2_tf.training import progressive

from conftest import SAMPLES
SCALE = preprocessing.ROWS["v2"]  # the V2 preprocessing: (x - 128) / 128


@pytest.fixture(scope="module")
def digits():
  return sources.digits_source()


@pytest.fixture()
def photo_folder(tmp_path):
  """9 real photos in 3 classes, plus one corrupt and one truncated JPEG."""
  files = sorted(SAMPLES.glob("*.JPEG"))[:9]
  if len(files) < 9:
    pytest.skip(f"shared samples missing under {SAMPLES}")
  for i, f in enumerate(files):
    class_dir = tmp_path / f"c{i % 3}"
    class_dir.mkdir(exist_ok=True)
    shutil.copy(f, class_dir / f.name)
  (tmp_path / "c0" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  return tmp_path


def _stage(size, randaug=0.0, mixup=0.0, cutmix=0.0):
  """A one-stage plan's stage at `size` with these regularization values."""
  return progressive.Stage(index=0, start_step=0, steps=1, image_size=size,
                           randaug_magnitude=randaug, mixup_alpha=mixup,
                           cutmix_alpha=cutmix, dropout=0.0)


def _first(ds, n=1):
  return list(ds.take(n).as_numpy_iterator())


def test_stage_sizes_appear_in_output_shapes(digits):
  for size in (16, 24):
    ds = pipeline.build_train_dataset(
        digits, 8, _stage(size), pipeline.TrainInput(SCALE), seed=1)
    assert ds.element_spec["images"].shape == (8, size, size, 3)
    (batch,) = _first(ds)
    assert batch["images"].shape == (8, size, size, 3)
    assert batch["labels"].shape == (8, 10)
    assert -1.0 <= batch["images"].min() and batch["images"].max() < 1.0
    np.testing.assert_allclose(batch["labels"].sum(1), 1.0, rtol=1e-6)


def test_same_seed_same_batches_other_seed_differs(digits):
  def build(seed):
    return pipeline.build_train_dataset(
        digits, 4, _stage(20, randaug=10, mixup=0.2),
        pipeline.TrainInput(SCALE, augname="randaug"), seed=seed)
  a, b, c = _first(build(3), 2), _first(build(3), 2), _first(build(4), 2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["images"], y["images"])
    np.testing.assert_array_equal(x["labels"], y["labels"])
  assert not np.array_equal(a[0]["images"], c[0]["images"])


def test_label_smoothing_and_mixup_targets(digits):
  smooth = _first(pipeline.build_train_dataset(
      digits, 8, _stage(16), pipeline.TrainInput(SCALE, label_smoothing=0.1),
      seed=0))[0]["labels"]
  np.testing.assert_allclose(np.sort(smooth, 1)[:, -1], 0.91, rtol=1e-6)
  mixed = _first(pipeline.build_train_dataset(
      digits, 8, _stage(16, mixup=1.0, cutmix=1.0), pipeline.TrainInput(SCALE),
      seed=0))[0]
  np.testing.assert_allclose(mixed["labels"].sum(1), 1.0, rtol=1e-6)
  assert (mixed["labels"] > 0).sum(1).max() == 2  # two classes per row


@pytest.mark.parametrize("augname", ["randaug", "autoaug"])
def test_augmented_jpeg_stage_and_corrupt_skipped(photo_folder, augname):
  source = sources.folder_source(str(photo_folder))
  ds = pipeline.build_train_dataset(
      source, 4, _stage(32, randaug=15, mixup=0.2),
      pipeline.TrainInput(preprocessing.ROWS["legacy"], augname=augname,
                          shuffle_buffer=16), seed=0)
  batches = _first(ds, 5)  # 20 examples: two passes over the 9 good ones
  assert all(b["images"].shape == (4, 32, 32, 3) for b in batches)
  assert all(np.isfinite(b["images"]).all() for b in batches)
  skipped = [int(b["skipped"]) for b in batches]
  assert skipped == sorted(skipped) and 1 <= skipped[-1] <= 3


def test_eval_counts_every_example_once_with_padding(digits):
  ds = pipeline.build_eval_dataset(digits, 64, 24, SCALE)
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == pipeline.eval_steps(360, 64) == 6
  assert all(b["images"].shape == (64, 24, 24, 3) for b in batches)
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks.sum() == 360 and np.all(masks[:360] == 1)
  labels = np.concatenate([b["labels"] for b in batches])
  expected = sources.digits_source().arrays["validation"][1]
  np.testing.assert_array_equal(labels[:360].argmax(1), expected)
  assert np.all(labels[360:] == 0)


def test_eval_shards_over_pipelines_with_equal_batch_counts(digits):
  # 2 pipelines x 1 replica each, per-replica batch 50: 360 -> 4 steps of
  # 100, the second pipeline gets 180 examples and a padding batch.
  per_pipeline = []
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(2, pipeline_id, 2)
    ds = pipeline.build_eval_dataset(digits, 50, 16, SCALE,
                                     input_context=context)
    per_pipeline.append(list(ds.as_numpy_iterator()))
  assert [len(b) for b in per_pipeline] == [4, 4]
  total = sum(b["mask"].sum() for batches in per_pipeline for b in batches)
  assert total == 360


def test_eval_skips_and_counts_corrupt_image(photo_folder):
  source = sources.folder_source(str(photo_folder))
  assert source.num_examples("train") == 9  # the 10th file is held out
  ds = pipeline.build_eval_dataset(source, 4, 32, SCALE, split="train")
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == 3  # 9 files incl. the corrupt one, batch 4
  assert sum(b["mask"].sum() for b in batches) == 8
  assert max(int(b["skipped"]) for b in batches) == 1


def test_random_flip_off_keeps_orientation():
  # A left-dark, right-bright image, cropped whole: flips show as a
  # brighter left half.
  image = np.zeros([8, 8, 3], np.uint8)
  image[:, 4:] = 255
  features = {"image": tf.constant(image)}

  def left_brighter(random_flip):
    flipped = 0
    prep = dataclasses.replace(preprocessing.ROWS["v2"], crop_area_min=1.0,
                               random_flip=random_flip)
    for i in range(32):
      out = pipeline.train_preprocess(
          features, tf.constant([i, 0]), 8, prep).numpy()
      flipped += int(out[:, :4].mean() > out[:, 4:].mean())
    return flipped

  assert left_brighter(False) == 0
  assert 4 < left_brighter(True) < 28  # about half
