"""infer.py on many images: directories, URLs, and bad images skipped.

Each test runs infer.py as a process on a tiny exported model (24 px), with
the inputs of issue 37: a directory of images, a URL, [good, bad, good].
"""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import export

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOT_AN_IMAGE = "is not a readable JPEG, PNG, GIF, BMP or WebP image."


@pytest.fixture(name="saved_model")
def _saved_model(tiny_export):
  return tiny_export[1]  # shared with test_export


def _infer(*args):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, str(ROOT / "infer.py"), *args],
                        capture_output=True, text=True, env=env, timeout=300,
                        check=False)


def _write_image(path, seed, encode=tf.io.encode_png):
  """A random 10 x 14 image file; returns its path as a string."""
  pixels = np.random.default_rng(seed).integers(0, 256, (10, 14, 3), np.uint8)
  tf.io.write_file(str(path), encode(pixels))
  return str(path)


def _classified(stdout):
  """{path: [top-5 probabilities]} of infer.py's printed results."""
  results, path = {}, None
  for line in stdout.splitlines():
    if line.endswith(":") and not line.startswith(" "):
      path = line[:-1]
      results[path] = []
    elif match := re.fullmatch(r"  \d\. digit \d \(class \d\): (\S+)", line):
      results[path].append(float(match.group(1)))
  return results


def _top5(loaded, path):
  """The five best probabilities of the image file, by the (loaded)
  SavedModel's serving_bytes signature called here."""
  served = loaded.signatures[export.BYTES_SIGNATURE]
  out = served(image_bytes=tf.io.read_file(path)[tf.newaxis])
  return np.round(np.sort(out["probabilities"].numpy()[0])[::-1][:5], 4)


def test_a_url_is_one_line_before_the_model_loads(tmp_path):
  url = "https://example.com/cat.jpg"
  result = _infer(f"--saved_model={tmp_path}/none", f"--image={url}")
  # --saved_model names nothing: the URL is refused before the model loads.
  assert result.returncode == 1
  assert result.stderr == (
      f"infer.py: error: --image {url}: infer.py reads local files (or "
      f"gs://); download it first (e.g. curl -O {url}).\n")
  assert result.stdout == ""


def test_an_empty_directory_is_one_line(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("not an image")
  result = _infer(f"--saved_model={tmp_path}/none",
                  f"--image={tmp_path}/empty")
  assert result.returncode == 1
  assert len(result.stderr.splitlines()) == 1
  assert result.stderr.startswith(
      f"infer.py: error: --image {tmp_path}/empty holds no images (*.jpg")


@pytest.mark.slow
def test_a_directory_means_every_image_in_it(saved_model, tiny_export_loaded,
                                             tmp_path):
  photos = tmp_path / "photos"
  (photos / "more").mkdir(parents=True)  # a subdirectory: not searched
  _write_image(photos / "more" / "deeper.png", 0)
  images = [_write_image(photos / "b.png", 1),
            _write_image(photos / "a.JPG", 2, tf.io.encode_jpeg),
            _write_image(photos / "c.jpeg", 3, tf.io.encode_jpeg)]
  (photos / "notes.txt").write_text("not an image")
  result = _infer(f"--saved_model={saved_model}", f"--image={photos}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[0] == f"--image {photos}: 3 images"
  classified = _classified(result.stdout)
  assert list(classified) == sorted(images)  # a.JPG, b.png, c.jpeg
  for path in images:
    np.testing.assert_allclose(classified[path],
                               _top5(tiny_export_loaded, path), atol=1e-4)


@pytest.mark.slow
def test_a_bad_image_is_skipped_and_the_rest_classified(
    saved_model, tiny_export_loaded, tmp_path):
  first = _write_image(tmp_path / "first.png", 4)
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"\xff\xd8 not a jpeg")
  third = _write_image(tmp_path / "third.jpg", 5, tf.io.encode_jpeg)
  result = _infer(f"--saved_model={saved_model}", f"--image={first}",
                  f"--image={bad}", f"--image={third}")
  assert result.returncode == 1
  assert result.stderr == (f"infer.py: error: {bad} {NOT_AN_IMAGE}\n"
                           "infer.py: 1 of 3 images failed.\n")
  classified = _classified(result.stdout)
  assert list(classified) == [first, third]
  np.testing.assert_allclose(classified[third],
                             _top5(tiny_export_loaded, third), atol=1e-4)


@pytest.mark.slow
def test_bad_entries_of_a_directory_are_named_and_skipped(saved_model,
                                                          tmp_path):
  photos = tmp_path / "photos"
  (photos / "folder.jpg").mkdir(parents=True)  # a directory, named as image
  good = [_write_image(photos / "a.png", 6), _write_image(photos / "d.png", 7)]
  (photos / "b.png").write_bytes(b"")  # empty
  missing = tmp_path / "missing.png"
  result = _infer(f"--saved_model={saved_model}", f"--image={photos}",
                  f"--image={missing}")
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      f"infer.py: error: {photos}/b.png {NOT_AN_IMAGE}",
      f"infer.py: error: {photos}/folder.jpg is a directory, not an image.",
      f"infer.py: error: {missing} does not exist.",
      "infer.py: 3 of 5 images failed."]
  assert list(_classified(result.stdout)) == good
