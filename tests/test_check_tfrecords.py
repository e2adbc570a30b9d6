"""check_tfrecords names the records whose image does not decode."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf.data import check_tfrecords
from effnetv2_tf.data import tfrecord_format as fmt

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _jpeg(seed):
  pixels = np.random.default_rng(seed).integers(0, 255, (9, 7, 3), np.uint8)
  return tf.io.encode_jpeg(pixels).numpy()


@pytest.fixture
def shards(tmp_path):
  """Two train shards; records 1 and 4 of the first and 2 (the last) of
  the second are unreadable (not an image, a cut JPEG, not an Example)."""
  good = [_jpeg(i) for i in range(5)]
  contents = {
      "train-00000-of-00002": [
          fmt.make_example(good[0], 1, filename="a.jpg"),
          fmt.make_example(b"not an image", 2, filename="b.jpg"),
          fmt.make_example(good[1], 1, filename="c.jpg"),
          fmt.make_example(good[2], 1, filename="d.jpg"),
          fmt.make_example(good[3][:40], 2, filename="cut.jpg")],
      "train-00001-of-00002": [
          fmt.make_example(good[4], 1, filename="f.jpg"),
          fmt.make_example(good[0], 2, filename="g.jpg"),
          b"\x00 not a tf.train.Example"],
  }
  for name, records in contents.items():
    with tf.io.TFRecordWriter(str(tmp_path / name)) as writer:
      for record in records:
        writer.write(record if isinstance(record, bytes)
                     else record.SerializeToString())
  return tmp_path


def test_names_each_unreadable_record(shards):
  files = sorted(str(p) for p in shards.glob("train-*"))
  lines = []
  total, bad = check_tfrecords.unreadable_records(files, every=2,
                                                  echo=lines.append)
  assert total == 8
  assert bad == [(files[0], 1, "b.jpg"), (files[0], 4, "cut.jpg"),
                 (files[1], 2, "")]
  # Survivors at positions 0, 2, 3, 5, 6: lines at the first past 2, 4, 6.
  assert lines == ["checked 3 records, 1 unreadable",
                   "checked 4 records, 1 unreadable",
                   "checked 6 records, 2 unreadable"]


@pytest.mark.slow
def test_cli_prints_them_and_exits_1(shards):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "effnetv2_tf.data.check_tfrecords",
       f"--data_dir={shards}"], capture_output=True, text=True, env=env,
      timeout=300, check=False)
  assert result.returncode == 1, result.stderr[-2000:]
  first = shards / "train-00000-of-00002"
  assert result.stdout.splitlines() == [
      f"{first}#1 (b.jpg)", f"{first}#4 (cut.jpg)",
      f"{shards / 'train-00001-of-00002'}#2",
      "train: 3 of 8 records unreadable (2 shards)."]
