"""Decoding per preprocessing row: the same JPEG bytes give the reference's
pixels through the eval pipeline, the exported `serving_bytes` signature
and infer.py, and the training crop decodes as the row says.

The photos are shared ImageNet samples whose crops differ between the two
decodes (picked with benchmarks/decode_compare.py: at 224 px, 0.16-0.36
after scaling on the legacy row, 0.09-0.23 on the V2 row), so a path that
decodes the other way fails here.
"""

import dataclasses
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import DECODE_PHOTOS
from conftest import SAMPLES
import effnetv2_tf
from effnetv2_tf import export
from effnetv2_tf.data import pipeline
from effnetv2_tf.data import preprocess
from effnetv2_tf.data import preprocessing
from effnetv2_tf.data import sources

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 224  # eval size of V2-B0 and V1-B0, and of the ImageNet-21k config
ROW_NAMES = ("v2", "legacy", "finetune")
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def _crop_by_hand(encoded, extra, fused):
  """The eval center window of a photo at SIZE, decoded alone or sliced
  from the whole decode; `extra` 1 puts it at (h - c + 1) // 2."""
  height, width = tf.io.extract_jpeg_shape(encoded).numpy()[:2]
  side = int(SIZE / (SIZE + 32) * min(height, width))
  top, left = (height - side + extra) // 2, (width - side + extra) // 2
  if fused:
    return tf.image.decode_and_crop_jpeg(encoded, [top, left, side, side],
                                         channels=3)
  image = tf.io.decode_image(encoded, channels=3)
  return image[top:top + side, left:left + side]


# The reference's decode per row: preprocess_legacy.py L125
# decode_and_crop_jpeg; preprocessing.py L142 decode_image, L68 slice.
REFERENCE_FUSED = {"legacy": True, "v2": False}


def _eval_by_hand(encoded, row, fused):
  """The reference's eval input of one photo at SIZE, written out by hand."""
  if row == "legacy":
    # preprocess_legacy.py L116-127: the window at (h - c + 1) // 2, TF1
    # resize_bicubic (L85); L239-243 mean/std.
    resized = tf.raw_ops.ResizeBicubic(
        images=_crop_by_hand(encoded, 1, fused)[tf.newaxis],
        size=[SIZE, SIZE], align_corners=False, half_pixel_centers=False)[0]
    return (resized - MEAN) / STD
  if row == "v2":
    # preprocessing.py L60-70: crop below 320 px at (h - c) // 2, bilinear;
    # L153 (x - 128) / 128.
    resized = tf.image.resize(_crop_by_hand(encoded, 0, fused), [SIZE, SIZE])
    return (resized - 128.0) / 128.0
  # preprocess_for_finetune (L82-85): the whole image, scaled, resized.
  image = tf.io.decode_image(encoded, channels=3)
  scaled = (tf.cast(image, tf.float32) / 255.0 - 0.5) / 0.5
  return tf.image.resize(scaled, [SIZE, SIZE])


@pytest.fixture(scope="module")
def expected(decode_photos):
  """{row: [3, SIZE, SIZE, 3]} by hand, after checking that the other
  decode gives other pixels (legacy, v2) on every photo."""
  out = {}
  for row in ROW_NAMES:
    fused = REFERENCE_FUSED.get(row, False)
    out[row] = np.stack([_eval_by_hand(e, row, fused).numpy()
                         for e in decode_photos])
    if row in REFERENCE_FUSED:
      for encoded, ref in zip(decode_photos, out[row]):
        other = _eval_by_hand(encoded, row, not fused).numpy()
        assert np.abs(other - ref).max() > 0.05, row
  return out


def _log_softmax(images):
  return tf.nn.log_softmax(tf.reshape(images, [len(images), -1])).numpy()


@pytest.mark.parametrize("row", ROW_NAMES)
def test_eval_pipeline_decodes_per_row(decode_photos, expected, row,
                                       tmp_path):
  # A folder of one photo per class, as validation/ (and train/) images.
  for split in ("train", "validation"):
    for i, encoded in enumerate(decode_photos):
      class_dir = tmp_path / split / f"c{i}"
      class_dir.mkdir(parents=True)
      (class_dir / f"{DECODE_PHOTOS[i]}.JPEG").write_bytes(encoded)
  source = sources.folder_source(str(tmp_path))
  (batch,) = pipeline.build_eval_dataset(source, 3, SIZE, preprocessing.ROWS[row],
                                         split="validation")
  order = np.argsort(batch["labels"].numpy().argmax(1))
  np.testing.assert_allclose(batch["images"].numpy()[order], expected[row],
                             atol=2e-5)


def _identity_model():
  """Logits = the model's input pixels, so probabilities show the tensor."""
  return keras.Sequential([keras.Input((SIZE, SIZE, 3)),
                           keras.layers.Flatten()])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """{row: SavedModel path} of the identity model with the row's eval."""
  root = tmp_path_factory.mktemp("decode")
  return {row: export.export_saved_model(
      _identity_model(), str(root / row), SIZE, preprocessing.ROWS[row])
          for row in ROW_NAMES}


@pytest.mark.parametrize("row", ROW_NAMES)
def test_bytes_signature_decodes_per_row(decode_photos, expected, exported,
                                         row):
  loaded = tf.saved_model.load(exported[row])
  served = loaded.signatures[export.BYTES_SIGNATURE](
      image_bytes=tf.constant(decode_photos))
  want = _log_softmax(expected[row])
  np.testing.assert_allclose(np.log(served["probabilities"].numpy()), want,
                             atol=1e-4)
  in_process = export.ServingModule(_identity_model(), SIZE,
                                    preprocessing.ROWS[row]).serve_bytes
  np.testing.assert_allclose(
      np.log(in_process(tf.constant(decode_photos))["probabilities"]
             .numpy()), want, atol=1e-4)
  # The float signature takes pixels decoded whole: the V2 row's, not the
  # legacy row's (README: it cannot reproduce a fused decode).
  for encoded, want_one in zip(decode_photos, want):
    image = tf.cast(tf.io.decode_jpeg(encoded, channels=3), tf.float32)
    floats = loaded.signatures["serving_default"](images=image[tf.newaxis])
    gap = np.abs(np.log(floats["probabilities"].numpy()[0]) - want_one).max()
    assert (gap > 0.05) if row == "legacy" else (gap < 1e-4), (row, gap)


