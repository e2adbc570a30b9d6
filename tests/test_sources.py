"""Tests of the dataset sources: TFRecords (1k and 21k), TFDS, folders, digits."""

import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from effnetv2_tf.data import sources

from conftest import SAMPLES


def _sample_files(n):
  files = sorted(SAMPLES.glob("*.JPEG"))[:n]
  if len(files) < n:
    pytest.skip(f"shared samples missing under {SAMPLES}")
  return files


def _bytes_feature(value):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _write_records(path, examples):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for features in examples:
      writer.write(tf.train.Example(features=tf.train.Features(
          feature=features)).SerializeToString())


def _jpeg():
  return tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()


def _imagenet_example(label):
  return {"image/encoded": _bytes_feature(_jpeg()),
          "image/class/label": _int_feature([label])}


def test_tfrecords_one_based_labels_and_counted_sizes(tmp_path):
  _write_records(tmp_path / "train-00000-of-00002", [
      _imagenet_example(1), _imagenet_example(5)])
  _write_records(tmp_path / "train-00001-of-00002", [_imagenet_example(3)])
  _write_records(tmp_path / "validation-00000-of-00001", [
      _imagenet_example(2)])
  source = sources.tfrecord_source("imagenet", str(tmp_path), num_classes=5)
  assert source.split_sizes == {"train": 3, "validation": 1}
  labels = sorted(int(np.argmax(ex["label"]))
                  for ex in source.read("train", shuffle_files_seed=0))
  assert labels == [0, 2, 4]


def test_tfrecords_sizes_from_dataset_info_shards(tmp_path):
  _write_records(tmp_path / "train-00000-of-00001", [_imagenet_example(1)])
  (tmp_path / "dataset_info.json").write_text(json.dumps(
      {"shards": {"train-00000-of-00001": 1234}}))
  source = sources.tfrecord_source("imagenet", str(tmp_path), num_classes=5)
  assert source.num_examples("train") == 1234  # trusted, not recounted
  with pytest.raises(ValueError, match="no size known for split 'x'"):
    source.num_examples("x")


def test_tfrecords_class_count_from_dataset_info(tmp_path):
  _write_records(tmp_path / "train-00000-of-00001", [_imagenet_example(1)])
  source = sources.tfrecord_source("imagenet", str(tmp_path), num_classes=5)
  assert source.num_classes == 5  # no dataset_info.json: the config's
  (tmp_path / "dataset_info.json").write_text(json.dumps({"num_classes": 3}))
  source = sources.tfrecord_source("imagenet", str(tmp_path), num_classes=5)
  assert source.num_classes == 3
  assert list(source.read("train"))[0]["label"].shape == (3,)


def test_check_names_what_a_run_lacks(tmp_path):
  digits = sources.digits_source()
  sources.check(digits, ["train", "validation"])
  with pytest.raises(sources.DataError, match="'minival' split is missing "
                     r"\(splits: train \(1437\), validation \(360\)\)"):
    sources.check(digits, ["train", "minival"])
  digits.split_sizes["validation"] = 0
  with pytest.raises(sources.DataError, match="'validation' split is empty"):
    sources.check(digits, ["validation"])
  digits.num_classes = 1
  with pytest.raises(sources.DataError, match="at least two"):
    sources.check(digits, ["train"])
  # TFRecords without validation files: how to write them.
  _write_records(tmp_path / "train-00000-of-00001", [_imagenet_example(1)])
  records = sources.tfrecord_source("imagenet", str(tmp_path), num_classes=5)
  with pytest.raises(sources.DataError, match=r"Write validation-\* files "
                     r"\(python -m effnetv2_tf.data.make_tfrecords "
                     r"--split=validation\), or set data.eval_split"):
    sources.check(records, ["train", "validation"])


def test_tfrecords_minival_holds_out_first_files(tmp_path):
  for i in range(4):
    _write_records(tmp_path / f"train-{i:05d}-of-00004",
                   [_imagenet_example(i + 1)] * (i + 1))
  source = sources.tfrecord_source("imagenet", str(tmp_path), num_classes=4,
                                   minival_files=1)
  assert source.split_sizes == {"train": 2 + 3 + 4, "minival": 1}
  minival = [int(np.argmax(ex["label"])) for ex in source.read("minival")]
  assert minival == [0]


