"""Elementary uint8 image ops for RandAugment and AutoAugment.

The 16 ops of RandAugment (Cubuk et al. 2020, "RandAugment: Practical
automated data augmentation with a reduced search space") and AutoAugment
(Cubuk et al. 2019, "AutoAugment: Learning Augmentation Strategies from
Data"), with the PIL-like semantics of the reference EfficientNetV2
`autoaugment.py` (google/automl). Every op takes and returns a uint8
[H, W, 3] tensor (static or dynamic H, W); arguments may be Python numbers or
scalar tensors. Geometric ops use TensorFlow's own
`ImageProjectiveTransformV3` (nearest neighbour, constant fill), so no
tensorflow-addons is needed; translations take a slice and a pad instead
wherever that gives the kernel's bytes (almost always). The only random
op, cutout, is stateless and takes a shape [2] seed; it also serves the
finetune pipeline's cutout on float images.

Five ops come in two arithmetics (`augment.ARITHMETICS`). The plain
functions compute what PIL defines (the `paper` arithmetic); the
`*_reference` functions compute what the reference computes, quirks included
(the `reference` arithmetic, with which the published models were trained):
posterize and solarize take their argument as the reference's uint8
conversion wraps it, contrast blends towards the pixel count / 256, and
sharpness and autocontrast keep the reference's float32 rounding. The other
ops compute the same in both.
"""

import math

import tensorflow as tf

FILL_VALUE = 128


def _as_float(image):
  return tf.cast(image, tf.float32)


def _to_uint8(image):
  """Clips a float image to 0..255 and truncates to uint8 (reference)."""
  return tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)


def per_pixel(values, image):
  """Per-channel `values` ([3]) repeated to the image's static [H, W, 3].

  The same per-element arithmetic as broadcasting the 3 values, about
  twice as fast in TensorFlow's kernels (a broadcast over a batch axis at
  most). Returns the [3] values themselves where H or W is not static.
  """
  values = tf.convert_to_tensor(values)
  shape = tf.TensorShape(getattr(image, "shape", None))
  if shape.rank is None or shape.rank < 3 or None in shape[-3:-1]:
    return values
  height, width = shape[-3], shape[-2]
  return tf.reshape(tf.tile(values, [height * width]), [height, width, 3])


def blend(image1, image2, factor):
  """image1 + factor * (image2 - image1), clipped to 0..255.

  Args:
    image1: uint8 image, returned for factor 0.
    image2: uint8 image, returned for factor 1.
    factor: float >= 0; values above 1 extrapolate.

  Returns:
    The uint8 blend (truncated towards zero, as in the reference).
  """
  image1 = _as_float(image1)
  image2 = _as_float(image2)
  factor = tf.cast(factor, tf.float32)
  return _to_uint8(image1 + factor * (image2 - image1))


def invert(image):
  """255 - image."""
  return 255 - tf.convert_to_tensor(image)


def autocontrast(image):
  """Per channel, stretches min..max linearly to 0..255 (PIL AutoContrast).

  Constant channels are kept unchanged.

  Args:
    image: uint8 [H, W, 3].

  Returns:
    uint8 image of the same shape.
  """
  x, lo, span = _channel_range(image)
  # (x - lo) * 255 is an exact integer, so the extremes map to 0 and 255.
  return _to_uint8((x - lo) * 255.0 / span)


def autocontrast_reference(image):
  """`autocontrast` as the reference computes it (autoaugment.py L300-309).

  The float32 x * (255 / span) - lo * (255 / span) can land just below an
  integer and truncate one level lower: a channel spanning 0..7 maps 7 to
  254, where `autocontrast` gives 255.

  Args:
    image: uint8 [H, W, 3].

  Returns:
    uint8 image of the same shape.
  """
  x, lo, span = _channel_range(image)
  scale = 255.0 / span
  offset = -lo * scale
  return _to_uint8(x * scale + offset)


def _channel_range(image):
  """The float image, each channel's minimum and its span: what both
  autocontrasts stretch.

  A constant channel gets minimum 0 and span 255, which both formulas map
  exactly to itself ((x - 0) * 255 / 255 and x * 1 + -0), the identity
  PIL keeps it at, without a full-image select.
  """
  # Reduced in uint8 (exact, and several times faster than in float32).
  lo = _as_float(tf.reduce_min(image, axis=[0, 1]))
  hi = _as_float(tf.reduce_max(image, axis=[0, 1]))
  varies = hi > lo
  return (_as_float(image), tf.where(varies, lo, 0.0),
          tf.where(varies, hi - lo, 255.0))


