"""Tests of per-example preprocessing and batch label mixing."""


import numpy as np
import pytest
import tensorflow as tf

import dataclasses

from effnetv2_tf.data import mix
from effnetv2_tf.data import preprocess
from effnetv2_tf.data import preprocessing

from conftest import SAMPLES
TENCH = SAMPLES / "n01440764_tench.JPEG"


@pytest.fixture(scope="module")
def jpeg_bytes():
  if not TENCH.exists():
    pytest.skip(f"{TENCH} not available")
  return TENCH.read_bytes()


V2, LEGACY, FINETUNE = (preprocessing.ROWS[k] for k in ("v2", "legacy", "finetune"))


def _seed(i):
  return tf.constant([7, i], tf.int64)


def test_whole_decode_crop_equals_the_decoded_images_crop(jpeg_bytes):
  # The v2 row decodes whole, then slices (reference preprocessing.py L142,
  # L38): the same crop as from the image decoded beforehand. (The legacy
  # row's fused decode differs at the window's edge: tests/test_decode.py.)
  encoded = tf.constant(jpeg_bytes)
  decoded = tf.io.decode_jpeg(encoded, channels=3)
  for i in range(5):
    whole = preprocess.random_crop({"encoded": encoded}, _seed(i), 224, V2)
    plain = preprocess.random_crop({"image": decoded}, _seed(i), 224, V2)
    np.testing.assert_array_equal(whole.numpy(), plain.numpy())


def test_random_crop_area_and_aspect_in_range(jpeg_bytes):
  encoded = tf.constant(jpeg_bytes)
  height, width = tf.io.extract_jpeg_shape(encoded).numpy()[:2]
  for i in range(20):
    crop = preprocess.random_crop({"encoded": encoded}, _seed(i), 224,
                                  V2).numpy()
    h, w = crop.shape[:2]
    assert 0.05 * 0.9 <= h * w / (height * width) <= 1.0
    # Integer rounding of the box moves the aspect slightly off the range.
    assert 0.75 * 0.9 <= w / h <= 4 / 3 * 1.1 or (h, w) == (height, width)


def test_random_crop_same_seed_same_crop_png():
  image = tf.cast(tf.random.stateless_uniform([50, 70, 3], [1, 2], 0, 255),
                  tf.uint8)
  png = tf.io.encode_png(image)
  a = preprocess.random_crop({"encoded": png}, _seed(3), 32, LEGACY)
  b = preprocess.random_crop({"image": image}, _seed(3), 32, LEGACY)
  np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_center_crop_offsets_by_hand():
  # 224 px of a 100 x 201 image: side int(224 / 256 * 100) = 87. V2
  # (preprocessing.py) puts it at ((100 - 87) // 2, (201 - 87) // 2) =
  # (6, 57); legacy (preprocess_legacy.py) at (+1) // 2: (7, 57).
  image = np.arange(100 * 201 * 3, dtype=np.int64).reshape(100, 201, 3)
  image = tf.constant(image % 251, tf.uint8)
  for prep, (top, left) in ((V2, (6, 57)), (LEGACY, (7, 57))):
    crop = preprocess.eval_crop({"image": image}, 224, prep).numpy()
    np.testing.assert_array_equal(
        crop, image.numpy()[top:top + 87, left:left + 87])


def test_eval_crop_rule_per_row():
  image = tf.zeros([40, 60, 3], tf.uint8)
  # V2 skips the crop from 320 px; legacy crops at every size
  # (int(384 / 416 * 40) = 36); finetune never crops.
  assert preprocess.eval_crop({"image": image}, 384, V2).shape == (40, 60, 3)
  assert preprocess.eval_crop({"image": image}, 300, V2).shape == (36, 36, 3)
  assert preprocess.eval_crop({"image": image}, 384,
                              LEGACY).shape == (36, 36, 3)
  assert preprocess.eval_crop({"image": image}, 224,
                              FINETUNE).shape == (40, 60, 3)


