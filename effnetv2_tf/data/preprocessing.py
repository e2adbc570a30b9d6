"""The reference's three image pipelines, each one row of preprocessing facts.

Every value the train pipeline, eval, export, `infer.py` and
`include_preprocessing` apply to pixels lives here, once:

  v2:       EfficientNetV2-S/M/L/XL and every ImageNet-21k run
            (reference `preprocessing.py`: `preprocess_for_train`,
            `preprocess_for_eval`, then (x - 128) / 128).
  legacy:   EfficientNetV2-B0..B3 and EfficientNet (V1) B0..B7 on ImageNet
            (reference `preprocess_legacy.py`, augname 'effnetv1_autoaug').
  finetune: the finetune and transfer configs, for every model
            (reference `preprocessing.py` `preprocess_for_finetune`,
            augname 'ft').

A model's registry entry names its row; a dataset config may name another
(`data.preprocessing`) and set single fields (`data.<field>`); a user's
`--hparam_str` wins over both. That is the reference's order (`main.py`:
model config, then dataset config, then overrides). `resolve` writes every
resolved field into the run's config, so `config.json` holds them and eval,
export and `infer.py` read them back from there.

Pure Python (no TensorFlow): the registry, the model builder and the
docs generator import it too.
"""

import dataclasses

from effnetv2_tf import settings
from effnetv2_tf.settings import Setting

# Input scalings, each the affine map x * scale + offset per RGB channel of
# 0..255 pixels (one formula for the pipeline and the in-model layer).
SCALE_MINUS_ONE_ONE = "minus_one_one"            # (x - 128) / 128
SCALE_FINETUNE = "finetune_minus_one_one"        # (x / 255 - 0.5) / 0.5
SCALE_IMAGENET = "imagenet_mean_std"             # (x / 255 - mean) / std
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
SCALINGS = {
    SCALE_MINUS_ONE_ONE: ((1 / 128,) * 3, (-1.0,) * 3),
    SCALE_FINETUNE: ((2 / 255,) * 3, (-1.0,) * 3),
    SCALE_IMAGENET: (tuple(1 / (255 * s) for s in IMAGENET_STDDEV_RGB),
                     tuple(-m / s for m, s in zip(IMAGENET_MEAN_RGB,
                                                  IMAGENET_STDDEV_RGB))),
}
SCALING_FORMULAS = {
    SCALE_MINUS_ONE_ONE: "(x - 128) / 128",
    SCALE_FINETUNE: "(x / 255 - 0.5) / 0.5",
    SCALE_IMAGENET: "(x / 255 - mean) / std",
}

# How encoded bytes become the pixels a crop takes. 'fused': a JPEG's
# crop window alone, decoded by tf.image.decode_and_crop_jpeg
# (preprocess_legacy.py); 'whole': the whole image decoded, then sliced
# (preprocessing.py). On about 1 JPEG in 10 they differ in the window's
# first or last column (or both), where libjpeg upsamples the colour planes
# without or with the column beyond it (up to 32 grey levels;
# benchmarks/decode_compare.py). Other formats always decode whole:
# decode_and_crop_jpeg takes JPEG only.
DECODE_METHODS = ("fused", "whole")
# libjpeg's DCT scalings (tf.io.decode_jpeg's `ratio`): with `decode_reduced`
# a JPEG decodes at 1/2, 1/4 or 1/8 of its size where the crop keeps at
# least the output size on both sides (opt-in: other pixels; README, Input
# pipeline speed; benchmarks/decode_compare.py measures the difference).
JPEG_RATIOS = (1, 2, 4, 8)
# 'bilinear': tf.image.resize (half-pixel centres), reference preprocessing.py.
# 'bicubic': TF1's resize_bicubic grid (no half-pixel centres), reference
# preprocess_legacy.py under tensorflow.compat.v1.
RESIZE_METHODS = ("bilinear", "bicubic")
# What a random crop becomes when no sampled window fits: the whole image
# (sample_distorted_bounding_box's own fallback) or the eval center crop.
CROP_FALLBACKS = ("whole", "center")
# Center-crop offset: (h - c) // 2 (preprocessing.py) or (h - c + 1) // 2
# (preprocess_legacy.py).
CROP_OFFSETS = ("floor", "ceil")


def _field(help_text, **valid):
  """A `Preprocessing` field: its help and valid range (`settings`)."""
  return dataclasses.field(metadata=dict(help=help_text, **valid))


