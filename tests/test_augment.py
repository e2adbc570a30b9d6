"""Tests of the image ops, RandAugment and AutoAugment (data/augment.py)."""

import csv
import os

import numpy as np
from PIL import Image, ImageOps
import pytest
import tensorflow as tf

from effnetv2_tf.data import augment
from effnetv2_tf.data import image_ops

from conftest import SAMPLES
from conftest import SHARED

POLICY_CSV = SHARED / "reference" / "autoaugment_v0.csv"
H, W = 24, 40  # non-square, to catch height/width swaps


def _noise(h=H, w=W, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (h, w, 3), np.uint8)


@pytest.fixture(scope="module")
def photo():
  path = os.path.join(SAMPLES, "n01440764_tench.JPEG")
  if not os.path.exists(path):
    pytest.skip("sample photo missing")
  return np.asarray(Image.open(path).convert("RGB").resize((W, H)))


def _seed(a, b=0):
  return tf.constant([a, b], tf.int64)


@pytest.mark.parametrize("arithmetic", augment.ARITHMETICS)
@pytest.mark.parametrize("name", augment.RANDAUGMENT_OPS)
def test_op_eager_graph_dataset(name, arithmetic):
  image = _noise()
  apply = lambda x, s: augment.apply_op(x, name, 1.5, s,
                                        arithmetic=arithmetic)
  eager = apply(image, _seed(3)).numpy()
  assert eager.shape == (H, W, 3) and eager.dtype == np.uint8
  dynamic = tf.function(
      apply, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                              tf.TensorSpec([2], tf.int64)])
  np.testing.assert_array_equal(dynamic(image, _seed(3)).numpy(), eager)
  ds = tf.data.Dataset.from_tensors(image).map(lambda x: apply(x, _seed(3)))
  assert ds.element_spec.shape == (H, W, 3)
  np.testing.assert_array_equal(next(iter(ds)).numpy(), eager)


def test_rotate_direction_and_center():
  image = _noise(32, 32)
  # Positive degrees rotate counterclockwise, like np.rot90 and PIL.
  np.testing.assert_array_equal(image_ops.rotate(image, 90.0), np.rot90(image))
  np.testing.assert_array_equal(
      image_ops.rotate(image, -90.0), np.rot90(image, -1))


def test_rotate_matches_pil(photo):
  ours = image_ops.rotate(photo, 30.0).numpy()
  pil = np.asarray(Image.fromarray(photo).rotate(30, fillcolor=(128,) * 3))
  assert np.mean(ours != pil) < 0.01


@pytest.mark.parametrize("op", [image_ops.rotate, image_ops.shear_x,
                                image_ops.shear_y, image_ops.translate_x,
                                image_ops.translate_y])
def test_geometric_zero_is_identity(op):
  image = _noise()
  np.testing.assert_array_equal(op(image, 0.0), image)


def test_translate_shifts_with_fill():
  image, k = _noise(), 5
  out = image_ops.translate_x(image, float(k)).numpy()  # content moves left
  np.testing.assert_array_equal(out[:, :-k], image[:, k:])
  assert np.all(out[:, -k:] == 128)
  out = image_ops.translate_x(image, float(-k)).numpy()
  np.testing.assert_array_equal(out[:, k:], image[:, :-k])
  assert np.all(out[:, :k] == 128)
  out = image_ops.translate_y(image, float(k)).numpy()  # content moves up
  np.testing.assert_array_equal(out[:-k], image[k:])
  assert np.all(out[-k:] == 128)


def test_shear_x_definition():
  image, level = _noise(), 0.2  # level * y never ends in .5
  src = np.floor(np.arange(W)[None, :] + level * np.arange(H)[:, None] + 0.5)
  src = src.astype(int)
  valid = (src >= 0) & (src < W)
  rows = np.repeat(np.arange(H)[:, None], W, 1)
  expected = np.where(valid[..., None], image[rows, np.clip(src, 0, W - 1)],
                      128)
  np.testing.assert_array_equal(image_ops.shear_x(image, level), expected)
  sheared_y = image_ops.shear_y(image.transpose(1, 0, 2), level).numpy()
  np.testing.assert_array_equal(sheared_y.transpose(1, 0, 2), expected)