def equalize(image):
  """Per channel histogram equalisation with PIL's lookup table.

  step = (pixels - count of the brightest value) // 255; the table maps value
  v to (cumulative count below v + step // 2) // step; channels with step 0
  are kept unchanged.

  Args:
    image: uint8 [H, W, 3].

  Returns:
    uint8 image of the same shape.
  """
  pixels = tf.cast(image, tf.int32)
  # Channel c uses bins 256c..256c+255.
  index = pixels + per_pixel(tf.range(3) * 256, image)
  hist = tf.math.bincount(
      tf.reshape(index, [-1]), minlength=768, maxlength=768)
  hist = tf.reshape(hist, [3, 256])
  brightest = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.int32)
  top_count = tf.gather(hist, brightest, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - top_count) // 255
  safe_step = tf.maximum(step, 1)[:, tf.newaxis]
  lut = (tf.cumsum(hist, axis=1, exclusive=True) + safe_step // 2) // safe_step
  lut = tf.clip_by_value(lut, 0, 255)
  # Channels with step 0 keep their values: the identity table (cheaper
  # than a select over the image).
  lut = tf.where(step[:, tf.newaxis] > 0, lut, tf.range(256)[tf.newaxis])
  return tf.gather(tf.reshape(tf.cast(lut, tf.uint8), [-1]), index)


def posterize(image, bits):
  """Keeps the top `bits` bits of every value (bits clipped to 0..8).

  Args:
    image: uint8 image.
    bits: int in 0..8; 8 is the identity, 0 gives black.

  Returns:
    uint8 image, (x >> (8 - bits)) << (8 - bits).
  """
  bits = tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
  mask = 256 - tf.bitwise.left_shift(1, 8 - bits)
  return tf.bitwise.bitwise_and(image, tf.cast(mask, tf.uint8))


def posterize_reference(image, bits):
  """`posterize` as the reference computes it (autoaugment.py L219-222).

  The reference shifts the uint8 image right and back left by the Python
  int 8 - bits, which TensorFlow converts to uint8 (wrapping: 9 bits give a
  shift of 255), and TensorFlow's CPU shift kernels clamp a shift to 0..7.
  So 1..8 bits are `posterize`'s, while 0 bits and more than 8 keep the top
  bit (pixels 0 or 128). The clamp is explicit here: TensorFlow leaves
  shifts of 8 or more undefined.

  Args:
    image: uint8 image.
    bits: int >= 0.

  Returns:
    uint8 image.
  """
  shift = tf.cast(8 - tf.cast(bits, tf.int32), tf.uint8)  # wraps mod 256
  shift = tf.minimum(shift, 7)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, threshold=128):
  """Inverts every value >= threshold (<= 0: invert all, >= 256: identity).

  Args:
    image: uint8 image.
    threshold: int.

  Returns:
    uint8 image.
  """
  threshold = tf.cast(threshold, tf.int32)
  lowest = tf.cast(tf.clip_by_value(threshold, 0, 255), tf.uint8)
  return _invert_from(image, lowest, threshold < 256)


def solarize_reference(image, threshold=128):
  """`solarize` as the reference computes it (autoaugment.py L177).

  The reference compares the uint8 image with the threshold converted to
  uint8, which wraps it mod 256: 256 and 512 become 0 (invert all), 384
  becomes 128.

  Args:
    image: uint8 image.
    threshold: int >= 0.

  Returns:
    uint8 image.
  """
  threshold = tf.cast(tf.cast(threshold, tf.int32), tf.uint8)  # wraps
  return _invert_from(image, threshold)


def _invert_from(image, lowest, enabled=True):
  """uint8 image with the values >= `lowest` inverted (none unless
  `enabled`): 255 - x is x ^ 255, so an xor with 255 or 0 per pixel, much
  faster than a select."""
  flip = tf.where(enabled, tf.constant(255, tf.uint8), 0)
  return tf.bitwise.bitwise_xor(
      image, tf.cast(image >= lowest, tf.uint8) * flip)