def test_legacy_crop_falls_back_to_center_crop():
  # An area range no window can meet: the sampler returns the whole image,
  # which the legacy pipeline replaces by the eval center crop.
  image = tf.constant(np.arange(30 * 50 * 3).reshape(30, 50, 3) % 251,
                      tf.uint8)
  impossible = dataclasses.replace(LEGACY, crop_aspect_min=4.0,
                                   crop_aspect_max=5.0, crop_area_min=0.9)
  crop = preprocess.random_crop({"image": image}, _seed(1), 96, impossible)
  side = int(96 / 128 * 30)  # 22
  top, left = (30 - side + 1) // 2, (50 - side + 1) // 2
  np.testing.assert_array_equal(
      crop.numpy(), image.numpy()[top:top + side, left:left + side])
  whole = preprocess.random_crop({"image": image}, _seed(1), 96,
                                 dataclasses.replace(impossible,
                                                     crop_fallback="whole"))
  assert whole.shape == (30, 50, 3)


def test_bicubic_is_the_tf1_grid():
  # TF1 resize_bicubic without half-pixel centres maps output pixel x to
  # input x * in / out: upsampling 2x keeps every input pixel at an even
  # output index (Keys cubic weights at integer offsets are 1, 0, 0, 0).
  image = tf.constant(np.random.default_rng(0).integers(0, 255, [4, 4, 3]),
                      tf.uint8)
  out = preprocess.resize(image, 8, "bicubic").numpy()
  np.testing.assert_allclose(out[::2, ::2], image.numpy(), atol=1e-4)
  bilinear = preprocess.resize(image, 8, "bilinear").numpy()
  assert not np.allclose(bilinear[::2, ::2], image.numpy(), atol=1)
  with pytest.raises(ValueError, match="Unknown resize method"):
    preprocess.resize(image, 8, "area")


def test_to_uint8_truncates_like_the_reference():
  # preprocessing.py: clip, then tf.cast to uint8 (truncation, not rounding).
  out = preprocess.to_uint8(tf.constant([-3.0, 0.9, 127.99, 254.5, 300.0]))
  np.testing.assert_array_equal(out.numpy(), [0, 0, 127, 254, 255])


def test_finetune_cutout_geometry_and_fill():
  # pad = 64 // 4 = 16: a square of side <= 32 around a random pixel,
  # clipped at the border, filled with [0, 1) noise.
  image = tf.fill([64, 64, 3], -5.0)
  sides = set()
  for i in range(40):
    out = preprocess.finetune_cutout(image, _seed(i)).numpy()
    cut = out[..., 0] != -5.0
    rows, cols = np.nonzero(cut)
    assert cut.sum() > 0 and 0.0 <= out[cut.nonzero()].min()
    assert out[cut.nonzero()].max() < 1.0
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert cut.sum() == h * w and h <= 32 and w <= 32  # one rectangle
    sides.add((h, w))
  assert (32, 32) in sides and len(sides) > 1  # inside and clipped


def test_scalings_by_hand():
  pixels = tf.constant([[[0.0, 128.0, 255.0]]])
  np.testing.assert_allclose(
      preprocess.normalize(pixels, preprocessing.SCALE_MINUS_ONE_ONE).numpy(),
      [[[-1.0, 0.0, 127.0 / 128.0]]])
  np.testing.assert_allclose(
      preprocess.normalize(pixels, preprocessing.SCALE_FINETUNE).numpy(),
      [[[-1.0, (128 / 255 - 0.5) / 0.5, 1.0]]], rtol=1e-6, atol=1e-6)
  mean = np.array([0.485, 0.456, 0.406]) * 255.0  # preprocess_legacy.py
  std = np.array([0.229, 0.224, 0.225]) * 255.0
  out = preprocess.normalize(tf.constant((mean + std)[None, None]),
                             preprocessing.SCALE_IMAGENET)
  np.testing.assert_allclose(out.numpy(), 1.0, atol=1e-5)
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