def test_pixel_ops():
  image = _noise()
  np.testing.assert_array_equal(
      image_ops.invert(image_ops.invert(image)), image)
  np.testing.assert_array_equal(image_ops.posterize(image, 8), image)
  np.testing.assert_array_equal(image_ops.posterize(image, 4), image & 0xF0)
  np.testing.assert_array_equal(image_ops.posterize(image, 0), 0 * image)
  np.testing.assert_array_equal(image_ops.solarize(image, 256), image)
  np.testing.assert_array_equal(image_ops.solarize(image, 0), 255 - image)
  np.testing.assert_array_equal(
      image_ops.solarize(image, 100), np.where(image < 100, image, 255 - image))
  added = np.clip(image.astype(int) + 110, 0, 255)
  np.testing.assert_array_equal(image_ops.solarize_add(image, 110),
                                np.where(image < 128, added, image))


@pytest.mark.parametrize("op", [image_ops.color, image_ops.contrast,
                                image_ops.brightness, image_ops.sharpness])
def test_enhance_factor_one_is_identity(op, photo):
  np.testing.assert_array_equal(op(photo, 1.0), photo)


def test_enhance_degenerates(photo):
  np.testing.assert_array_equal(image_ops.brightness(photo, 0.0), 0 * photo)
  grey = image_ops.color(photo, 0.0).numpy()
  assert np.all(grey[..., 0] == grey[..., 1]) and np.all(
      grey[..., 1] == grey[..., 2])
  flat = image_ops.contrast(photo, 0.0).numpy()
  assert np.all(flat == flat[0, 0, 0])
  assert abs(int(flat[0, 0, 0]) - np.asarray(
      Image.fromarray(photo).convert("L")).mean()) <= 1
  smooth = image_ops.sharpness(photo, 0.0).numpy()
  np.testing.assert_array_equal(smooth[0], photo[0])  # border kept
  kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13.0
  patch = photo[4:7, 10:13, 1].astype(float)
  assert abs(int(smooth[5, 11, 1]) - np.sum(patch * kernel)) <= 0.5


def test_autocontrast(photo):
  out = image_ops.autocontrast(photo).numpy()
  assert np.all(out.min(axis=(0, 1)) == 0)
  assert np.all(out.max(axis=(0, 1)) == 255)
  flat = np.full((H, W, 3), 77, np.uint8)
  np.testing.assert_array_equal(image_ops.autocontrast(flat), flat)


def test_equalize_ramp_and_pil(photo):
  ramp = np.broadcast_to((np.arange(W) * 6)[None, :, None], (H, W, 3))
  ramp = ramp.astype(np.uint8)
  # 40 values x 24 pixels: step = (960 - 24) // 255 = 3, and value 6c maps
  # to (24 c + 3 // 2) // 3 = 8 c, clipped to 255.
  expected = np.minimum(np.arange(W) * 8, 255)[None, :, None]
  expected = np.broadcast_to(expected, (H, W, 3))
  np.testing.assert_array_equal(image_ops.equalize(ramp), expected)
  np.testing.assert_array_equal(
      image_ops.equalize(photo), ImageOps.equalize(Image.fromarray(photo)))


def test_cutout_square():
  image = np.zeros((32, 32, 3), np.uint8)
  full = 0
  for i in range(12):
    mask = np.all(image_ops.cutout(image, 4, _seed(i)).numpy() == 128, -1)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert mask.sum() == len(rows) * len(cols)  # a filled rectangle
    for idx in (rows, cols):
      assert len(idx) <= 8 and (len(idx) == 8 or 0 in idx or 31 in idx)
    full += len(rows) == len(cols) == 8
  assert full > 0
  np.testing.assert_array_equal(image_ops.cutout(image, 0, _seed(1)), image)


def _arg(name, level, **kwargs):
  return [a.numpy() for a in augment.level_to_arg(name, level, **kwargs)]


def test_level_to_arg():
  level = augment.magnitude_to_level(15).numpy()
  assert level == 1.5
  assert _arg("Rotate", level) == [45.0]
  np.testing.assert_allclose(_arg("Color", level), [2.8], rtol=1e-6)
  assert _arg("Posterize", level) == [6]
  # Not clipped (autoaugment.py L510-511): the ops take what is out of range.
  assert _arg("Posterize", 2.5) == [10]
  assert _arg("Solarize", level) == [384]
  assert _arg("Solarize", 0.5) == [128]
  assert _arg("SolarizeAdd", 0.7) == [77]  # Python: int(0.7 * 110) == 77
  assert _arg("SolarizeAdd", augment.magnitude_to_level(7)) == [77]
  np.testing.assert_allclose(_arg("ShearY", 1.0), [0.3], rtol=1e-6)
  assert _arg("TranslateX", 1.5) == [150.0]
  assert _arg("TranslateY", 0.9, translate_const=250) == [225.0]
  assert _arg("Cutout", 1.0) == [40]
  assert _arg("Cutout", 1.0, cutout_const=100) == [100]
  assert _arg("Equalize", 1.0) == []
  with pytest.raises(ValueError, match="Rotate"):
    augment.level_to_arg("Blur", 1.0)