def solarize_add(image, addition=0, threshold=128):
  """Adds `addition` to values < threshold, clipped to 0..255.

  Args:
    image: uint8 image.
    addition: int added to the dark values.
    threshold: int; values >= threshold are kept.

  Returns:
    uint8 image.
  """
  x = tf.cast(image, tf.int32)
  # Adds 0 to the values >= threshold (arithmetic, not a select); clipping
  # keeps those, already in 0..255.
  dark = tf.cast(x < tf.cast(threshold, tf.int32), tf.int32)
  added = x + dark * tf.cast(addition, tf.int32)
  return tf.cast(tf.clip_by_value(added, 0, 255), tf.uint8)


def _grayscale(image):
  return tf.image.rgb_to_grayscale(image)  # uint8 [H, W, 1]


def color(image, factor):
  """PIL Color: blends the greyscale version (factor 0) with the image (1)."""
  degenerate = tf.image.grayscale_to_rgb(_grayscale(image))
  return blend(degenerate, image, factor)


def contrast(image, factor):
  """PIL Contrast: blends a flat image of the mean grey level with the image.

  Args:
    image: uint8 [H, W, 3].
    factor: float >= 0; 0 gives the flat grey image, 1 the identity.

  Returns:
    uint8 image.
  """
  mean = tf.reduce_mean(_as_float(_grayscale(image)))
  degenerate = tf.fill(tf.shape(image), tf.floor(mean + 0.5))
  return blend(degenerate, image, factor)


