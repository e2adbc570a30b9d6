"""translate_x / translate_y give the projective kernel's bytes, faster.

The ops shift the image by a slice and a pad where the kernel's sampling
(round half away from zero of the float32 x + pixels) is one shift; the
expectation is `image_ops.transform` with the same translation matrix, the
kernel itself. Offsets include rounding ties, float32 sums that round onto
a tie for some columns only, and shifts past the image.
"""

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf.data import image_ops

SHAPES = [(7, 5), (32, 48), (300, 300), (13, 200), (1, 1)]


def _matrix(axis, pixels):
  """The translation matrix of translate_y (axis 0) or translate_x (1)."""
  return ([1., 0., 0., 0., 1., pixels, 0., 0.] if axis == 0
          else [1., 0., pixels, 0., 1., 0., 0., 0.])


def _offsets(size):
  """float32 offsets for an axis of `size` pixels."""
  f32 = np.float32
  fixed = [0., 0.5, 1.5, 2.5, 8.333 / 10 * 100, 116.66667, 150.,
           size, size + 3, 1000.]
  near_ties = [np.nextafter(f32(t), f32(d))
               for t in (0.5, 1.5, 2.5, 7.5, 99.5) for d in (0, 200)]
  rng = np.random.default_rng(size)
  random = rng.uniform(-400, 400, 100).astype(f32)
  values = np.concatenate([fixed, near_ties, random]).astype(f32)
  return np.concatenate([values, -values])


def _image(shape):
  rng = np.random.default_rng(sum(shape))
  return tf.constant(rng.integers(0, 256, shape + (3,), dtype=np.uint8))


def _op(axis):
  return image_ops.translate_y if axis == 0 else image_ops.translate_x


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", SHAPES)
def test_translate_equals_kernel_eagerly(shape, axis):
  image, op = _image(shape), _op(axis)
  for pixels in _offsets(shape[axis]):
    expected = image_ops.transform(image, _matrix(axis, pixels)).numpy()
    out = op(image, pixels)
    assert out.shape == image.shape
    np.testing.assert_array_equal(out.numpy(), expected, err_msg=str(pixels))


@pytest.mark.parametrize("axis", [0, 1])
def test_translate_equals_kernel_in_function_of_unknown_shape(axis):
  op = _op(axis)
  signature = [tf.TensorSpec([None, None, 3], tf.uint8),
               tf.TensorSpec([], tf.float32)]
  ours = tf.function(op, input_signature=signature)
  kernel = tf.function(lambda image, pixels: image_ops.transform(
      image, _matrix(axis, pixels)), input_signature=signature)
  assert ours.get_concrete_function().structured_outputs.shape.as_list() == [
      None, None, 3]
  for shape in SHAPES:
    image = _image(shape)
    for pixels in _offsets(shape[axis])[::3]:
      np.testing.assert_array_equal(ours(image, pixels), kernel(image, pixels),
                                    err_msg=f"{shape} {pixels}")


@pytest.mark.parametrize("axis", [0, 1])
def test_translate_keeps_static_shape_in_function(axis):
  traced = tf.function(lambda image: _op(axis)(image, tf.constant(2.5)))
  spec = tf.TensorSpec([20, 30, 3], tf.uint8)
  assert traced.get_concrete_function(spec).structured_outputs.shape == (
      20, 30, 3)


def _count_kernel_calls(monkeypatch):
  """Counts the ops' calls of the kernel (eager tf.cond runs one branch)."""
  calls = []
  kernel = image_ops.transform

  def counted(image, matrix):
    calls.append(matrix)
    return kernel(image, matrix)

  monkeypatch.setattr(image_ops, "transform", counted)
  return calls


@pytest.mark.parametrize("axis", [0, 1])
def test_split_tie_takes_the_kernel_and_matches(monkeypatch, axis):
  image = _image((9, 9))
  expected = {p: image_ops.transform(image, _matrix(axis, p)).numpy()
              for p in (-2.5, np.nextafter(np.float32(0.5), np.float32(0)))}
  calls = _count_kernel_calls(monkeypatch)
  # -2.5: positions 0..2 read -3, -2, -1 (i - 3, rounded away from zero),
  # position 3 reads round(0.5) = 1 = i - 2. Just below 0.5: position 0
  # reads 0, but 1 + p rounds in float32 to the tie 1.5, read 2 = i + 1.
  for pixels, want in expected.items():
    np.testing.assert_array_equal(_op(axis)(image, pixels), want)
  assert len(calls) == 2


@pytest.mark.parametrize("axis", [0, 1])
def test_one_shift_takes_the_slice(monkeypatch, axis):
  image = _image((9, 9))
  calls = _count_kernel_calls(monkeypatch)
  for pixels in (0.0, 2.5, 3.4, -3.6, 9.0, -1000.0):
    out = _op(axis)(image, pixels).numpy()
    s = int(np.floor(abs(pixels) + 0.5) * np.sign(pixels))  # C round
    shifted = np.full_like(out, 128)
    src = np.arange(9) + s
    ok = (src >= 0) & (src < 9)
    if axis == 0:
      shifted[ok] = image.numpy()[src[ok]]
    else:
      shifted[:, ok] = image.numpy()[:, src[ok]]
    np.testing.assert_array_equal(out, shifted, err_msg=str(pixels))
  assert not calls


def test_non_finite_offset_matches_kernel():
  image = _image((6, 8))
  for axis in (0, 1):
    for pixels in (np.inf, -np.inf, np.nan):
      np.testing.assert_array_equal(
          _op(axis)(image, pixels),
          image_ops.transform(image, _matrix(axis, pixels)))