def test_random_sign():
  image = _noise(32, 32)
  plus = image_ops.rotate(image, 45.0).numpy()
  minus = image_ops.rotate(image, -45.0).numpy()
  signs = set()
  for i in range(10):
    out = augment.apply_op(image, "Rotate", 1.5, _seed(i)).numpy()
    signs.add(1 if np.array_equal(out, plus) else -1)
    assert np.array_equal(out, plus) or np.array_equal(out, minus)
  assert signs == {1, -1}


@pytest.mark.parametrize("augname", ["randaug", "autoaug"])
def test_distort_deterministic_and_seeded(augname, photo):
  run = lambda s: augment.distort_image(photo, augname, 15, _seed(s)).numpy()
  outputs = [run(s) for s in range(8)]
  np.testing.assert_array_equal(run(5), outputs[5])
  distinct = {o.tobytes() for o in outputs}
  assert len(distinct) >= 5


@pytest.mark.parametrize("augname", ["randaug", "autoaug"])
def test_distort_in_dataset_map(augname, photo):
  images = np.stack([photo, _noise(), photo[::-1]])
  ds = tf.data.Dataset.from_tensor_slices(images).enumerate().map(
      lambda i, x: augment.distort_image(x, augname, 15, tf.stack([i, 7])),
      num_parallel_calls=2, deterministic=True)
  assert ds.element_spec.shape == (H, W, 3)
  for i, out in enumerate(ds):
    eager = augment.distort_image(images[i], augname, 15, _seed(i, 7))
    np.testing.assert_array_equal(out.numpy(), eager.numpy())


def test_randaugment_graph_uses_switch_case():
  fn = tf.function(lambda x, s: augment.randaugment(x, 2, 9, s))
  graph = fn.get_concrete_function(
      tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int64))
  ops = {op.type for op in graph.graph.get_operations()}
  assert ops & {"Case", "StatelessCase"}
  out = graph(tf.constant(_noise()), _seed(1))
  assert out.shape == (H, W, 3) and out.dtype == tf.uint8


def test_magnitude_tensor_and_num_layers(photo):
  seed = _seed(4)
  np.testing.assert_array_equal(
      augment.randaugment(photo, 2, tf.constant(15.0), seed),
      augment.randaugment(photo, 2, 15, seed))
  np.testing.assert_array_equal(augment.randaugment(photo, 0, 15, seed), photo)


def test_autoaugment_probabilities():
  image = _noise()
  always = ((("Invert", 1.0, 0), ("Posterize", 0.0, 0)),)
  np.testing.assert_array_equal(
      augment.autoaugment(image, _seed(0), always), 255 - image)
  coin = ((("Invert", 0.5, 0),),)
  inverted = sum(np.array_equal(augment.autoaugment(image, _seed(i), coin),
                                255 - image) for i in range(40))
  assert 8 <= inverted <= 32


def test_distort_identity_and_errors(photo):
  for augname in (None, ""):
    np.testing.assert_array_equal(
        augment.distort_image(photo, augname, 15, _seed(0)), photo)
  with pytest.raises(ValueError, match="randaug.*autoaug"):
    augment.distort_image(photo, "mixup", 15, _seed(0))


def test_policy_v0_matches_csv():
  with open(POLICY_CSV) as f:
    rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
  table = tuple(
      ((r["op1"], float(r["prob1"]), int(r["mag1"])),
       (r["op2"], float(r["prob2"]), int(r["mag2"]))) for r in rows)
  assert [int(r["sub_policy"]) for r in rows] == list(range(len(rows)))
  assert augment.POLICY_V0 == table
  assert {step[0] for sp in table for step in sp} <= set(
      augment.RANDAUGMENT_OPS)


def test_level_to_arg_matches_python_for_all_magnitudes():
  for m in range(31):
    level = augment.magnitude_to_level(m)
    py = m / 10
    assert _arg("Posterize", level) == [int(py * 4)]
    assert _arg("Solarize", level) == [int(py * 256)]
    assert _arg("SolarizeAdd", level) == [int(py * 110)]
    assert _arg("Cutout", level, cutout_const=100) == [int(py * 100)]
    np.testing.assert_allclose(_arg("Rotate", level), [py * 30], rtol=1e-6)