def test_tfrecords_label_out_of_range_names_the_file(tmp_path):
  bad = tmp_path / "train-00000-of-00001"
  _write_records(bad, [_imagenet_example(7)])
  source = sources.tfrecord_source("imagenet", str(tmp_path), num_classes=5)
  with pytest.raises(tf.errors.InvalidArgumentError, match=str(bad)):
    list(source.read("train"))


def test_tfrecords_missing_files_name_the_pattern(tmp_path):
  with pytest.raises(sources.DataNotFoundError,
                     match=str(tmp_path / "train-\\*")):
    sources.tfrecord_source("imagenet", str(tmp_path), num_classes=5)


def test_imagenet21k_reference_format_multi_hot_normalised(tmp_path):
  examples = [{"image": _bytes_feature(_jpeg()), "labels": _int_feature(
      labels), "id": _bytes_feature(b"x")} for labels in ([0, 3], [2], [1, 2, 4])]
  for i in range(3):
    _write_records(tmp_path / f"train-{i:05d}-of-00003", [examples[i]])
  source = sources.tfrecord_source("imagenet21k", str(tmp_path), num_classes=6,
                                   multi_label=True, eval_files=1)
  assert source.split_sizes == {"train": 2, "validation": 1}
  (first,) = list(source.read("validation"))
  np.testing.assert_allclose(first["label"].numpy(), [.5, 0, 0, .5, 0, 0])
  targets = sorted(tuple(ex["label"].numpy()) for ex in source.read("train"))
  np.testing.assert_allclose(targets[0], [0, 0, 1, 0, 0, 0])
  np.testing.assert_allclose(targets[1], [0, 1 / 3, 1 / 3, 0, 1 / 3, 0],
                             rtol=1e-6)


def test_imagenet21k_our_format_one_based_list(tmp_path):
  example = {"image/encoded": _bytes_feature(_jpeg()),
             "image/class/label": _int_feature([1, 2])}
  _write_records(tmp_path / "train-00000-of-00001", [example])
  _write_records(tmp_path / "validation-00000-of-00001", [example])
  source = sources.tfrecord_source("in21k", str(tmp_path), num_classes=3,
                                   multi_label=True)
  (ex,) = list(source.read("validation"))
  np.testing.assert_allclose(ex["label"].numpy(), [.5, .5, 0])


def test_digits_split_and_pixels():
  source = sources.digits_source()
  assert source.split_sizes == {"train": 1437, "validation": 360}
  images, labels = source.arrays["validation"]
  assert images.shape == (360, 32, 32, 3) and images.dtype == np.uint8
  assert images.max() == 255 and images.min() == 0
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  np.testing.assert_array_equal(labels, digits.target[::5])
  # 4x nearest-neighbour upscale of 0..16 ink scaled to 0..255.
  np.testing.assert_array_equal(
      images[1, ::4, ::4, 0], np.round(digits.images[5] * 255 / 16))
  ex = next(iter(source.read("train")))
  assert ex["label"].shape == (10,) and ex["image"].dtype == tf.uint8


def _make_folder(root, per_class):
  files = _sample_files(3 * per_class)
  for i, f in enumerate(files):
    class_dir = root / ["cat", "Bird", "dog"][i % 3]
    class_dir.mkdir(parents=True, exist_ok=True)
    name = f.name if i % 2 else f.stem + ".jpg"  # both letter cases
    shutil.copy(f, class_dir / name)
  (root / "dog" / "notes.txt").write_text("not an image")


