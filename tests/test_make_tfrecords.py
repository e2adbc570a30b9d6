"""Tests of the image -> TFRecord converter on real ImageNet photographs."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf.data import make_tfrecords
from effnetv2_tf.data import sources
from effnetv2_tf.data import tfrecord_format as fmt

from conftest import SAMPLES

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def samples():
  """(sorted sample paths, set of grayscale ones)."""
  if not SAMPLES.is_dir():
    pytest.skip(f"{SAMPLES} not found")
  paths = sorted(SAMPLES.glob("*.JPEG"))
  gray = {p for p in paths
          if tf.image.extract_jpeg_shape(p.read_bytes())[2] == 1}
  assert len(paths) == 1000 and len(gray) == 23
  return paths, gray


def _pick(samples, num_color, num_gray=0):
  paths, gray = samples
  color = [p for p in paths if p not in gray]
  return (color[::len(color) // num_color][:num_color]
          + sorted(gray)[:num_gray])


def _link(paths, folder):
  folder.mkdir(parents=True, exist_ok=True)
  for p in paths:
    (folder / p.name).symlink_to(p)
  return folder


def _records(out, pattern="*-of-*"):
  """{shard basename: [parsed record as numpy]}."""
  shards = {}
  for path in sorted(out.glob(pattern)):
    shards[path.name] = [
        {k: v.numpy() for k, v in fmt.parse_example(r).items()}
        for r in tf.data.TFRecordDataset(str(path))]
  return shards


def _decode(data):
  return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


def _temp_files(out):
  return [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_make_example_round_trip_multi_label():
  record = fmt.make_example(b"jpeg", [3, 7], synset="n1", text="a b",
                            filename="x.jpg", height=2, width=5)
  parsed = fmt.parse_example(record.SerializeToString())
  assert list(parsed[fmt.LABEL_KEY].numpy()) == [3, 7]
  assert parsed[fmt.ENCODED_KEY].numpy() == b"jpeg"
  assert parsed[fmt.SYNSET_KEY].numpy() == b"n1"
  assert parsed[fmt.TEXT_KEY].numpy() == b"a b"
  assert (parsed[fmt.HEIGHT_KEY].numpy(), parsed[fmt.WIDTH_KEY].numpy()) == (
      2, 5)
  assert fmt.shard_name("train", 3, 16) == "train-00003-of-00016"


def test_flat_round_trip_on_real_photos(samples, tmp_path):
  picked = _pick(samples, 36, num_gray=4)
  image_dir = _link(picked, tmp_path / "flat")
  out = tmp_path / "out"
  summary = make_tfrecords.convert(str(image_dir), str(out), num_shards=3,
                                   layout="flat", seed=7)
  assert summary["num_examples"] == 40 and summary["num_skipped"] == 0
  wnids = sorted(p.name.split("_")[0] for p in picked)
  by_name = {p.name: p for p in picked}
  shards = _records(out)
  assert sorted(shards) == [f"train-0000{i}-of-00003" for i in range(3)]
  records = [r for rs in shards.values() for r in rs]
  names = [r[fmt.FILENAME_KEY].decode() for r in records]
  assert sorted(names) == sorted(by_name) and names != sorted(names)
  for r, name in zip(records, names):
    original = by_name[name].read_bytes()
    wnid, _, readable = name[:-len(".JPEG")].partition("_")
    assert list(r[fmt.LABEL_KEY]) == [wnids.index(wnid) + 1]
    assert r[fmt.SYNSET_KEY].decode() == wnid
    assert r[fmt.TEXT_KEY].decode() == readable.replace("_", " ")
    image = _decode(r[fmt.ENCODED_KEY])
    assert (r[fmt.HEIGHT_KEY], r[fmt.WIDTH_KEY]) == image.shape[:2]
    if by_name[name] in samples[1]:  # grayscale: re-encoded as RGB
      assert tf.image.extract_jpeg_shape(r[fmt.ENCODED_KEY])[2] == 3
      assert (image[..., 0] == image[..., 1]).all()
      assert (image[..., 0] == image[..., 2]).all()
      diff = np.abs(image[..., 0].astype(int) - _decode(original)[..., 0])
      assert diff.mean() < 2.0
    else:
      assert r[fmt.ENCODED_KEY] == original
  lines = (out / "labels.txt").read_text().splitlines()
  readable = {p.name.split("_")[0]: p.stem.partition("_")[2].replace("_", " ")
              for p in picked}
  assert lines == [f"{w}\t{readable[w]}" for w in wnids]
  info = json.loads((out / "dataset_info.json").read_text())
  assert info["shards"] == {k: len(v) for k, v in shards.items()}
  assert info["splits"] == {"train": 40} and info["num_classes"] == 40
  assert not _temp_files(out)
  # The same seed gives byte-identical shards.
  make_tfrecords.convert(str(image_dir), str(tmp_path / "again"), 3,
                         layout="flat", seed=7)
  for name in shards:
    assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_folders_layout_reencodes_png_and_skips_corrupt(samples, tmp_path):
  a, b, c, d = _pick(samples, 4)
  root = tmp_path / "images"
  (root / "b_cls").mkdir(parents=True)
  (root / "a_cls").mkdir()
  (root / ".hidden").mkdir()
  shutil.copy(a, root / "a_cls" / "one.JPG")
  shutil.copy(b, root / "a_cls" / "two.jpeg")
  png = tf.io.encode_png(_decode(c.read_bytes())).numpy()
  (root / "a_cls" / "three.png").write_bytes(png)
  shutil.copy(d, root / "b_cls" / "four.Jpg")
  rng = np.random.default_rng(0)
  (root / "b_cls" / "corrupt.jpg").write_bytes(rng.bytes(5000))
  data = a.read_bytes()
  (root / "b_cls" / "truncated.JPEG").write_bytes(data[:len(data) // 2])
  (root / "b_cls" / "notes.txt").write_text("not an image")
  out = tmp_path / "out"
  summary = make_tfrecords.convert(str(root), str(out), num_shards=2)
  assert summary["num_examples"] == 4 and summary["num_skipped"] == 2
  assert sorted(os.path.basename(p) for p, _ in summary["skipped"]) == [
      "corrupt.jpg", "truncated.JPEG"]
  records = {r[fmt.FILENAME_KEY].decode(): r
             for rs in _records(out).values() for r in rs}
  assert sorted(records) == ["four.Jpg", "one.JPG", "three.png", "two.jpeg"]
  labels = {n: list(r[fmt.LABEL_KEY]) for n, r in records.items()}
  assert labels == {"one.JPG": [1], "two.jpeg": [1], "three.png": [1],
                    "four.Jpg": [2]}
  converted = records["three.png"][fmt.ENCODED_KEY]
  assert tf.io.is_jpeg(converted)
  diff = np.abs(_decode(converted).astype(int) - _decode(png))
  assert diff.mean() < 6.0  # quality 95, a detailed photo
  assert records["one.JPG"][fmt.ENCODED_KEY] == a.read_bytes()
  assert (out / "labels.txt").read_text() == "a_cls\ta_cls\nb_cls\tb_cls\n"
  info = json.loads((out / "dataset_info.json").read_text())
  assert info["splits"] == {"train": 4} and info["skipped"] == {"train": 2}


def test_cmyk_jpeg_is_reencoded_as_rgb(samples, tmp_path):
  image_module = pytest.importorskip("PIL.Image")
  root = tmp_path / "images" / "cls"
  root.mkdir(parents=True)
  photo = _pick(samples, 1)[0]
  image_module.open(photo).convert("CMYK").save(root / "cmyk.jpg", "JPEG")
  assert tf.image.extract_jpeg_shape((root / "cmyk.jpg").read_bytes())[2] == 4
  make_tfrecords.convert(str(tmp_path / "images"), str(tmp_path / "out"), 1)
  (record,), = _records(tmp_path / "out").values()
  assert tf.image.extract_jpeg_shape(record[fmt.ENCODED_KEY])[2] == 3
  diff = np.abs(_decode(record[fmt.ENCODED_KEY]).astype(int)
                - _decode(photo.read_bytes()))
  assert diff.mean() < 4.0


def test_second_split_merges_and_reuses_labels(samples, tmp_path):
  picked = _pick(samples, 8)
  out = tmp_path / "out"
  train_dir = _link(picked, tmp_path / "train")
  make_tfrecords.convert(str(train_dir), str(out), 2, layout="flat")
  make_tfrecords.convert(str(train_dir), str(out), 4,
                         layout="flat")  # re-run: old 2-shard set removed
  labels_txt = (out / "labels.txt").read_text()
  val_dir = _link(picked[2:7:2], tmp_path / "val")
  make_tfrecords.convert(str(val_dir), str(out), 1, split="validation",
                         layout="flat")
  assert (out / "labels.txt").read_text() == labels_txt
  wnids = sorted(p.name.split("_")[0] for p in picked)
  (records,) = _records(out, "validation-*").values()
  for r in records:
    assert list(r[fmt.LABEL_KEY]) == [
        wnids.index(r[fmt.SYNSET_KEY].decode()) + 1]
  assert [list(r[fmt.LABEL_KEY]) for r in records] != [[1], [2], [3]]
  info = json.loads((out / "dataset_info.json").read_text())
  assert info["splits"] == {"train": 8, "validation": 3}
  assert sorted(info["shards"]) == sorted(
      [f"train-0000{i}-of-00004" for i in range(4)]
      + ["validation-00000-of-00001"])
  assert sorted(p.name for p in out.glob("train-*")) == sorted(
      n for n in info["shards"] if n.startswith("train"))
  stranger = _link([samples[0][-1]], tmp_path / "stranger")
  with pytest.raises(make_tfrecords.ConversionError,
                     match=samples[0][-1].name.split("_")[0]):
    make_tfrecords.convert(str(stranger), str(out), 1, split="validation",
                           layout="flat")
  assert json.loads((out / "dataset_info.json").read_text()) == info


def test_failure_leaves_no_partial_shard(samples, tmp_path, monkeypatch):
  image_dir = _link(_pick(samples, 10), tmp_path / "flat")
  load, calls, lock = make_tfrecords.load_image, [0], threading.Lock()

  def failing_load(path):
    with lock:
      calls[0] += 1
      if calls[0] == 7:
        raise RuntimeError("simulated crash")
    return load(path)

  monkeypatch.setattr(make_tfrecords, "load_image", failing_load)
  out = tmp_path / "out"
  with pytest.raises(RuntimeError, match="simulated crash"):
    make_tfrecords.convert(str(image_dir), str(out), 2, layout="flat",
                           num_threads=1)
  assert sorted(os.listdir(out)) == ["train-00000-of-00002"]
  # A re-run replaces it all, and clears what a killed run would leave.
  monkeypatch.undo()
  (out / ".train-00002-of-00003.tmp").write_bytes(b"partial")
  make_tfrecords.convert(str(image_dir), str(out), 3, layout="flat")
  assert sorted(os.listdir(out)) == [
      "dataset_info.json", "labels.txt", "train-00000-of-00003",
      "train-00001-of-00003", "train-00002-of-00003"]


def test_convert_argument_errors(samples, tmp_path):
  error = make_tfrecords.ConversionError
  with pytest.raises(error, match="not a directory"):
    make_tfrecords.convert(str(tmp_path / "missing"), str(tmp_path / "o"), 1)
  (tmp_path / "empty" / "cls").mkdir(parents=True)
  with pytest.raises(error, match=r"No images \(\*\.jpg, \*\.jpeg, \*\.png"):
    make_tfrecords.convert(str(tmp_path / "empty"), str(tmp_path / "o"), 1)
  with pytest.raises(error, match="--layout=flat"):
    make_tfrecords.convert(str(tmp_path / "empty" / "cls"),
                           str(tmp_path / "o"), 1)
  two = _link(_pick(samples, 2), tmp_path / "two")
  with pytest.raises(error, match="num_shards must be >= 1"):
    make_tfrecords.convert(str(two), str(tmp_path / "o"), 0, layout="flat")
  with pytest.raises(error, match="more than the 2 images"):
    make_tfrecords.convert(str(two), str(tmp_path / "o"), 3, layout="flat")
  (tmp_path / "two" / "nounderscore.jpg").symlink_to(_pick(samples, 1)[0])
  with pytest.raises(error, match="nounderscore.jpg"):
    make_tfrecords.convert(str(two), str(tmp_path / "o"), 1, layout="flat")
  nested = _link(_pick(samples, 1), tmp_path / "nested" / "cls").parent
  with pytest.raises(error, match="inside --image_dir"):
    make_tfrecords.convert(str(nested), str(nested / "out"), 1)
  assert not (tmp_path / "o").exists()


def test_tfrecord_source_reads_output(samples, tmp_path, monkeypatch):
  picked = _pick(samples, 12)
  out = tmp_path / "out"
  make_tfrecords.convert(str(_link(picked, tmp_path / "t")), str(out), 3,
                         layout="flat")
  make_tfrecords.convert(str(_link(picked[:5], tmp_path / "v")), str(out), 2,
                         split="validation", layout="flat")

  def no_counting(files):
    raise AssertionError(f"counted {files} instead of reading the json")

  monkeypatch.setattr(sources, "_count_records", no_counting)
  source = sources.tfrecord_source("imagenet", str(out), num_classes=12)
  assert source.split_sizes == {"train": 12, "validation": 5}
  expected = {r[fmt.ENCODED_KEY]: r[fmt.LABEL_KEY][0] - 1
              for rs in _records(out).values() for r in rs}
  for split, size in source.split_sizes.items():
    seen = 0
    for example in source.read(split).as_numpy_iterator():
      label = example["label"]
      assert label.shape == (12,) and label.sum() == 1.0
      assert label.argmax() == expected[example["encoded"]]
      seen += 1
    assert seen == size


def _run_cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run(
      [sys.executable, "-m", "effnetv2_tf.data.make_tfrecords", *args],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)


def test_cli_converts_and_reports(samples, tmp_path):
  image_dir = _link(_pick(samples, 8, num_gray=2), tmp_path / "flat")
  out = tmp_path / "out"
  result = _run_cli(f"--image_dir={image_dir}", f"--output_dir={out}",
                    "--num_shards=2", "--layout=flat", "--log_every=5")
  assert result.returncode == 0, result.stderr
  assert "wrote 10 examples of 10 classes in 2 shards" in result.stdout
  # A progress line every 5 images, on stdout; absl's INFO lines are off.
  progress = [l for l in result.stdout.splitlines()
              if re.match(r"train: (5|10)/10 images, [\d.]+ images/s, 0 "
                          r"skipped, elapsed \d+s, ETA \d+s$", l)]
  assert len(progress) == 2, result.stdout
  assert result.stderr == ""
  info = json.loads((out / "dataset_info.json").read_text())
  assert info["splits"] == {"train": 10}
  assert sorted(p.name for p in out.glob("train-*")) == [
      "train-00000-of-00002", "train-00001-of-00002"]


def test_cli_bad_image_dir_fails_clearly(tmp_path):
  result = _run_cli(f"--image_dir={tmp_path / 'nope'}",
                    f"--output_dir={tmp_path / 'out'}", "--num_shards=2")
  assert result.returncode != 0
  assert "is not a directory" in result.stderr
