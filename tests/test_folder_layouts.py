"""Image folders as users lay them out (issue 37): every format the decoder
reads, images in sub-folders of class folders, train/ val/ test/ split
folders, misnamed split folders, and a JPEG cut off in its header."""

import io

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf.data import make_tfrecords
from effnetv2_tf.data import pipeline
from effnetv2_tf.data import preprocessing
from effnetv2_tf.data import sources
from effnetv2_tf.data import tfrecord_format as fmt
from effnetv2_tf.training import progressive

Image = pytest.importorskip("PIL.Image")

RED, BLUE = (255, 0, 0), (0, 0, 255)
FORMATS = {".jpg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP",
           ".webp": "WEBP"}  # the formats infer.py reads, and WebP


def _image_bytes(color, image_format, size=8):
  data = io.BytesIO()
  Image.new("RGB", (size, size), color).save(data, image_format)
  return data.getvalue()


def _write(path, color=RED, ext=".png"):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(_image_bytes(color, FORMATS[ext]))
  return path


def _classes(root, per_class=2, classes=("cat", "dog")):
  for color, name in zip((RED, BLUE), classes):
    for i in range(per_class):
      _write(root / name / f"{i}.png", color)


def _labels(source, split):
  files, labels = source.examples[split]
  return dict(zip(files, labels))


def test_every_format_trains_and_other_files_are_named(tmp_path):
  # cat: red, dog: blue, each in all five formats; plus files no decoder
  # reads, named by extension in one line.
  for color, name in ((RED, "cat"), (BLUE, "dog")):
    for ext in FORMATS:
      _write(tmp_path / name / f"x{ext.upper()}", color, ext)
  (tmp_path / "cat" / "scan.tiff").write_bytes(b"II*\x00")
  (tmp_path / "dog" / "scan.TIFF").write_bytes(b"II*\x00")
  (tmp_path / "dog" / "notes.txt").write_text("not an image")
  (tmp_path / "dog" / ".DS_Store").write_bytes(b"hidden: not counted")
  source = sources.folder_source(str(tmp_path))
  assert source.split_sizes == {"train": 9, "validation": 1}
  assert source.notes == (
      f"Skipped 3 files under {tmp_path} that are not *.jpg, *.jpeg, *.png, "
      "*.gif, *.bmp, *.webp (any case): .tiff 2, .txt 1",)
  assert source.drop_unreadable() == []  # all ten decode

  # Through the evaluation pipeline: every image decodes to its colour.
  prep = preprocessing.ROWS["v2"]  # (x - 128) / 128
  batches = list(pipeline.build_eval_dataset(
      source, 16, 16, prep, split="train").as_numpy_iterator())
  assert sum(b["mask"].sum() for b in batches) == 9
  assert max(int(b["skipped"]) for b in batches) == 0
  images = np.concatenate([b["images"] for b in batches])[:9]
  labels = np.concatenate([b["labels"] for b in batches])[:9].argmax(1)
  red_minus_blue = images[..., 0].mean((1, 2)) - images[..., 2].mean((1, 2))
  np.testing.assert_array_equal(red_minus_blue > 1.5, labels == 0)
  np.testing.assert_array_equal(red_minus_blue < -1.5, labels == 1)

  # And the training pipeline, with the fused JPEG decode of the legacy row.
  stage = progressive.Stage(index=0, start_step=0, steps=1, image_size=16,
                            randaug_magnitude=0.0, mixup_alpha=0.0,
                            cutmix_alpha=0.0, dropout=0.0)
  for row in ("v2", "legacy"):
    ds = pipeline.build_train_dataset(
        source, 9, stage, pipeline.TrainInput(preprocessing.ROWS[row]),
        seed=0)
    batch = next(ds.as_numpy_iterator())
    assert batch["images"].shape == (9, 16, 16, 3)
    assert np.isfinite(batch["images"]).all() and int(batch["skipped"]) == 0