def contrast_reference(image, factor):
  """`contrast` as the reference computes it (autoaugment.py L198-210).

  The reference's "mean" is the grey histogram's sum / 256, that is the
  pixel count / 256, clipped to 255 and truncated: a 224 x 224 image blends
  towards 196 whatever its pixels, one of 65,280 pixels or more towards 255.

  Args:
    image: uint8 [H, W, 3].
    factor: float >= 0.

  Returns:
    uint8 image.
  """
  shape = tf.shape(image)
  level = tf.minimum(shape[0] * shape[1] // 256, 255)  # exact: float32 / 256
  return blend(tf.fill(shape, level), image, factor)


def brightness(image, factor):
  """PIL Brightness: blends black (factor 0) with the image (factor 1)."""
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """PIL Sharpness: blends a smoothed image (factor 0) with the image (1).

  The smoothed image applies [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 to the
  interior pixels as the exact integer quotient, truncated as in the
  reference (PIL rounds; `sharpness_reference` keeps the reference's float
  rounding), and keeps the one-pixel border.

  Args:
    image: uint8 [H, W, 3].
    factor: float >= 0.

  Returns:
    uint8 image.
  """
  if None not in image.shape[:2] and min(image.shape[:2]) >= 3:
    # Faster, same bytes: the float32 convolution sums exact integers (at
    # most 13 * 255), and their float quotient by 13 never rounds up to
    # the next integer (that takes a relative error of 1 / (13 * 255)), so
    # truncating it is the integer quotient.
    total = _smoothing_conv(image, _SMOOTH_WEIGHTS)
    smooth = tf.cast(total / 13.0, tf.uint8)
  else:
    x = tf.cast(image, tf.int32)
    rows = x[:-2] + x[1:-1] + x[2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    total = box + 4 * x[1:-1, 1:-1]  # kernel weights sum to 13
    smooth = tf.cast(total // 13, tf.uint8)  # trunc(total / 13), reference
  return blend(_with_border(smooth, image), image, factor)


_SMOOTH_WEIGHTS = ((1., 1., 1.), (1., 5., 1.), (1., 1., 1.))


def _smoothing_conv(image, weights):
  """The float32 VALID depthwise convolution of a uint8 [H, W, 3] image
  with one 3 x 3 kernel for every channel."""
  weights = tf.convert_to_tensor(weights, tf.float32)
  kernel = tf.tile(weights[:, :, tf.newaxis, tf.newaxis],
                   [1, 1, 3, 1])
  return tf.nn.depthwise_conv2d(_as_float(image)[tf.newaxis], kernel,
                                [1, 1, 1, 1], "VALID")[0]


def sharpness_reference(image, factor):
  """`sharpness` as the reference computes it (autoaugment.py L326-349).

  The smoothing is TensorFlow's float32 depthwise convolution with the
  weights / 13, truncated: where the 13-weight sum is a multiple of 13 the
  float sum can land just below it, one level lower (a flat area of 3s
  smooths to 2 on TensorFlow's CPU kernel).

  Args:
    image: uint8 [H, W, 3].
    factor: float >= 0.

  Returns:
    uint8 image.
  """
  smooth = _smoothing_conv(image, tf.constant(_SMOOTH_WEIGHTS) / 13.0)
  return blend(_with_border(_to_uint8(smooth), image), image, factor)


def _with_border(smooth, image):
  """The smoothed interior inside the image's one-pixel border."""
  middle = tf.concat([image[1:-1, :1], smooth, image[1:-1, -1:]], axis=1)
  return tf.concat([image[:1], middle, image[-1:]], axis=0)


def transform(image, matrix):
  """Projective transform with nearest sampling and fill 128 outside.

  Args:
    image: uint8 [H, W, 3].
    matrix: 8 floats [a0, a1, a2, b0, b1, b2, c0, c1] mapping an output point
      (x, y) to the input point ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) /
      k), k = c0 x + c1 y + 1 (x: column, y: row).

  Returns:
    uint8 image of the same shape.
  """
  matrix = tf.cast(tf.stack(matrix), tf.float32)[tf.newaxis]
  # Nearest sampling reads whole pixels at coordinates that do not depend
  # on the channel, so the three uint8 channels travel packed in one int32
  # (and the fill as the packed 128, 128, 128): the kernel computes each
  # pixel's coordinates once instead of per channel, for the same pixels.
  packed = _pack_rgb(image)
  fill = tf.cast(_pack_rgb(tf.fill([1, 1, 3], tf.constant(FILL_VALUE,
                                                          tf.uint8))),
                 tf.float32)[0, 0]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=packed[tf.newaxis, :, :, tf.newaxis], transforms=matrix,
      output_shape=tf.shape(image)[:2], fill_value=fill,
      interpolation="NEAREST", fill_mode="CONSTANT")[0, :, :, 0]
  out = tf.bitcast(out, tf.uint8)[:, :, :3]
  out.set_shape(image.shape)
  return out


def _pack_rgb(image):
  """uint8 [H, W, 3] as int32 [H, W], each pixel's bytes R, G, B, 0 (below
  2**24, so exact as the kernel's float fill value too)."""
  zeros = tf.zeros_like(image[:, :, :1])
  return tf.bitcast(tf.concat([image, zeros], axis=2), tf.int32)


def rotate(image, degrees):
  """Rotates about the image centre, counterclockwise for positive degrees.

  This is the convention of tfa.image.rotate (used by the reference) and of
  np.rot90: 90 degrees moves the top row to the left column.

  Args:
    image: uint8 [H, W, 3].
    degrees: float angle.

  Returns:
    uint8 image; uncovered pixels are 128.
  """
  radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(radians), tf.sin(radians)
  shape = tf.cast(tf.shape(image), tf.float32)
  h, w = shape[0] - 1.0, shape[1] - 1.0
  x_offset = (w - (cos * w - sin * h)) / 2.0
  y_offset = (h - (sin * w + cos * h)) / 2.0
  return transform(image, [cos, -sin, x_offset, sin, cos, y_offset, 0., 0.])


def shear_x(image, level):
  """PIL shear along x: output (x, y) samples input (x + level * y, y)."""
  return transform(image, [1., level, 0., 0., 1., 0., 0., 0.])


def shear_y(image, level):
  """PIL shear along y: output (x, y) samples input (x, y + level * x)."""
  return transform(image, [1., 0., 0., level, 1., 0., 0., 0.])


def translate_x(image, pixels):
  """PIL translate: output (x, y) = input (x + pixels, y), content moves left.

  Args:
    image: uint8 [H, W, 3].
    pixels: float offset; positive moves the content left.

  Returns:
    uint8 image; uncovered pixels are 128.
  """
  return _translate(image, pixels, 1, [1., 0., pixels, 0., 1., 0., 0., 0.])


def translate_y(image, pixels):
  """PIL translate: output (x, y) = input (x, y + pixels), content moves up."""
  return _translate(image, pixels, 0, [1., 0., 0., 0., 1., pixels, 0., 0.])


def _translate(image, pixels, axis, matrix):
  """`transform(image, matrix)` for a translation by `pixels` along `axis`.

  Same pixels, about 15 times faster on a 300 x 300 image in a graph (a
  slice and a pad instead of the projective kernel): the kernel samples
  output position i (along `axis`) at the source index
  round_half_away(fl32(i + pixels)), fill outside 0..n-1. Computed here
  with the same float32 steps, all exact, that index is almost always
  i + s for one shift s, and the output is the image shifted by s with
  fill. A rounding tie that splits the positions between two shifts (a
  float32 sum ending in .5 for some i only) takes the kernel.
  """
  n = tf.shape(image)[axis]
  size = tf.cast(n, tf.float32)
  # A shift of n or more is all fill either way (float32 rounding is
  # monotonic); clipping keeps every value below 2**24, so exact.
  offset = tf.clip_by_value(tf.cast(pixels, tf.float32), -size, size)
  position = tf.cast(tf.range(n), tf.float32)
  shift = _round_half_away(position + offset) - position
  s = tf.reduce_min(shift)  # +inf for an empty axis: the kernel's path

  def shifted():
    s_int = tf.cast(s, tf.int32)
    begin, end = tf.maximum(s_int, 0), n + tf.minimum(s_int, 0)
    kept = image[begin:end] if axis == 0 else image[:, begin:end]
    pads = [tf.maximum(-s_int, 0), tf.maximum(s_int, 0)]
    paddings = tf.stack([pads, [0, 0], [0, 0]] if axis == 0
                        else [[0, 0], pads, [0, 0]])
    return tf.pad(kept, paddings, constant_values=FILL_VALUE)

  out = tf.cond(tf.equal(s, tf.reduce_max(shift)), shifted,
                lambda: transform(image, matrix))
  out.set_shape(image.shape)
  return out


def _round_half_away(value):
  """float32 rounded half away from zero (C's round, as the kernel's
  std::round; tf.round rounds half to even), exact for every float32."""
  magnitude = tf.abs(value)
  whole = tf.floor(magnitude)
  up = tf.cast(magnitude - whole >= 0.5, tf.float32)
  return tf.sign(value) * (whole + up)


def cutout(image, pad_size, seed, replace=FILL_VALUE):
  """Fills a 2*pad_size square at a random centre with `replace`.

  The centre is uniform over the pixels (`cutout_at` draws the square).

  Args:
    image: [H, W, 3] (uint8 for RandAugment and AutoAugment).
    pad_size: int half side of the square.
    seed: shape [2] integer seed of the stateless sampler.
    replace: the fill, a scalar (128) or a tensor of the image's shape
      (the finetune pipeline's noise).

  Returns:
    The image with the square filled, in its dtype.
  """
  shape = tf.shape(image)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  cy = tf.random.stateless_uniform([], seeds[0], 0, shape[0], tf.int32)
  cx = tf.random.stateless_uniform([], seeds[1], 0, shape[1], tf.int32)
  return cutout_at(image, pad_size, cy, cx, replace)


def cutout_at(image, pad_size, cy, cx, replace=FILL_VALUE):
  """Fills rows cy - pad_size..cy + pad_size - 1 and the same columns about
  cx, clipped to the image, with `replace` (the reference's box,
  autoaugment.py L153-169).

  Args:
    image: [H, W, 3].
    pad_size: int half side of the square.
    cy: int centre row.
    cx: int centre column.
    replace: the fill, a scalar or a tensor of the image's shape.

  Returns:
    The image with the square filled, in its dtype.
  """
  # Assembled from slices (copies), not a full-size mask and select.
  shape = tf.shape(image)
  pad = tf.cast(pad_size, tf.int32)
  y0, y1 = _clipped_span(cy, pad, shape[0])
  x0, x1 = _clipped_span(cx, pad, shape[1])
  replace = tf.cast(replace, image.dtype)
  if replace.shape.rank == 0:
    patch = tf.fill([y1 - y0, x1 - x0, shape[2]], replace)
  else:
    patch = replace[y0:y1, x0:x1]
  band = image[y0:y1]
  band = tf.concat([band[:, :x0], patch, band[:, x1:]], axis=1)
  out = tf.concat([image[:y0], band, image[y1:]], axis=0)
  out.set_shape(image.shape)
  return out


def _clipped_span(centre, pad, length):
  """[start, end) of centre - pad..centre + pad - 1 clipped to 0..length
  (empty where pad <= 0 or the span misses the image)."""
  start = tf.clip_by_value(tf.cast(centre, tf.int32) - pad, 0, length)
  end = tf.clip_by_value(tf.cast(centre, tf.int32) + pad, 0, length)
  return start, tf.maximum(start, end)