# infer.py's own loading, file reading and call, in a fresh process (its
# import defines infer.py's flags): log-probabilities per row and photo.
_INFER_SCRIPT = """
import sys
import numpy as np
import infer

out, paths, results = sys.argv[1], sys.argv[2].split(","), {}
for row_path in sys.argv[3:]:
  row, saved_model = row_path.split("=", 1)
  predict, _ = infer.load_predictor(saved_model=saved_model)
  results[row] = np.stack([
      np.log(infer.classify(predict, p)["probabilities"].numpy()[0])
      for p in paths])
np.savez(out, **results)
"""


def test_infer_decodes_per_row(expected, exported, tmp_path):
  out = tmp_path / "infer.npz"
  paths = ",".join(str(SAMPLES / f"{name}.JPEG") for name in DECODE_PHOTOS)
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-c", _INFER_SCRIPT, str(out), paths,
       *(f"{row}={exported[row]}" for row in ROW_NAMES)],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  got = np.load(out)
  for row in ROW_NAMES:
    np.testing.assert_allclose(got[row], _log_softmax(expected[row]),
                               atol=1e-4)


@pytest.mark.parametrize("row", ROW_NAMES)
def test_include_preprocessing_scales_the_resized_crop_as_the_pipeline(
    decode_photos, row):
  prep = preprocessing.ROWS[row]
  rescaling = effnetv2_tf.create_model(
      "efficientnetv2-b0", width_coefficient=0.1, depth_coefficient=0.1,
      include_preprocessing=True,
      input_scaling=prep.input_scaling).get_layer("rescaling")
  for encoded in decode_photos:
    features = {"encoded": encoded}
    crop = preprocess.resize(preprocess.eval_crop(features, SIZE, prep), SIZE,
                             prep.resize_method)
    np.testing.assert_allclose(
        rescaling(crop[tf.newaxis])[0].numpy(),
        preprocess.eval_preprocess(features, SIZE, prep).numpy(), atol=1e-5)


def _reference_train_window(encoded, seed, row):
  """(begin, size) of the reference's sampler for `row`, or None where it
  falls back to the whole image (legacy: the center crop instead)."""
  shape = tf.io.extract_jpeg_shape(encoded)
  if row == "v2":  # preprocessing.py L32-37 with TF's defaults
    box, covered, aspect, area, attempts = (
        tf.zeros([1, 0, 4]), 0.0, (0.75, 1.33), (0.05, 1.0), 100)
  else:  # preprocess_legacy.py L90-97
    box, covered, aspect, area, attempts = (
        tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), 0.1, (3 / 4, 4 / 3),
        (0.08, 1.0), 10)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, box, seed, min_object_covered=covered, aspect_ratio_range=aspect,
      area_range=area, max_attempts=attempts,
      use_image_if_no_bounding_boxes=True)
  if row == "legacy" and np.array_equal(size[:2], shape[:2]):
    return None
  return begin, size


@pytest.mark.parametrize("row", ["v2", "legacy"])
def test_train_crop_decodes_per_row(decode_photos, row):
  # V2 slices a whole decode (preprocessing.py L142, L38), legacy decodes
  # the window alone (preprocess_legacy.py L68).
  differ = 0
  for encoded in decode_photos:
    for i in range(6):
      seed = tf.constant([i, 5], tf.int64)
      window = _reference_train_window(encoded, seed, row)
      if window is None:
        continue
      begin, size = window
      fused = tf.image.decode_and_crop_jpeg(
          encoded, tf.concat([begin[:2], size[:2]], 0), channels=3).numpy()
      whole = tf.slice(tf.io.decode_jpeg(encoded, channels=3), begin,
                       size).numpy()
      want = whole if row == "v2" else fused
      got = preprocess.random_crop({"encoded": encoded}, seed, SIZE,
                                   preprocessing.ROWS[row]).numpy()
      np.testing.assert_array_equal(got, want)
      differ += int(not np.array_equal(fused, whole))
  assert differ >= 1  # some crop tells the decodes apart


def test_non_jpeg_bytes_decode_whole_under_a_fused_decode():
  # decode_and_crop_jpeg takes JPEG only; a PNG's window is a slice of its
  # lossless pixels.
  image = tf.cast(tf.random.stateless_uniform([50, 70, 3], [1, 2], 0, 255),
                  tf.uint8)
  fused = dataclasses.replace(preprocessing.ROWS["legacy"], decode="fused")
  crop = preprocess.eval_crop({"encoded": tf.io.encode_png(image)}, 32,
                              fused).numpy()
  # Legacy center crop at 32 px: side int(32 / 64 * 50) = 25 at
  # ((50 - 25 + 1) // 2, (70 - 25 + 1) // 2) = (13, 23).
  np.testing.assert_array_equal(crop, image.numpy()[13:38, 23:48])


def test_unknown_decode_is_one_clear_error():
  bad = dataclasses.replace(preprocessing.ROWS["v2"], decode="partial")
  with pytest.raises(ValueError, match="Unknown decode 'partial'; valid: "
                     "fused, whole."):
    preprocess.eval_crop({"image": tf.zeros([8, 8, 3], tf.uint8)}, 8, bad)
