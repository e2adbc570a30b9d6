"""RandAugment and AutoAugment (policy v0) on uint8 images.

RandAugment (Cubuk et al. 2020, "RandAugment: Practical automated data
augmentation with a reduced search space") applies `num_layers` ops, each
drawn uniformly from 16 and always applied at a shared magnitude m. The
AutoAugment ImageNet policy v0 (Cubuk et al. 2019, "AutoAugment: Learning
Augmentation Strategies from Data") draws one of 25 sub-policies and applies
each of its two steps with its own probability and magnitude.

As in the reference EfficientNetV2 `autoaugment.py` (google/automl), a
magnitude maps to level = m / 10 (not clamped, so m = 15..25 gives levels
1.5..2.5) and `level_to_arg` maps the level to the op's argument (L504-524),
also where it leaves the op's range (posterize 10 bits and solarize
threshold 640 at m = 25). Rotate, shear and translate get a random sign.
Empty pixels are filled with 128.

Two arithmetics (`ARITHMETICS`; the run's `data.augment_arithmetic`, by
default its progressive preset's):
  reference: the reference's ops, quirks included, since the published
             models were trained with them: posterize and solarize take
             their argument wrapped to uint8 (solarize at m = 10 and 20
             inverts the whole image, at m = 15 thresholds at 128; 0 and 9+
             bits keep the top bit), contrast blends towards the pixel count
             / 256, and autocontrast and sharpness keep the reference's
             float32 rounding.
  paper:     those five as PIL defines them (`image_ops` without the
             `_reference` suffix): arguments clipped to the op's range
             (solarize threshold 256 and above: identity; 0 bits: black,
             9+ bits: identity), contrast towards the mean grey level,
             exact rounding.
The other eleven ops compute the same in both.

Every random choice is stateless: functions take a shape [2] integer `seed`
and derive sub-seeds with `stateless_split`, so the same seed gives the same
image eagerly and inside `tf.data.Dataset.map`. The op (or sub-policy) is
selected with `tf.switch_case`, so only the chosen branch runs.
"""

import dataclasses
from typing import Callable, Optional

import tensorflow as tf

from effnetv2_tf.data import image_ops

MAX_LEVEL = 10.0
REFERENCE, PAPER = "reference", "paper"
ARITHMETICS = (REFERENCE, PAPER)
# What a caller of this module gets without choosing; runs choose through
# `data.augment_arithmetic`, which follows the progressive preset.
DEFAULT_ARITHMETIC = PAPER


def _int(value):
  return tf.cast(value, tf.int32)  # truncates like Python int()


def _float32(value):
  return tf.cast(value, tf.float32)


def _enhance_factor(level, *_):
  return (_float32(tf.maximum(level * 1.8 + 0.1, 0.0)),)


@dataclasses.dataclass(frozen=True)
class Op:
  """One augmentation op: its image function and its argument rule.

  Attributes:
    fn: `image_ops` function (image, *args) -> image.
    args: (level, translate_const, cutout_const) -> tuple of arguments,
      the reference `level_to_arg` rule.
    signed: the (first) argument gets a random sign.
    seeded: `fn` takes a shape [2] seed after the arguments.
    reference_fn: the function under the `reference` arithmetic where it
      computes otherwise than `fn`.
  """
  fn: Callable
  args: Callable = lambda *_: ()
  signed: bool = False
  seeded: bool = False
  reference_fn: Optional[Callable] = None

  def function(self, arithmetic):
    """The image function under `arithmetic` (one of ARITHMETICS)."""
    if arithmetic == REFERENCE and self.reference_fn is not None:
      return self.reference_fn
    return self.fn