def test_images_in_sub_folders_are_their_class_folders(tmp_path):
  # The layout: a class folder with flat images and a sub-folder.
  out, tmp_path = tmp_path / "out", tmp_path / "data"
  _write(tmp_path / "cat" / "1.png")
  _write(tmp_path / "cat" / "2.png")
  _write(tmp_path / "cat" / "kittens" / "3.png")
  _write(tmp_path / "cat" / "kittens" / "small" / "4.jpg", ext=".jpg")
  _write(tmp_path / "cat" / ".ipynb_checkpoints" / "5.png")  # hidden
  _write(tmp_path / "dog" / "d1.png", BLUE)
  source = sources.folder_source(str(tmp_path), eval_every=100)
  assert source.class_names == ("cat", "dog")
  assert _labels(source, "train") == {
      str(tmp_path / "cat" / "1.png"): 0,
      str(tmp_path / "cat" / "2.png"): 0,
      str(tmp_path / "cat" / "kittens" / "3.png"): 0,
      str(tmp_path / "cat" / "kittens" / "small" / "4.jpg"): 0,
      str(tmp_path / "dog" / "d1.png"): 1}
  assert source.notes == (
      f"Read 2 images in sub-folders of class folders (e.g. "
      f"{tmp_path}/cat/kittens/) as the class of the class folder above "
      "them",)

  summary = make_tfrecords.convert(str(tmp_path), str(out), num_shards=1)
  assert summary["num_examples"] == 5
  assert summary["notes"] == list(source.notes)
  records = [fmt.parse_example(r) for r in tf.data.TFRecordDataset(
      str(out / "train-00000-of-00001"))]
  labels = {r[fmt.FILENAME_KEY].numpy().decode(): int(r[fmt.LABEL_KEY][0])
            for r in records}  # 1-based in the files
  assert labels == {"1.png": 1, "2.png": 1, "3.png": 1, "4.jpg": 1,
                    "d1.png": 2}


def test_one_class_folder_of_sub_folders_names_the_data_dir(tmp_path):
  _classes(tmp_path / "photos")  # --data_dir one folder too high
  with pytest.raises(sources.DataError, match=(
      f"^{tmp_path} holds one class folder, photos/, whose images all lie in"
      r" its sub-folders \(cat/, dog/\); if those are the classes, give "
      f"--data_dir={tmp_path}/photos.$")):
    sources.folder_source(str(tmp_path))
  with pytest.raises(sources.DataError, match=(
      f"give --image_dir={tmp_path}/photos.$")):
    make_tfrecords.convert(str(tmp_path), str(tmp_path.parent / "unused"),
                           num_shards=1)


@pytest.mark.parametrize("val", ["val", "validation"])
def test_train_val_test_folders_are_three_splits(tmp_path, val):
  _classes(tmp_path / "train", per_class=3)
  _classes(tmp_path / val, per_class=2)
  _classes(tmp_path / "test", per_class=1)
  (tmp_path / ".ipynb_checkpoints").mkdir()  # hidden: no split, no class
  source = sources.folder_source(str(tmp_path))
  assert source.split_sizes == {"train": 6, "validation": 4, "test": 2}
  assert source.class_names == ("cat", "dog")
  assert sorted(_labels(source, "test").values()) == [0, 1]
  assert source.describe() == (
      f"Data: folder, 2 classes, train 6, validation 4, test 2 ({tmp_path}/"
      f"train and {tmp_path}/{val}; {tmp_path}/test is split 'test', "
      "evaluated with data.eval_split=test)")
  sources.check(source, ["train", "test"])  # data.eval_split=test serves


def test_train_and_unlabelled_test_holds_out_and_leaves_test(tmp_path):
  _classes(tmp_path / "train", per_class=5)
  _write(tmp_path / "test" / "0001.jpg", ext=".jpg")  # no class folders
  source = sources.folder_source(str(tmp_path))
  assert source.split_sizes == {"train": 9, "validation": 1}
  assert source.split_rule == (
      f"{tmp_path}/train, every 10th image held out for validation; give "
      f"train/ and validation/ folders to choose; {tmp_path}/test not used: "
      f"it lacks the class folder(s) cat, dog of {tmp_path}/train")


