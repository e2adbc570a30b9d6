"""Per-example preprocessing: inception crop, flip, resize, eval crop, scaling.

Training (reference EfficientNetV2 `preprocess_for_train`): a random crop of
area 5-100% and aspect 3/4-4/3 from `sample_distorted_bounding_box`
(min_object_covered 0, 100 attempts), fused with JPEG decoding where the input
is a JPEG; random horizontal flip; bilinear resize to the stage size.
Evaluation: a center crop of size / (size + 32) of the shorter side, resized
to the eval size. Every random op is stateless and takes an explicit seed.
"""

import tensorflow as tf

from effnetv2_tf import registry

CROP_PADDING = 32


def decode_image(encoded):
  """Decodes JPEG/PNG/GIF/BMP bytes to uint8 [H, W, 3] (grayscale -> RGB)."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _image_shape(features):
  if "encoded" in features:
    encoded = features["encoded"]
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.extract_jpeg_shape(encoded)[:2],
        lambda: tf.shape(decode_image(encoded))[:2])
  return tf.shape(features["image"])[:2]


def _crop(features, offset_hw, size_hw):
  """Crops a decoded image, or decodes only the window of a JPEG."""
  if "encoded" not in features:
    image = features["image"]
    return tf.slice(image, tf.concat([offset_hw, [0]], 0),
                    tf.concat([size_hw, [-1]], 0))
  encoded = features["encoded"]
  window = tf.concat([offset_hw, size_hw], 0)

  def fused():
    return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)

  def generic():
    image = decode_image(encoded)
    return tf.slice(image, tf.concat([offset_hw, [0]], 0),
                    tf.concat([size_hw, [-1]], 0))

  image = tf.cond(tf.io.is_jpeg(encoded), fused, generic)
  image.set_shape([None, None, 3])
  return image


def random_crop(features, seed, area_range=(0.05, 1.0),
                aspect_ratio_range=(3 / 4, 4 / 3), max_attempts=100):
  """Inception-style random crop; returns uint8 [h, w, 3].

  Args:
    features: dict with 'encoded' (image bytes) or 'image' (uint8 tensor).
    seed: shape [2] integer seed of the stateless sampler.
    area_range: fraction of the image area the crop may cover.
    aspect_ratio_range: width / height range of the crop.
    max_attempts: tries before falling back to the whole image.
  """
  shape = _image_shape(features)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([shape, [3]], 0),
      bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=aspect_ratio_range,
      area_range=area_range,
      max_attempts=max_attempts,
      use_image_if_no_bounding_boxes=True)
  return _crop(features, begin[:2], size[:2])


def center_crop(features, image_size, crop_padding=CROP_PADDING,
                skip_crop_from_size=320):
  """Center crop of image_size / (image_size + crop_padding) of the shorter side.

  The reference skips the crop (resizes the whole image) at eval sizes of
  `skip_crop_from_size` and above; None always crops.
  """
  offset, size = center_crop_window(_image_shape(features), image_size,
                                    crop_padding, skip_crop_from_size)
  return _crop(features, offset, size)


def center_crop_window(shape, image_size, crop_padding=CROP_PADDING,
                       skip_crop_from_size=320):
  """(offset, size), both int32 [2], of the eval crop in a [h, w] image.

  The whole image when `skip_crop_from_size` is set and reached.
  """
  shape = tf.cast(shape, tf.int32)
  if skip_crop_from_size and image_size >= skip_crop_from_size:
    return tf.zeros([2], tf.int32), shape
  ratio = image_size / (image_size + crop_padding)
  side = tf.cast(
      ratio * tf.cast(tf.reduce_min(shape), tf.float32), tf.int32)
  return (shape - side + 1) // 2, tf.stack([side, side])


def resize(image, image_size):
  """Bilinear resize to a square (reference V2), float32 in 0..255."""
  image = tf.image.resize(image, [image_size, image_size],
                          method=tf.image.ResizeMethod.BILINEAR)
  image.set_shape([image_size, image_size, 3])
  return image


def to_uint8(image):
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def normalize(image, input_scaling):
  """Scales 0..255 pixels as the model's registry entry says."""
  image = tf.cast(image, tf.float32)
  if input_scaling == registry.SCALE_MINUS_ONE_ONE:
    return (image - 128.0) / 128.0
  if input_scaling == registry.SCALE_IMAGENET:
    mean = tf.constant(registry.IMAGENET_MEAN_RGB) * 255.0
    std = tf.constant(registry.IMAGENET_STDDEV_RGB) * 255.0
    return (image - mean) / std
  raise ValueError(
      f"Unknown input scaling {input_scaling!r}; expected "
      f"{registry.SCALE_MINUS_ONE_ONE!r} or {registry.SCALE_IMAGENET!r}.")
