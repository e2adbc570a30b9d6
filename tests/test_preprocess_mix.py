"""Tests of per-example preprocessing and batch label mixing."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import registry
from effnetv2_tf.data import mix
from effnetv2_tf.data import preprocess

SAMPLES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / (
    "imagenet-samples")
TENCH = SAMPLES / "n01440764_tench.JPEG"


@pytest.fixture(scope="module")
def jpeg_bytes():
  if not TENCH.exists():
    pytest.skip(f"{TENCH} not available")
  return TENCH.read_bytes()


def _seed(i):
  return tf.constant([7, i], tf.int64)


def test_fused_jpeg_crop_equals_decode_then_slice(jpeg_bytes):
  encoded = tf.constant(jpeg_bytes)
  decoded = tf.io.decode_jpeg(encoded, channels=3)
  for i in range(5):
    fused = preprocess.random_crop({"encoded": encoded}, _seed(i))
    plain = preprocess.random_crop({"image": decoded}, _seed(i))
    np.testing.assert_array_equal(fused.numpy(), plain.numpy())


def test_random_crop_area_and_aspect_in_range(jpeg_bytes):
  encoded = tf.constant(jpeg_bytes)
  height, width = tf.io.extract_jpeg_shape(encoded).numpy()[:2]
  for i in range(20):
    crop = preprocess.random_crop({"encoded": encoded}, _seed(i)).numpy()
    h, w = crop.shape[:2]
    assert 0.05 * 0.9 <= h * w / (height * width) <= 1.0
    # Integer rounding of the box moves the aspect slightly off the range.
    assert 0.75 * 0.9 <= w / h <= 4 / 3 * 1.1 or (h, w) == (height, width)


def test_random_crop_same_seed_same_crop_png():
  image = tf.cast(tf.random.stateless_uniform([50, 70, 3], [1, 2], 0, 255),
                  tf.uint8)
  png = tf.io.encode_png(image)
  a = preprocess.random_crop({"encoded": png}, _seed(3))
  b = preprocess.random_crop({"image": image}, _seed(3))
  np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_center_crop_by_hand():
  image = np.arange(100 * 200 * 3, dtype=np.int64).reshape(100, 200, 3)
  image = tf.constant(image % 251, tf.uint8)
  crop = preprocess.center_crop({"image": image}, 224).numpy()
  side = int(224 / (224 + 32) * 100)  # 87
  top, left = (100 - side + 1) // 2, (200 - side + 1) // 2
  np.testing.assert_array_equal(
      crop, image.numpy()[top:top + side, left:left + side])


def test_center_crop_skipped_from_320_unless_disabled():
  image = tf.zeros([40, 60, 3], tf.uint8)
  assert preprocess.center_crop({"image": image}, 384).shape == (40, 60, 3)
  cropped = preprocess.center_crop({"image": image}, 384,
                                   skip_crop_from_size=None)
  assert cropped.shape == (36, 36, 3)  # int(384 / 416 * 40) = int(36.9)


def test_normalize_both_scalings():
  pixels = tf.constant([[[0.0, 128.0, 255.0]]])
  np.testing.assert_allclose(
      preprocess.normalize(pixels, registry.SCALE_MINUS_ONE_ONE).numpy(),
      [[[-1.0, 0.0, 127.0 / 128.0]]])
  mean = np.array(registry.IMAGENET_MEAN_RGB) * 255.0
  out = preprocess.normalize(tf.constant(mean[None, None]),
                             registry.SCALE_IMAGENET)
  np.testing.assert_allclose(out.numpy(), 0.0, atol=1e-5)
  with pytest.raises(ValueError, match="Unknown input scaling"):
    preprocess.normalize(pixels, "bogus")


def test_smooth_labels_by_hand():
  labels = tf.one_hot([3], 10)
  out = mix.smooth_labels(labels, 0.1).numpy()
  np.testing.assert_allclose(out[0, 3], 0.91, rtol=1e-6)
  np.testing.assert_allclose(out[0, 0], 0.01, rtol=1e-6)


def test_sample_beta_moments_and_determinism():
  a = mix.sample_beta([20000], 0.5, tf.constant([1, 2]))
  b = mix.sample_beta([20000], 0.5, tf.constant([1, 2]))
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  # Beta(0.5, 0.5): mean 1/2, variance 1/8.
  assert abs(np.mean(a) - 0.5) < 0.01
  assert abs(np.var(a) - 0.125) < 0.01


def _constant_batch(batch=8, size=16, classes=10):
  """Example i is filled with value i and labelled i."""
  values = tf.range(batch, dtype=tf.float32)
  images = tf.ones([batch, size, size, 3]) * values[:, None, None, None]
  return images, tf.one_hot(tf.range(batch), classes)


def test_mixup_image_and_label_weights_agree():
  images, labels = _constant_batch()
  mixed, mixed_labels = mix.mixup(images, labels, 0.8, tf.constant([3, 4]))
  lam = mixed_labels.numpy()[np.arange(8), np.arange(8)]
  assert np.all(lam >= 0.5)
  np.testing.assert_allclose(mixed_labels.numpy().sum(1), 1.0, rtol=1e-6)
  partner = np.arange(8)[::-1]
  expected = lam * np.arange(8) + (1 - lam) * partner
  np.testing.assert_allclose(mixed.numpy()[:, 0, 0, 0], expected, rtol=1e-5)


def test_cutmix_label_weight_is_pasted_area():
  images, labels = _constant_batch(size=20)
  mixed, mixed_labels = mix.cutmix(images, labels, 1.0, tf.constant([5, 6]))
  mixed, mixed_labels = mixed.numpy(), mixed_labels.numpy()
  np.testing.assert_allclose(mixed_labels.sum(1), 1.0, rtol=1e-6)
  for i in range(8):
    partner = 7 - i
    from_partner = np.mean(mixed[i, ..., 0] == partner)
    np.testing.assert_allclose(mixed_labels[i, partner], from_partner,
                               atol=1e-6)


def test_mix_batch_halves_and_noop():
  images, labels = _constant_batch(batch=8, size=10)
  same = mix.mix_batch(images, labels, 0.0, 0.0, tf.constant([1, 1]))
  np.testing.assert_array_equal(same[1].numpy(), labels.numpy())
  _, mixed = mix.mix_batch(images, labels, 0.5, 1.0, tf.constant([1, 1]))
  mixed = mixed.numpy()
  np.testing.assert_allclose(mixed.sum(1), 1.0, rtol=1e-6)
  # First half: mixup among examples 0..3; second: cutmix among 4..7.
  assert np.all(mixed[:4, 4:] == 0) and np.all(mixed[4:, :4] == 0)
  pixel_fractions = mixed[4:, 4:] * 100  # 10x10 images: whole pixels
  np.testing.assert_allclose(pixel_fractions, np.round(pixel_fractions),
                             atol=1e-4)


def test_mixing_inside_tf_function():
  images, labels = _constant_batch()
  fn = tf.function(lambda x, y, s: mix.mix_batch(x, y, 0.2, 1.0, s))
  out_images, out_labels = fn(images, labels, tf.constant([9, 9]))
  assert out_images.shape == images.shape
  np.testing.assert_allclose(out_labels.numpy().sum(1), 1.0, rtol=1e-6)