# ---------------------------------------------- reference vs paper arithmetic
# Expected values are worked out from the reference's formulas in
# efficientnetv2/autoaugment.py (google/automl 6a54c87), lines cited.
REF, PAPER = "reference", "paper"
PIXELS = np.array([0, 100, 127, 128, 200, 255], np.uint8)


def _pixels():
  """Each PIXELS value in all three channels, as a 2 x 3 image."""
  return np.repeat(PIXELS.reshape(2, 3, 1), 3, axis=2)


def _op(name, magnitude, arithmetic, image=None, seed=0):
  image = _pixels() if image is None else image
  return augment.apply_op(image, name, augment.magnitude_to_level(magnitude),
                          _seed(seed), arithmetic=arithmetic).numpy()


def _expect(out, values):
  np.testing.assert_array_equal(out[..., 0].reshape(-1), values)


def test_the_five_ops_that_differ():
  assert set(augment.ARITHMETIC_OPS) == {
      "AutoContrast", "Posterize", "Solarize", "Contrast", "Sharpness"}


ALL_INVERTED = [255, 155, 128, 127, 55, 0]
FROM_128_INVERTED = [0, 100, 127, 127, 55, 0]


@pytest.mark.parametrize("magnitude, reference, paper", [
    # L511: threshold int(m / 10 * 256); L177 compares the uint8 image with
    # it converted to uint8, mod 256: 256 and 512 are 0 (every pixel is
    # inverted), 384 is 128. Paper: 256 and above invert nothing.
    (5, FROM_128_INVERTED, FROM_128_INVERTED),  # 128
    (10, ALL_INVERTED, list(PIXELS)),           # 256 -> 0
    (15, FROM_128_INVERTED, list(PIXELS)),      # 384 -> 128
    (20, ALL_INVERTED, list(PIXELS)),           # 512 -> 0
])
def test_solarize_threshold_wraps_to_uint8_under_reference(magnitude,
                                                           reference, paper):
  _expect(_op("Solarize", magnitude, REF), reference)
  _expect(_op("Solarize", magnitude, PAPER), paper)


@pytest.mark.parametrize("magnitude, reference, paper", [
    # L510: bits int(m / 10 * 4); L221-222 shift by 8 - bits as uint8,
    # which TensorFlow's CPU shift kernels clamp to 0..7.
    (2, [0, 0, 0, 128, 128, 128], [0] * 6),       # 0 bits: shift 8 -> 7
    (6, [0, 64, 64, 128, 192, 192], [0, 64, 64, 128, 192, 192]),  # 2 bits
    (20, list(PIXELS), list(PIXELS)),              # 8 bits: shift 0
    (23, [0, 0, 0, 128, 128, 128], list(PIXELS)),  # 9 bits: -1 -> 255 -> 7
    (25, [0, 0, 0, 128, 128, 128], list(PIXELS)),  # 10 bits: -2 -> 254 -> 7
])
def test_posterize_out_of_range_bits(magnitude, reference, paper):
  _expect(_op("Posterize", magnitude, REF), reference)
  _expect(_op("Posterize", magnitude, PAPER), paper)


@pytest.mark.parametrize("h, w, expected", [
    # m = 0: factor 0.1 (L487). L205-209: the degenerate is sum(histogram)
    # / 256 = H * W / 256 clipped to 255 and truncated; L109-114 blend:
    # trunc(d + 0.1 * (100 - d)) in float32.
    (16, 32, 11),    # d = 512 / 256 = 2: 2 + 9.8 = 11.8
    (240, 300, 239),  # d = 281.25 -> 255: 255 - 15.5 = 239.5
])
def test_contrast_blends_to_pixel_count_under_reference(h, w, expected):
  grey = np.full((h, w, 3), 100, np.uint8)
  np.testing.assert_array_equal(_op("Contrast", 0, REF, grey), expected)
  # Paper: the degenerate is the mean grey level, 100: nothing changes.
  np.testing.assert_array_equal(_op("Contrast", 0, PAPER, grey), grey)


def test_autocontrast_float_rounding_under_reference():
  image = np.zeros((2, 4, 3), np.uint8)
  image[..., 0] = np.arange(8).reshape(2, 4)  # channel 0 spans 0..7
  image[..., 1] = 40
  image[..., 2] = np.arange(8).reshape(2, 4) * 30 + 10  # 10..220
  # L305-309: scale = float32(255 / 7) = 36.42857, offset = -0 * scale,
  # trunc(x * scale + offset): 7 * 36.42857 = 254.99998 -> 254.
  ref = _op("AutoContrast", 0, REF, image)
  _expect(ref, [0, 36, 72, 109, 145, 182, 218, 254])
  # Paper: exact (x - lo) * 255 // span, so the top of the range is 255.
  _expect(_op("AutoContrast", 0, PAPER, image),
          [0, 36, 72, 109, 145, 182, 218, 255])
  np.testing.assert_array_equal(ref[..., 1], image[..., 1])  # L311: flat


