"""The input pipeline's fast paths give the bytes of the plain computation.

Each test checks one faster code path (issue 34) against an independent
expectation: NumPy arithmetic, or TensorFlow's kernel called the plain way.
"""

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf.data import image_ops
from effnetv2_tf.data import pipeline
from effnetv2_tf.data import preprocess
from effnetv2_tf.data import preprocessing
from effnetv2_tf.data import sources
from effnetv2_tf.training import progressive


def _images():
  """Random, black/white checkerboard and flat uint8 images, odd sizes."""
  rng = np.random.default_rng(0)
  checker = (np.indices([9, 14]).sum(0) % 2 * 255).astype(np.uint8)
  return [rng.integers(0, 256, [23, 31, 3], dtype=np.uint8),
          np.repeat(checker[:, :, None], 3, axis=2),
          np.full([6, 5, 3], 255, np.uint8),
          np.dstack([rng.integers(0, 256, [12, 10], dtype=np.uint8),
                     np.full([12, 10], 7, np.uint8),
                     rng.integers(100, 103, [12, 10], dtype=np.uint8)])]


@pytest.mark.parametrize("size", [4, 17, 40])
def test_bilinear_resize_needs_no_clip_before_uint8(size):
  for image in _images():
    resized = preprocess.resize(tf.constant(image), size, "bilinear").numpy()
    assert -1.0 < resized.min() and resized.max() < 256.0
    expected = np.clip(resized, 0, 255).astype(np.uint8)  # trunc
    np.testing.assert_array_equal(
        preprocess.to_uint8(tf.constant(resized), bounded=True), expected)


def _plain_transform(image, matrix):
  """The projective kernel on the uint8 channels themselves."""
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=tf.constant(image)[tf.newaxis],
      transforms=tf.constant([matrix], tf.float32),
      output_shape=image.shape[:2], fill_value=128.0,
      interpolation="NEAREST", fill_mode="CONSTANT")[0].numpy()


@pytest.mark.parametrize("matrix", [
    [1., 0., 7.5, 0., 1., -3.2, 0., 0.],      # translate (half pixels)
    [1., 0.45, 0., 0., 1., 0., 0., 0.],       # shear x
    [0.8, -0.6, 9., 0.6, 0.8, -4., 0., 0.],   # rotation
    [1., 0., 500., 0., 1., 0., 0., 0.],       # all fill
])
def test_packed_transform_equals_per_channel_kernel(matrix):
  for image in _images():
    out = image_ops.transform(tf.constant(image), matrix).numpy()
    np.testing.assert_array_equal(out, _plain_transform(image, matrix))


def _numpy_sharpness(image, factor):
  """PIL's smoothing as the exact integer quotient, border kept, float32
  blend truncated (`image_ops.sharpness`'s definition)."""
  x = image.astype(np.int64)
  weights = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]])
  h, w = x.shape[:2]
  total = sum(weights[i, j] * x[i:h - 2 + i, j:w - 2 + j]
              for i in range(3) for j in range(3))
  smooth = image.copy()
  smooth[1:-1, 1:-1] = total // 13
  a, b = smooth.astype(np.float32), image.astype(np.float32)
  blended = a + np.float32(factor) * (b - a)
  return np.clip(blended, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("factor", [0.0, 0.3, 1.9, 2.8])
def test_sharpness_by_convolution_is_the_integer_quotient(factor):
  for image in _images():
    np.testing.assert_array_equal(
        image_ops.sharpness(tf.constant(image), factor),
        _numpy_sharpness(image, factor))
  # A flat area of 3s: 39 / 13 is exactly 3 (the reference's float kernel
  # gives 2 there; the paper arithmetic keeps 3).
  flat = np.full([5, 5, 3], 3, np.uint8)
  np.testing.assert_array_equal(image_ops.sharpness(flat, 0.0), flat)


@pytest.mark.parametrize("threshold", [-5, 0, 1, 128, 255, 256, 300])
def test_solarize_by_xor(threshold):
  image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
  expected = np.where(image.astype(int) < threshold, image, 255 - image)
  np.testing.assert_array_equal(image_ops.solarize(image, threshold),
                                expected)
  wrapped = threshold % 256  # the reference's uint8 conversion
  np.testing.assert_array_equal(
      image_ops.solarize_reference(image, max(threshold, 0)),
      np.where(image < wrapped if threshold >= 0 else False, image,
               255 - image))


@pytest.mark.parametrize("addition", [-40, 0, 110, 275])
def test_solarize_add_without_select(addition):
  image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
  x = image.astype(int)
  expected = np.where(x < 128, np.clip(x + addition, 0, 255), x)
  np.testing.assert_array_equal(image_ops.solarize_add(image, addition),
                                expected.astype(np.uint8))


def test_constant_channels_pass_autocontrast_and_equalize():
  image = _images()[3]  # channel 1 constant, channel 2 three levels
  for op in (image_ops.autocontrast, image_ops.autocontrast_reference):
    out = op(tf.constant(image)).numpy()
    np.testing.assert_array_equal(out[:, :, 1], image[:, :, 1])
    # Stretched (the reference's float rounding may stop at 254).
    assert out[:, :, 0].min() == 0 and out[:, :, 0].max() >= 254
  flat = np.full([4, 4, 3], 9, np.uint8)
  for op in (image_ops.autocontrast, image_ops.autocontrast_reference,
             image_ops.equalize):
    np.testing.assert_array_equal(op(tf.constant(flat)), flat)


@pytest.mark.parametrize("pad,cy,cx", [
    (2, 3, 4), (0, 3, 4), (3, 0, 0), (4, 5, 7), (40, 2, 2), (2, -1, 9)])
def test_cutout_from_slices(pad, cy, cx):
  image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
  box = np.zeros([6, 8, 1], bool)
  box[max(cy - pad, 0):max(cy + pad, 0),
      max(cx - pad, 0):max(cx + pad, 0)] = True
  np.testing.assert_array_equal(
      image_ops.cutout_at(tf.constant(image), pad, cy, cx),
      np.where(box, np.uint8(128), image))
  noise = np.random.default_rng(1).random([6, 8, 3]).astype(np.float32)
  floats = image.astype(np.float32)
  np.testing.assert_array_equal(
      image_ops.cutout_at(tf.constant(floats), pad, cy, cx,
                          replace=tf.constant(noise)),
      np.where(box, noise, floats))


def test_batch_scaling_is_the_per_pixel_formula():
  """Without cutout the pipeline scales whole augmented batches: every
  value is the row's x * scale + offset of a uint8 pixel x, bit for bit."""
  prep = preprocessing.ROWS["legacy"]  # per-channel scaling
  stage = progressive.Stage(index=0, start_step=0, steps=1, image_size=20,
                            randaug_magnitude=9.0, mixup_alpha=0.0,
                            cutmix_alpha=0.0, dropout=0.0)
  batch = next(iter(pipeline.build_train_dataset(
      sources.digits_source(), 4, stage,
      pipeline.TrainInput(prep, augname="randaug"), seed=3)))
  images = batch["images"].numpy()
  scale, offset = (np.float32(v) for v in preprocessing.SCALINGS[
      prep.input_scaling])
  pixels = np.round((images - offset) / scale)
  assert pixels.min() >= 0 and pixels.max() <= 255
  expected = pixels.astype(np.float32) * scale + offset
  np.testing.assert_array_equal(images.view(np.int32),
                                expected.view(np.int32))