@pytest.mark.parametrize("folders", [
    ("training", "valid"), ("train", "valid"), ("Train", "Val"),
    ("train", "cat"), ("val", "test"), ("train", "val", "validation")])
def test_misnamed_split_folders_name_the_expected_ones(tmp_path, folders):
  for folder in folders:
    _classes(tmp_path / folder)
  listed = ", ".join(f"{f}/" for f in sorted(folders))
  with pytest.raises(sources.DataError, match=(
      f"^{tmp_path} holds {listed}: a folder of images holds either class "
      "folders alone, or the split folders train/, then validation/ or "
      "val/ and test/ if wanted, each of the same class folders; rename or "
      "move the folders to fit one.$")):
    sources.folder_source(str(tmp_path))


def test_make_tfrecords_converts_split_folders_one_at_a_time(tmp_path):
  _classes(tmp_path / "in" / "train")
  _classes(tmp_path / "in" / "val")
  root = tmp_path / "in"
  with pytest.raises(make_tfrecords.ConversionError, match=(
      f"holds split folders \\(train, val\\); convert each on its own into "
      f"the same --output_dir: --image_dir={root}/train --split=train, "
      f"--image_dir={root}/val --split=validation.$")):
    make_tfrecords.convert(str(root), str(tmp_path / "out"), num_shards=1)


def test_only_other_files_are_named_in_the_no_images_error(tmp_path):
  for name in ("a", "b"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "scan.tif").write_bytes(b"II*\x00")
  with pytest.raises(sources.DataNotFoundError, match=(
      f"found under {tmp_path}/<class>/; it holds only .tif 2.$")):
    sources.folder_source(str(tmp_path))


def _cut_jpeg():
  """The first 100 bytes of a 64 px JPEG: its header, cut before the scan."""
  rng = np.random.default_rng(0)
  data = tf.io.encode_jpeg(rng.integers(0, 255, [64, 64, 3], np.uint8))
  data = data.numpy()
  assert data.index(b"\xff\xda") > 100  # the start of scan comes later
  return data[:100]


def test_jpeg_cut_in_header_is_named_not_left_to_libjpeg(tmp_path, capfd):
  cut = _cut_jpeg()
  with pytest.raises(tf.errors.InvalidArgumentError):
    tf.io.decode_image(cut, channels=3, expand_animations=False)
  assert "Improper call to JPEG library in state 201" in capfd.readouterr().err
  out, tmp_path = tmp_path / "out", tmp_path / "data"
  _classes(tmp_path, per_class=2)
  (tmp_path / "cat" / "cut.jpg").write_bytes(cut)
  source = sources.folder_source(str(tmp_path))
  assert source.drop_unreadable() == [str(tmp_path / "cat" / "cut.jpg")]
  assert source.split_sizes == {"train": 4, "validation": 0}
  summary = make_tfrecords.convert(str(tmp_path), str(out), num_shards=1)
  assert summary["skipped"] == [(str(tmp_path / "cat" / "cut.jpg"),
                                 make_tfrecords.CUT_IN_HEADER)]
  assert "state 201" not in capfd.readouterr().err


def test_flat_layout_names_what_it_does_not_read(tmp_path):
  root = tmp_path / "flat"
  _write(root / "n01_red_fox.jpg", ext=".jpg")
  _write(root / "n02_blue_jay.webp", BLUE, ".webp")
  _write(root / "extra" / "n01_more.jpg", ext=".jpg")
  (root / "readme.md").write_text("not an image")
  summary = make_tfrecords.convert(str(root), str(tmp_path / "out"),
                                   num_shards=1, layout="flat")
  assert summary["num_examples"] == 2 and summary["num_classes"] == 2
  assert summary["notes"] == [
      f"Skipped 1 file under {root} that is not *.jpg, *.jpeg, *.png, *.gif,"
      " *.bmp, *.webp (any case): .md 1",
      f"--layout=flat reads the files in {root} alone, not its sub-folders "
      "(extra/)"]
