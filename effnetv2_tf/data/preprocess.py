"""Per-example preprocessing: random crop, resize, flip, eval crop, scaling.

Each function applies the values of one `preprocessing.Preprocessing` row (the
reference's V2, legacy V1 or finetune pipeline); image sizes come from the
stage. Training: an inception-style crop from
`stateless_sample_distorted_bounding_box`; resize to the stage size; random
horizontal flip (after the resize, as both reference pipelines do: the
legacy bicubic grid is not mirror-symmetric). Evaluation: a center crop of
size / (size + padding) of the shorter side, resized to the eval size. Both
crops of encoded bytes decode as the row's `decode` says: the window alone
(JPEG, 'fused') or the whole image, then a slice ('whole'); with
`decode_reduced` (opt-in) a JPEG decodes at the smallest of libjpeg's
scales that keeps the crop at least the output size. Every random op is
stateless and takes an explicit seed.
"""

import functools

import tensorflow as tf

from effnetv2_tf.data import image_ops
from effnetv2_tf.data import preprocessing


def decode_image(encoded):
  """Decodes JPEG/PNG/GIF/BMP bytes to uint8 [H, W, 3] (grayscale -> RGB)."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def whole_image(features):
  """The decoded uint8 image of an example."""
  if "encoded" in features:
    return decode_image(features["encoded"])
  return features["image"]


def _for_crop(features, prep):
  """The features a crop reads: with `decode` 'whole', the decoded image in
  place of encoded bytes; with 'fused' or `decode_reduced`, the bytes
  (`_crop` decodes them)."""
  if prep.decode not in preprocessing.DECODE_METHODS:
    raise ValueError(f"Unknown decode {prep.decode!r}; valid: "
                     f"{', '.join(preprocessing.DECODE_METHODS)}.")
  if prep.decode == "whole" and not prep.decode_reduced:
    return {"image": whole_image(features)}
  # With decode_reduced a PNG (say) decodes twice, for its shape and in
  # `_crop`: the opt-in is for JPEG datasets, and a tensor-dependent
  # choice between bytes and pixels cannot pick the features' structure.
  return features


def _image_shape(features):
  if "encoded" in features:
    encoded = features["encoded"]
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.extract_jpeg_shape(encoded)[:2],
        lambda: tf.shape(decode_image(encoded))[:2])
  return tf.shape(features["image"])[:2]


def _slice(image, offset_hw, size_hw):
  return tf.slice(image, tf.concat([offset_hw, [0]], 0),
                  tf.concat([size_hw, [-1]], 0))


def _ratio_index(size_hw, image_size):
  smallest = tf.reduce_min(tf.cast(size_hw, tf.int32))
  return tf.add_n([tf.cast(smallest >= r * image_size, tf.int32)
                   for r in preprocessing.JPEG_RATIOS[1:]])


def jpeg_ratio(size_hw, image_size):
  """The largest of `preprocessing.JPEG_RATIOS` that keeps both sides of a
  [h, w] window at least `image_size` pixels once divided (int32 scalar)."""
  return tf.gather(preprocessing.JPEG_RATIOS,
                   _ratio_index(size_hw, image_size))


def _decode_jpeg_window(encoded, offset_hw, size_hw, decode, ratio):
  """A JPEG's window decoded at 1/`ratio` scale: the window alone ('fused')
  or the whole image, then sliced. libjpeg scales the image to
  ceil(side / ratio), so the scaled window (offset and size divided,
  rounded down) stays inside it."""
  if ratio > 1:
    offset_hw, size_hw = offset_hw // ratio, size_hw // ratio
  if decode == "fused":
    return tf.image.decode_and_crop_jpeg(
        encoded, tf.concat([offset_hw, size_hw], 0), channels=3, ratio=ratio)
  return _slice(tf.io.decode_jpeg(encoded, channels=3, ratio=ratio),
                offset_hw, size_hw)


def _crop(features, offset_hw, size_hw, prep, image_size):
  """Crops a decoded image, or decodes the window of a JPEG.

  A JPEG window decodes per `prep.decode` (bytes reach here as 'whole' only
  with `decode_reduced`), with `decode_reduced` at the ratio of
  `jpeg_ratio` (`tf.io.decode_jpeg` takes it as an attribute, so one branch
  per ratio). Other encoded formats decode whole, then slice:
  decode_and_crop_jpeg takes JPEG only (the reference's legacy pipeline
  fails on them at extract_jpeg_shape), and for a lossless format both give
  the same pixels.
  """
  if "encoded" not in features:
    return _slice(features["image"], offset_hw, size_hw)
  encoded = features["encoded"]
  window = functools.partial(_decode_jpeg_window, encoded, offset_hw,
                             size_hw, prep.decode)
  if prep.decode_reduced:
    jpeg = lambda: tf.switch_case(  # pylint: disable=g-long-lambda
        _ratio_index(size_hw, image_size),
        [functools.partial(window, r) for r in preprocessing.JPEG_RATIOS])
  else:
    jpeg = functools.partial(window, 1)
  image = tf.cond(tf.io.is_jpeg(encoded), jpeg,
                  lambda: _slice(decode_image(encoded), offset_hw, size_hw))
  image.set_shape([None, None, 3])
  return image


def random_crop(features, seed, image_size, prep):
  """Inception-style random crop; returns uint8 [h, w, 3].

  Args:
    features: dict with 'encoded' (image bytes) or 'image' (uint8 tensor).
    seed: shape [2] integer seed of the stateless sampler.
    image_size: the output size (sizes the legacy center-crop fallback).
    prep: a `preprocessing.Preprocessing` (decode, crop area, aspect, min object
      covered, attempts and fallback).
  """
  features = _for_crop(features, prep)
  shape = _image_shape(features)
  if prep.crop_min_object_covered > 0:  # legacy: the whole image as the box
    boxes = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
  else:
    boxes = tf.zeros([1, 0, 4], tf.float32)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([shape, [3]], 0), bounding_boxes=boxes, seed=seed,
      min_object_covered=prep.crop_min_object_covered,
      aspect_ratio_range=(prep.crop_aspect_min, prep.crop_aspect_max),
      area_range=(prep.crop_area_min, 1.0),
      max_attempts=prep.crop_max_attempts,
      use_image_if_no_bounding_boxes=True)
  offset, size = begin[:2], size[:2]
  if prep.crop_fallback == "center":
    # preprocess_legacy.py: a crop equal to the whole image (what the
    # sampler returns after its attempts) becomes the eval center crop.
    whole = tf.reduce_all(tf.equal(size, tf.cast(shape, tf.int32)))
    center_offset, center_size = center_crop_window(
        shape, image_size, prep.crop_padding, prep.crop_offset)
    offset = tf.where(whole, center_offset, offset)
    size = tf.where(whole, center_size, size)
  return _crop(features, offset, size, prep, image_size)


def center_crop_window(shape, image_size, crop_padding, crop_offset):
  """(offset, size), both int32 [2], of the center crop in a [h, w] image.

  The crop is the square of image_size / (image_size + crop_padding) of the
  shorter side, at least 1 pixel (a 1-pixel image, where the reference's
  crop would be empty); `crop_offset` 'floor' puts it at (h - c) // 2,
  'ceil' at (h - c + 1) // 2.
  """
  shape = tf.cast(shape, tf.int32)
  ratio = image_size / (image_size + crop_padding)
  side = tf.maximum(tf.cast(
      ratio * tf.cast(tf.reduce_min(shape), tf.float32), tf.int32), 1)
  extra = 1 if crop_offset == "ceil" else 0
  return (shape - side + extra) // 2, tf.stack([side, side])


def eval_crop_window(shape, image_size, prep):
  """(offset, size) of the eval crop: the center crop, or the whole image
  without `eval_crop` or from `skip_crop_from_size` on."""
  skip = prep.skip_crop_from_size and image_size >= prep.skip_crop_from_size
  if not prep.eval_crop or skip:
    return tf.zeros([2], tf.int32), tf.cast(shape, tf.int32)
  return center_crop_window(shape, image_size, prep.crop_padding,
                            prep.crop_offset)


def eval_crop(features, image_size, prep):
  """The eval crop of one example, uint8 (decoded per `prep.decode`)."""
  features = _for_crop(features, prep)
  offset, size = eval_crop_window(_image_shape(features), image_size, prep)
  return _crop(features, offset, size, prep, image_size)


def uncropped(features, image_size, prep):
  """The whole image, uint8, for training without a crop: decoded whole,
  or with `decode_reduced` as `_crop` decodes a window."""
  if not prep.decode_reduced:
    return whole_image(features)
  shape = tf.cast(_image_shape(features), tf.int32)
  return _crop(features, tf.zeros([2], tf.int32), shape, prep, image_size)


def resize(images, image_size, method):
  """Resizes [H, W, 3] or [B, H, W, 3] to a square; float32 in 0..255.

  'bicubic' is TF1's `resize_bicubic` (no half-pixel centres), which the
  reference's legacy pipeline ran under tensorflow.compat.v1.
  """
  if method not in preprocessing.RESIZE_METHODS:
    raise ValueError(f"Unknown resize method {method!r}; valid: "
                     f"{', '.join(preprocessing.RESIZE_METHODS)}.")
  size = [image_size, image_size]
  if method == "bilinear":
    out = tf.image.resize(images, size, method="bilinear")
  else:
    batched = images if images.shape.rank == 4 else images[tf.newaxis]
    out = tf.raw_ops.ResizeBicubic(images=batched, size=size,
                                   align_corners=False,
                                   half_pixel_centers=False)
    out = out if images.shape.rank == 4 else out[0]
  out.set_shape(images.shape[:-3].concatenate([image_size, image_size, 3]))
  return out


def flip(image, seed):
  return tf.image.stateless_random_flip_left_right(image, seed)


def to_uint8(image, bounded=False):
  """Clips to 0..255 and truncates, as both references do before augmenting.

  Args:
    image: float image.
    bounded: the values lie in (-1, 256), as a bilinear resize of uint8
      pixels leaves them (convex weights, float rounding of a few ulps);
      truncation alone then gives the same bytes, so the clip is skipped.
  """
  if not bounded:
    image = tf.clip_by_value(image, 0.0, 255.0)
  return tf.cast(image, tf.uint8)


def normalize(image, input_scaling):
  """Applies a `preprocessing.SCALINGS` map to 0..255 pixels."""
  scale, offset = preprocessing.scaling(input_scaling)
  if len(set(scale)) == 1 and len(set(offset)) == 1:
    # The same float32 values as scalars: a faster kernel than the
    # per-channel broadcast, the same bits.
    scale, offset = scale[0], offset[0]
  else:
    scale = image_ops.per_pixel(scale, image)
    offset = image_ops.per_pixel(offset, image)
  return tf.cast(image, tf.float32) * scale + offset


def resize_and_scale(images, image_size, prep):
  """What eval does after its crop: resize, then the input scaling."""
  return normalize(resize(images, image_size, prep.resize_method),
                   prep.input_scaling)


def eval_preprocess(features, image_size, prep):
  """One evaluation example: eval crop, resize, scale; float32 [S, S, 3].

  The one definition that the eval pipeline, the exported `serving_bytes`
  signature and infer.py apply to encoded bytes ('encoded') or a decoded
  uint8 'image'.
  """
  return resize_and_scale(eval_crop(features, image_size, prep), image_size,
                          prep)


def finetune_cutout(image, seed):
  """Reference finetune cutout: a square of half side size // 4 around a
  uniform pixel, clipped at the border, filled with uniform [0, 1) noise
  (on the scaled image; `autoaugment.cutout` with `replace` noise)."""
  noise_seed, place_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  noise = tf.random.stateless_uniform(tf.shape(image), noise_seed,
                                      dtype=image.dtype)
  return image_ops.cutout(image, image.shape[0] // 4, place_seed,
                          replace=noise)