@pytest.mark.parametrize("magnitude, interior", [(0, 2), (15, 4)])
def test_sharpness_flat_threes_under_reference(magnitude, interior):
  # L330-339: the float32 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
  # over 3s sums to 2.9999998 on TensorFlow's CPU kernel and truncates to
  # 2 (the exact 39 / 13 is 3). L349 blend with factor m / 10 * 1.8 + 0.1:
  # m = 0: 2 + 0.1 * (3 - 2) = 2.1 -> 2; m = 15: 2 + 2.8 * 1 = 4.8 -> 4.
  threes = np.full((5, 6, 3), 3, np.uint8)
  out = _op("Sharpness", magnitude, REF, threes)
  np.testing.assert_array_equal(out[1:-1, 1:-1], interior)
  border = np.ones((5, 6), bool)
  border[1:-1, 1:-1] = False
  np.testing.assert_array_equal(out[border], 3)  # L343-346: border kept
  np.testing.assert_array_equal(_op("Sharpness", magnitude, PAPER, threes),
                                threes)


def test_sharpness_reference_rounding_only_at_multiples_of_13(photo):
  # The float sum can only land below an integer that the exact 13-weight
  # sum / 13 is: one lower, at interior pixels whose sum is 13 k.
  ref = image_ops.sharpness_reference(photo, 0.0).numpy().astype(int)
  paper = image_ops.sharpness(photo, 0.0).numpy().astype(int)
  x = photo.astype(int)
  total = sum(x[i:i + H - 2, j:j + W - 2] for i in range(3)
              for j in range(3)) + 4 * x[1:-1, 1:-1]
  multiple = np.zeros(photo.shape, bool)
  multiple[1:-1, 1:-1] = total % 13 == 0
  assert set(np.unique(paper - ref)) <= {0, 1}
  assert np.all(ref[~multiple] == paper[~multiple])


def _reference_cutout(image, pad, cy, cx):
  """L153-169: the box between the clipped pads, filled with 128."""
  h, w = image.shape[:2]
  lower, upper = max(0, cy - pad), max(0, h - cy - pad)
  left, right = max(0, cx - pad), max(0, w - cx - pad)
  out = image.copy()
  out[lower:h - upper, left:w - right] = 128
  return out


def test_cutout_is_the_reference_box_at_its_centre():
  image = _noise()
  for cy, cx, pad in [(0, 0, 4), (23, 39, 4), (10, 20, 40), (5, 3, 0),
                      (12, 38, 6)]:
    np.testing.assert_array_equal(
        image_ops.cutout_at(image, pad, cy, cx),
        _reference_cutout(image, pad, cy, cx))
  # The random op: some centre gives the reference's box (pad int(1.5 * 40)
  # = 60 at m = 15 covers the image; m = 2: int(0.2 * 40) = 8).
  for seed in range(4):
    out = _op("Cutout", 2, REF, image, seed)
    assert any(np.array_equal(out, _reference_cutout(image, 8, cy, cx))
               for cy in range(H) for cx in range(W))


def test_arithmetic_reaches_autoaugment_and_randaugment(photo):
  solarize = ((("Solarize", 1.0, 10),),)  # threshold 256 (AutoAugment v0)
  np.testing.assert_array_equal(
      augment.autoaugment(photo, _seed(0), solarize, arithmetic=REF),
      255 - photo)
  np.testing.assert_array_equal(
      augment.autoaugment(photo, _seed(0), solarize, arithmetic=PAPER), photo)
  same = [np.array_equal(*(augment.distort_image(
      photo, "randaug", 10, _seed(s), arithmetic=a) for a in (REF, PAPER)))
          for s in range(16)]
  assert any(same) and not all(same)  # geometric ops agree, Solarize not


def test_unknown_arithmetic_is_an_error(photo):
  with pytest.raises(ValueError, match="'pil'.*reference, paper"):
    augment.distort_image(photo, "randaug", 10, _seed(0), arithmetic="pil")
  with pytest.raises(ValueError, match="reference, paper"):
    augment.apply_op(photo, "Invert", 1.0, _seed(0), arithmetic="")
