"""`decode_reduced`: a JPEG decodes at 1/2, 1/4 or 1/8 scale where the crop
keeps the output size, and otherwise exactly as without it.

Expectations: the ratio rule by hand; libjpeg's scaled decode (the whole
image through `tf.io.decode_jpeg(ratio=r)`, sliced at the window divided
by r); the default pixels wherever no reduction applies; a bounded
difference after the resize where one does (against an antialiased
resize of the full-scale window, about the default's own).
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf.data import pipeline
from effnetv2_tf.data import preprocess
from effnetv2_tf.data import preprocessing


def _reduced(row, **changes):
  return dataclasses.replace(preprocessing.ROWS[row], decode_reduced=True,
                             **changes)


@pytest.mark.parametrize("size_hw, image_size, ratio", [
    ((300, 500), 128, 2),   # 300 // 128 = 2.3: 2 fits, 4 does not
    ((512, 600), 128, 4),   # exactly 4 x 128 on the short side
    ((511, 600), 128, 2),   # one pixel short of 4
    ((1100, 1030), 128, 8),
    ((255, 900), 128, 1),   # the short side decides
    ((600, 600), 300, 2),
    ((599, 5000), 300, 1),
])
def test_ratio_is_the_largest_that_keeps_the_output_size(size_hw, image_size,
                                                         ratio):
  assert int(preprocess.jpeg_ratio(tf.constant(size_hw), image_size)) == ratio


@pytest.mark.parametrize("decode", preprocessing.DECODE_METHODS)
def test_window_is_the_scaled_decode_sliced(decode_photos, decode):
  """At 48 px the center window of the short side (246 px) decodes at
  ratio 4: the whole image decoded at 1/4, sliced at the window's offset
  and size divided by 4 (the fused decode too: its window lies in scaled
  coordinates)."""
  encoded = decode_photos[0]
  prep = _reduced("v2", decode=decode, crop_padding=0, crop_offset="floor")
  height, width = tf.io.extract_jpeg_shape(encoded).numpy()[:2]
  side = min(height, width)
  assert side // 4 >= 48 > side // 8, "photo no longer fits the case"
  top, left = (height - side) // 2, (width - side) // 2
  expected = tf.io.decode_jpeg(encoded, channels=3, ratio=4).numpy()[
      top // 4:top // 4 + side // 4, left // 4:left // 4 + side // 4]
  got = preprocess.eval_crop({"encoded": tf.constant(encoded)}, 48, prep)
  np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("row", tuple(preprocessing.ROWS))
def test_without_a_reduction_the_pixels_are_the_defaults(decode_photos, row):
  """At 600 px no window of these decode_photos (at most 500 px) halves: every
  path gives the row's default pixels, train crop and eval crop."""
  plain, reduced = preprocessing.ROWS[row], _reduced(row)
  for i, encoded in enumerate(decode_photos):
    features = {"encoded": tf.constant(encoded)}
    seed = tf.constant([i, 7], tf.int64)
    for a, b in ((pipeline.train_pixels(features, seed, 600, plain),
                  pipeline.train_pixels(features, seed, 600, reduced)),
                 (preprocess.eval_crop(features, 600, plain),
                  preprocess.eval_crop(features, 600, reduced))):
      np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("row", ("v2", "legacy"))
def test_reduced_crops_are_as_faithful_a_downscale(decode_photos, row):
  """At 64 px most training windows reduce (4 seeded crops per photo).
  Against an antialiased resize of the full-scale window (what a
  downscale should approach), the reduced input is about as close as the
  default one: the default's resize aliases, libjpeg's DCT scaling
  averages, then a shorter resize aliases less (40 shared decode_photos: 7.1 vs
  7.4 grey levels mean absolute on the v2 row, 9.9 vs 11.8 on legacy)."""
  plain, reduced = preprocessing.ROWS[row], _reduced(row)
  errors = []
  for i, encoded in enumerate(decode_photos):
    features = {"encoded": tf.constant(encoded)}
    for k in range(4):
      seed = tf.constant([i, k], tf.int64)
      window = preprocess.random_crop(features, seed, 64, plain)
      a, b = (preprocess.resize(preprocess.random_crop(features, seed, 64, p),
                                64, p.resize_method).numpy()
              for p in (plain, reduced))
      if np.array_equal(a, b):
        continue
      target = tf.image.resize(window, [64, 64], antialias=True).numpy()
      errors.append((np.abs(a - target).mean(), np.abs(b - target).mean()))
  assert len(errors) >= 6
  default_error, reduced_error = np.mean(errors, axis=0)
  assert reduced_error < 1.25 * default_error


def test_non_jpeg_bytes_decode_whole(decode_photos):
  """A PNG has no scaled decode: the crop is the default's."""
  png = tf.io.encode_png(tf.io.decode_jpeg(decode_photos[1], channels=3))
  features = {"encoded": png}
  np.testing.assert_array_equal(
      preprocess.eval_crop(features, 64, _reduced("v2")).numpy(),
      preprocess.eval_crop(features, 64, preprocessing.ROWS["v2"]).numpy())