def test_folder_unreadable_images_are_named_and_left_out(tmp_path):
  _make_folder(tmp_path, per_class=4)  # 12 real photos
  (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  source = sources.folder_source(str(tmp_path))
  assert sum(source.split_sizes.values()) == 13
  assert source.drop_unreadable() == [str(tmp_path / "cat" / "broken.jpg")]
  assert sum(source.split_sizes.values()) == 12
  assert all(str(tmp_path / "cat" / "broken.jpg") not in files
             for files, _ in source.examples.values())
  assert source.drop_unreadable() == []  # nothing left to drop
  assert sources.folder_source(str(tmp_path)).drop_unreadable(
      max_files=5) == ()  # too many to check up front


def test_folder_source_holds_out_every_tenth(tmp_path):
  _make_folder(tmp_path, per_class=10)
  source = sources.folder_source(str(tmp_path))
  assert source.class_names == ("Bird", "cat", "dog")
  assert source.split_sizes == {"train": 27, "validation": 3}
  labels = [int(np.argmax(ex["label"])) for ex in source.read("validation")]
  assert labels == [0, 1, 2]
  ex = next(iter(source.read("train")))
  assert tf.io.is_jpeg(ex["encoded"])


def test_folder_source_train_val_subfolders(tmp_path):
  _make_folder(tmp_path / "train", per_class=2)
  _make_folder(tmp_path / "val", per_class=1)
  source = sources.folder_source(str(tmp_path))
  assert source.split_sizes == {"train": 6, "validation": 3}


def test_folder_source_train_alone_holds_out_every_tenth(tmp_path):
  _make_folder(tmp_path / "train", per_class=10)
  source = sources.folder_source(str(tmp_path))
  assert source.class_names == ("Bird", "cat", "dog")
  assert source.split_sizes == {"train": 27, "validation": 3}
  assert source.split_rule.startswith(f"{tmp_path}/train, every 10th")


@pytest.mark.parametrize("change, message", [
    (lambda val: shutil.rmtree(val / "cat"), "lacks the class folder"
     r"\(s\) cat of .*/train; make its class folders those of"),
    (lambda val: shutil.copytree(val / "cat", val / "cow"),
     r"has class folder\(s\) cow that"),
    (lambda val: [f.unlink() for f in val.glob("*/*")], "holds no images"),
])
def test_a_validation_folder_that_does_not_fit_is_named(tmp_path, change,
                                                        message):
  _make_folder(tmp_path / "train", per_class=2)
  _make_folder(tmp_path / "validation", per_class=1)
  change(tmp_path / "validation")
  with pytest.raises(sources.DataError,
                     match=f"/validation {message}.*remove .*/validation "
                     "to hold out every 10th training image"):
    sources.folder_source(str(tmp_path))


def test_folder_source_errors(tmp_path):
  with pytest.raises(sources.DataNotFoundError, match="does not exist"):
    sources.folder_source(str(tmp_path / "missing"))
  (tmp_path / "empty_class").mkdir()
  with pytest.raises(sources.DataNotFoundError, match="No images"):
    sources.folder_source(str(tmp_path))
  # One empty class beside others is named, not counted as a class.
  _make_folder(tmp_path, per_class=2)
  with pytest.raises(sources.DataError, match="empty_class holds no image"):
    sources.folder_source(str(tmp_path))


def test_tfds_missing_fails_fast_with_where_it_looked(tmp_path):
  with pytest.raises(sources.DataNotFoundError) as err:
    sources.tfds_source("cifar10", data_dir=str(tmp_path))
  assert str(tmp_path) in str(err.value) and "tfds build" in str(err.value)


def test_tfds_source_with_mock_data(monkeypatch):
  # mock_data replaces the records; the on-disk check is patched with it.
  monkeypatch.setattr(sources, "_tfds_prepared", lambda builder: True)
  with tfds.testing.mock_data(num_examples=6):
    source = sources.tfds_source("cifar100", data_dir="/nonexistent",
                                 split_sizes={"train": 6, "validation": 6})
    assert source.num_classes == 100
    examples = list(source.read("validation"))
  assert len(examples) == 6
  assert examples[0]["image"].shape == (32, 32, 3)
  assert examples[0]["label"].shape == (100,)
  assert all(float(tf.reduce_sum(ex["label"])) == 1.0 for ex in examples)


def test_tfds_unknown_name():
  with pytest.raises(ValueError, match="Unknown TFDS dataset"):
    sources.tfds_source("no_such_dataset_xyz", data_dir="/nonexistent")


def test_input_context_shards_folder_examples(tmp_path):
  _make_folder(tmp_path, per_class=4)
  source = sources.folder_source(str(tmp_path))
  seen = []
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(2, pipeline_id, 2)
    seen += [ex["encoded"].numpy() for ex in source.read("train", context)]
  # Each training file's bytes exactly once over the two pipelines.
  assert sorted(seen) == sorted(
      pathlib.Path(f).read_bytes() for f in source.examples["train"][0])