# Every op, in RandAugment's draw order (the reference's op list). Adding
# an op is one entry here (and its function in image_ops).
OPS = {
    "AutoContrast": Op(image_ops.autocontrast,
                       reference_fn=image_ops.autocontrast_reference),
    "Equalize": Op(image_ops.equalize),
    "Invert": Op(image_ops.invert),
    "Rotate": Op(image_ops.rotate,
                 lambda level, *_: (_float32(level * 30.0),), signed=True),
    "Posterize": Op(image_ops.posterize,
                    lambda level, *_: (_int(level * 4.0),),
                    reference_fn=image_ops.posterize_reference),
    "Solarize": Op(image_ops.solarize,
                   lambda level, *_: (_int(level * 256.0),),
                   reference_fn=image_ops.solarize_reference),
    "Color": Op(image_ops.color, _enhance_factor),
    "Contrast": Op(image_ops.contrast, _enhance_factor,
                   reference_fn=image_ops.contrast_reference),
    "Brightness": Op(image_ops.brightness, _enhance_factor),
    "Sharpness": Op(image_ops.sharpness, _enhance_factor,
                    reference_fn=image_ops.sharpness_reference),
    "ShearX": Op(image_ops.shear_x, lambda level, *_: (
        _float32(level * 0.3),), signed=True),
    "ShearY": Op(image_ops.shear_y, lambda level, *_: (
        _float32(level * 0.3),), signed=True),
    "TranslateX": Op(image_ops.translate_x, lambda level, translate, _: (
        _float32(level * translate),), signed=True),
    "TranslateY": Op(image_ops.translate_y, lambda level, translate, _: (
        _float32(level * translate),), signed=True),
    "Cutout": Op(image_ops.cutout, lambda level, _, cutout: (
        tf.maximum(_int(level * cutout), 0),), seeded=True),
    "SolarizeAdd": Op(image_ops.solarize_add, lambda level, *_: (
        _int(level * 110.0),)),
}
RANDAUGMENT_OPS = tuple(OPS)
SIGNED_OPS = tuple(name for name, op in OPS.items() if op.signed)
# The ops whose two arithmetics differ.
ARITHMETIC_OPS = tuple(name for name, op in OPS.items() if op.reference_fn)

# AutoAugment ImageNet policy v0: sub-policies of two (op, prob, magnitude)
# steps, applied in order (same table as shared/reference/autoaugment_v0.csv).
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

RANDAUGMENT_CONSTS = {"translate_const": 100, "cutout_const": 40}
AUTOAUGMENT_CONSTS = {"translate_const": 250, "cutout_const": 100}
AUGNAMES = ("randaug", "autoaug")


def _float64(value):
  """Python numbers go straight to float64 (no float32 rounding on the way)."""
  return tf.cast(tf.convert_to_tensor(value, dtype_hint=tf.float64),
                 tf.float64)


def magnitude_to_level(magnitude):
  """m / 10 as a float64 scalar tensor (Python arithmetic precision)."""
  return _float64(magnitude) / MAX_LEVEL


def level_to_arg(name, level, translate_const=100, cutout_const=40):
  """The op's arguments for a level, before the random sign.

  Args:
    name: one of RANDAUGMENT_OPS.
    level: magnitude / 10 (Python number or scalar tensor).
    translate_const: pixels of TranslateX/Y at level 1.
    cutout_const: Cutout half side at level 1.

  Returns:
    A tuple of scalar tensors (empty for AutoContrast, Equalize, Invert).
  """
  if name not in OPS:
    raise ValueError(f"Unknown augmentation op {name!r}; expected one of "
                     f"{', '.join(RANDAUGMENT_OPS)}.")
  return OPS[name].args(_float64(level), translate_const, cutout_const)


def check_arithmetic(arithmetic):
  """Raises ValueError naming ARITHMETICS unless `arithmetic` is one."""
  if arithmetic not in ARITHMETICS:
    raise ValueError(f"Unknown augment arithmetic {arithmetic!r}; expected "
                     f"one of {', '.join(ARITHMETICS)}.")


def apply_op(image, name, level, seed, translate_const=100, cutout_const=40,
             arithmetic=DEFAULT_ARITHMETIC):
  """Applies one named op at a level; seed drives the sign and cutout.

  Args:
    image: uint8 [H, W, 3].
    name: one of RANDAUGMENT_OPS.
    level: magnitude / 10.
    seed: shape [2] integer seed.
    translate_const: pixels of TranslateX/Y at level 1.
    cutout_const: Cutout half side at level 1.
    arithmetic: one of ARITHMETICS.

  Returns:
    uint8 image of the same shape.
  """
  check_arithmetic(arithmetic)
  args = level_to_arg(name, level, translate_const, cutout_const)
  op = OPS[name]
  sign_seed, op_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  if op.signed:
    negate = tf.random.stateless_uniform([], sign_seed) < 0.5
    args = (tf.where(negate, -args[0], args[0]),)
  if op.seeded:
    args += (op_seed,)
  out = op.function(arithmetic)(image, *args)
  out.set_shape(image.shape)
  return out