def _aspect_ok(value, data):
  return 0.0 < value <= data.crop_aspect_max


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """Every pixel-level value of one train + eval pipeline."""
  decode: str = _field("how bytes become pixels: the crop window alone "
                       "(fused, JPEG) or the whole image, then sliced")
  decode_reduced: bool = _field("JPEG: decode at 1/2, 1/4 or 1/8 scale where "
                                "the crop keeps the output size (faster; "
                                "other pixels)")
  input_scaling: str = _field("the affine map of 0..255 pixels")
  train_crop: bool = _field("inception-style random crop (else the whole "
                            "image)")
  crop_area_min: float = _field("the crop's smallest share of the image "
                                "area (the largest is 1)",
                                **settings.in_unit())
  crop_aspect_min: float = _field("the crop's smallest width / height",
                                  valid="in (0, data.crop_aspect_max]",
                                  check=_aspect_ok)
  crop_aspect_max: float = _field("the crop's largest width / height")
  crop_min_object_covered: float = _field(
      "share of the whole-image box the crop covers (0: no box)",
      **settings.in_unit(low_open=False))
  crop_max_attempts: int = _field("crop windows sampled before the "
                                  "fallback", **settings.at_least(1))
  crop_fallback: str = _field("what a crop becomes when no window fits")
  resize_method: str = _field("the resize kernel and grid")
  random_flip: bool = _field("random left-right flips in training")
  cutout: bool = _field("finetune: a square of side <= size / 2 of uniform "
                        "[0, 1) noise on the scaled image")
  eval_crop: bool = _field("center crop at eval (else the whole image)")
  crop_padding: int = _field("the eval crop keeps size / (size + padding)",
                             **settings.at_least(0))
  skip_crop_from_size: int = _field("no eval crop from this size on (0: "
                                    "always)", **settings.at_least(0))
  crop_offset: str = _field("center-crop offset: (h - c) // 2 or "
                            "(h - c + 1) // 2")


FIELDS = tuple(f.name for f in dataclasses.fields(Preprocessing))

_V2 = Preprocessing(
    decode="whole", decode_reduced=False, input_scaling=SCALE_MINUS_ONE_ONE,
    train_crop=True, crop_area_min=0.05,
    # tf.image.sample_distorted_bounding_box's defaults (0.75, 1.33), 100.
    crop_aspect_min=0.75, crop_aspect_max=1.33, crop_min_object_covered=0.0,
    crop_max_attempts=100, crop_fallback="whole", resize_method="bilinear",
    random_flip=True, cutout=False, eval_crop=True, crop_padding=32,
    skip_crop_from_size=320, crop_offset="floor")

ROWS = {
    "v2": _V2,
    "legacy": Preprocessing(
        decode="fused", decode_reduced=False, input_scaling=SCALE_IMAGENET,
        train_crop=True,
        crop_area_min=0.08,
        crop_aspect_min=3 / 4, crop_aspect_max=4 / 3,
        crop_min_object_covered=0.1, crop_max_attempts=10,
        crop_fallback="center", resize_method="bicubic", random_flip=True,
        cutout=False, eval_crop=True, crop_padding=32, skip_crop_from_size=0,
        crop_offset="ceil"),
    # Whole image decoded (preprocessing.py decodes before its finetune
    # branch), resized, flipped, cut out; eval on the whole image. The
    # crop fields are those of v2 and unused (train_crop, eval_crop off).
    "finetune": dataclasses.replace(
        _V2, input_scaling=SCALE_FINETUNE, train_crop=False, cutout=True,
        eval_crop=False),
}

# Field -> the names a string field accepts (validation and --help text).
CHOICES = {"decode": DECODE_METHODS, "input_scaling": tuple(SCALINGS),
           "resize_method": RESIZE_METHODS, "crop_fallback": CROP_FALLBACKS,
           "crop_offset": CROP_OFFSETS}

# The config's preprocessing keys (`data` section): the row, then every
# field, each filled from the row where unset (`resolve`).
SETTINGS = (
    Setting("preprocessing", None, str, "the preprocessing row",
            fills="the model's", choices=tuple(ROWS)),
) + tuple(
    Setting(f.name, None, f.type, f.metadata["help"],
            fills="the row's", choices=CHOICES.get(f.name, ()),
            **{k: v for k, v in f.metadata.items() if k != "help"})
    for f in dataclasses.fields(Preprocessing))


def scaling(name):
  """(scale, offset) per RGB channel of a `SCALINGS` name; ValueError
  listing the valid names."""
  if name not in SCALINGS:
    raise ValueError(f"Unknown input scaling {name!r}; valid: "
                     f"{', '.join(SCALINGS)}.")
  return SCALINGS[name]


def get_row(name):
  """The named row; ValueError listing the valid names."""
  if name not in ROWS:
    raise ValueError(f"Unknown preprocessing {name!r}; valid: "
                     f"{', '.join(ROWS)}.")
  return ROWS[name]


def resolve(data_config, model_row):
  """Fills every unset preprocessing field of `data_config` in place.

  Args:
    data_config: a config's unlocked `data` section (ConfigDict).
    model_row: the model's registry row name, used where
      `data.preprocessing` (a dataset config's row) is unset.
  """
  if data_config.preprocessing is None:
    data_config.preprocessing = model_row
  row = get_row(data_config.preprocessing)
  for name in FIELDS:
    if data_config[name] is None:
      data_config[name] = getattr(row, name)


def from_config(data_config):
  """The `Preprocessing` of a resolved `data` section (ConfigDict or dict)."""
  return Preprocessing(**{name: data_config[name] for name in FIELDS})