@tf.autograph.experimental.do_not_convert
def randaugment(image, num_layers, magnitude, seed, translate_const=100,
                cutout_const=40, arithmetic=DEFAULT_ARITHMETIC):
  """RandAugment: num_layers uniformly drawn ops, each always applied.

  Args:
    image: uint8 [H, W, 3].
    num_layers: Python int N, ops applied in sequence.
    magnitude: M shared by all ops (Python number or scalar tensor).
    seed: shape [2] integer seed.
    translate_const, cutout_const, arithmetic: as `apply_op`'s.

  Returns:
    uint8 image of the same shape.
  """
  check_arithmetic(arithmetic)
  image = tf.convert_to_tensor(image)
  shape = image.shape
  level = magnitude_to_level(magnitude)
  seeds = tf.random.experimental.stateless_split(seed, max(num_layers, 1))
  for layer in range(num_layers):
    pick_seed, op_seed = tf.unstack(
        tf.random.experimental.stateless_split(seeds[layer], 2))
    index = tf.random.stateless_uniform(
        [], pick_seed, 0, len(RANDAUGMENT_OPS), tf.int32)
    branches = [
        lambda name=name: apply_op(image, name, level, op_seed,
                                   translate_const, cutout_const, arithmetic)
        for name in RANDAUGMENT_OPS]
    with tf.name_scope(f"randaug_layer_{layer}"):
      image = tf.switch_case(index, branches)
    image.set_shape(shape)
  return image


def _apply_step(image, step, seed, arithmetic):
  """One AutoAugment step (op, prob, magnitude), applied with prob."""
  name, prob, magnitude = step
  apply_seed, op_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))

  def apply():
    return apply_op(image, name, magnitude_to_level(magnitude), op_seed,
                    **AUTOAUGMENT_CONSTS, arithmetic=arithmetic)

  if prob <= 0.0:
    return image
  if prob >= 1.0:
    return apply()
  coin = tf.random.stateless_uniform([], apply_seed)
  return tf.cond(coin < prob, apply, lambda: image)


@tf.autograph.experimental.do_not_convert
def autoaugment(image, seed, policy=POLICY_V0, arithmetic=DEFAULT_ARITHMETIC):
  """AutoAugment: one uniformly drawn sub-policy, steps applied with prob.

  Args:
    image: uint8 [H, W, 3].
    seed: shape [2] integer seed.
    policy: tuple of sub-policies, each a tuple of (op, prob, magnitude).
    arithmetic: one of ARITHMETICS.

  Returns:
    uint8 image of the same shape.
  """
  check_arithmetic(arithmetic)
  image = tf.convert_to_tensor(image)
  pick_seed, steps_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  index = tf.random.stateless_uniform([], pick_seed, 0, len(policy), tf.int32)

  def branch(sub_policy):
    out = image
    step_seeds = tf.random.experimental.stateless_split(
        steps_seed, len(sub_policy))
    for i, step in enumerate(sub_policy):
      out = _apply_step(out, step, step_seeds[i], arithmetic)
    return out

  branches = [lambda sp=sp: branch(sp) for sp in policy]
  out = tf.switch_case(index, branches)
  out.set_shape(image.shape)
  return out


@tf.autograph.experimental.do_not_convert
def distort_image(image, augname, magnitude, seed, num_layers=2,
                  arithmetic=DEFAULT_ARITHMETIC):
  """Applies the named augmentation ('randaug', 'autoaug', None/'' = none).

  Args:
    image: uint8 [H, W, 3].
    augname: 'randaug', 'autoaug', or None / '' for the identity.
    magnitude: RandAugment magnitude (unused by AutoAugment).
    seed: shape [2] integer seed.
    num_layers: RandAugment layers.
    arithmetic: one of ARITHMETICS, the ops' arithmetic.

  Returns:
    uint8 image of the same shape.

  Raises:
    ValueError: unknown augname or arithmetic.
  """
  check_arithmetic(arithmetic)
  if not augname:
    return tf.convert_to_tensor(image)
  if augname == "randaug":
    return randaugment(image, num_layers, magnitude, seed,
                       **RANDAUGMENT_CONSTS, arithmetic=arithmetic)
  if augname == "autoaug":
    return autoaugment(image, seed, arithmetic=arithmetic)
  raise ValueError(f"Unknown augname {augname!r}; expected one of "
                   f"{', '.join(AUGNAMES)} or None/'' for no augmentation.")
