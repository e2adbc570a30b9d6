"""Model registry: every EfficientNetV2 / EfficientNet variant as data.

Each entry holds the block strings of paper Table 4 (V2) or the EfficientNet
paper (V1), the compound-scaling coefficients and the defaults that travel
with the model: train and eval image size, the preprocessing row
(`effnetv2_tf.data.preprocessing`: input scaling, crops, resize), dropout,
augmentation, mixup/CutMix and progressive stages. Values are those of the
reference implementation (google/automl, efficientnetv2/effnetv2_configs.py);
V1's channel rounding is the original EfficientNet's (`_v1`).
"""

import dataclasses
from typing import Tuple


def train_size_from_eval(eval_size, ratio):
  """The reference's fractional train size (main.py: `train.isize` <= 16).

  `int(eval_size * ratio) // 16 * 16`: V1 trains at 0.8 of its eval size,
  the finetune configs at 1.0.
  """
  return int(eval_size * ratio) // 16 * 16


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Architecture plus the training/evaluation defaults of one variant."""
  name: str
  blocks: Tuple[str, ...]
  width_coefficient: float
  depth_coefficient: float
  train_size: int
  eval_size: int
  dropout_rate: float
  preprocessing: str  # a row of effnetv2_tf.data.preprocessing.ROWS
  augname: str  # 'randaug' or 'autoaug' (AutoAugment policy v0)
  randaug_magnitude: int = 0  # data.ram (unused by AutoAugment)
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  num_stages: int = 4  # progressive-learning stages (V1: none)
  feature_size: int = 1280
  depth_divisor: int = 8
  min_depth: int = 8
  # A rounded channel count below this fraction of the scaled one gets one
  # more divisor (`model.round_filters`); 0: no such rule (V2's reference).
  round_down_limit: float = 0.0


_V2_S = ("r2_k3_s1_e1_i24_o24_c1", "r4_k3_s2_e4_i24_o48_c1",
         "r4_k3_s2_e4_i48_o64_c1", "r6_k3_s2_e4_i64_o128_se0.25",
         "r9_k3_s1_e6_i128_o160_se0.25", "r15_k3_s2_e6_i160_o256_se0.25")
_V2_M = ("r3_k3_s1_e1_i24_o24_c1", "r5_k3_s2_e4_i24_o48_c1",
         "r5_k3_s2_e4_i48_o80_c1", "r7_k3_s2_e4_i80_o160_se0.25",
         "r14_k3_s1_e6_i160_o176_se0.25", "r18_k3_s2_e6_i176_o304_se0.25",
         "r5_k3_s1_e6_i304_o512_se0.25")
_V2_L = ("r4_k3_s1_e1_i32_o32_c1", "r7_k3_s2_e4_i32_o64_c1",
         "r7_k3_s2_e4_i64_o96_c1", "r10_k3_s2_e4_i96_o192_se0.25",
         "r19_k3_s1_e6_i192_o224_se0.25", "r25_k3_s2_e6_i224_o384_se0.25",
         "r7_k3_s1_e6_i384_o640_se0.25")
_V2_XL = ("r4_k3_s1_e1_i32_o32_c1", "r8_k3_s2_e4_i32_o64_c1",
          "r8_k3_s2_e4_i64_o96_c1", "r16_k3_s2_e4_i96_o192_se0.25",
          "r24_k3_s1_e6_i192_o256_se0.25", "r32_k3_s2_e6_i256_o512_se0.25",
          "r8_k3_s1_e6_i512_o640_se0.25")
_V2_BASE = ("r1_k3_s1_e1_i32_o16_c1", "r2_k3_s2_e4_i16_o32_c1",
            "r2_k3_s2_e4_i32_o48_c1", "r3_k3_s2_e4_i48_o96_se0.25",
            "r5_k3_s1_e6_i96_o112_se0.25", "r8_k3_s2_e6_i112_o192_se0.25")
_V1 = ("r1_k3_s1_e1_i32_o16_se0.25", "r2_k3_s2_e6_i16_o24_se0.25",
       "r2_k5_s2_e6_i24_o40_se0.25", "r3_k3_s2_e6_i40_o80_se0.25",
       "r3_k5_s1_e6_i80_o112_se0.25", "r4_k5_s2_e6_i112_o192_se0.25",
       "r1_k3_s1_e6_i192_o320_se0.25")


def _v2_large(name, blocks, train, eval_, dropout, ra, mixup):
  # effnetv2_configs.py: cutmix_alpha=mix, the model's mixup alpha.
  return ModelSpec(name, blocks, 1.0, 1.0, train, eval_, dropout, "v2",
                   "randaug", ra, mixup, cutmix_alpha=mixup)


def _v2_base(name, width, depth, train, eval_, dropout):
  # augname 'effnetv1_autoaug': V1's pipeline, with progressive stages.
  return ModelSpec(name, _V2_BASE, width, depth, train, eval_, dropout,
                   "legacy", "autoaug")


def _v1(name, width, depth, resolution, dropout):
  # train.isize=0.8, no stages (hparams.py: train.stages=0, data.ram=15).
  # Channels round as in the original EfficientNet code, which every
  # published V1 checkpoint was trained with: never down by more than 10%
  # (efficientdet/backbone/efficientnet_model.py L139-141, keras.applications
  # efficientnet.py round_filters; effnetv2_model.py L84-95 has no such rule,
  # which would give B3's first block 16 channels, not 24). DEVIATIONS D17.
  return ModelSpec(name, _V1, width, depth,
                   train_size_from_eval(resolution, 0.8), resolution,
                   dropout, "legacy", "autoaug", 15, num_stages=1,
                   round_down_limit=0.9)


_SPECS = (
    # name, blocks, train size, eval size, dropout, RandAugment, mixup alpha
    _v2_large("efficientnetv2-s", _V2_S, 300, 384, 0.2, 10, 0.0),
    _v2_large("efficientnetv2-m", _V2_M, 384, 480, 0.3, 15, 0.2),
    _v2_large("efficientnetv2-l", _V2_L, 384, 480, 0.4, 20, 0.5),
    _v2_large("efficientnetv2-xl", _V2_XL, 384, 512, 0.4, 20, 0.5),
    # name, width, depth, train size, eval size, dropout
    _v2_base("efficientnetv2-b0", 1.0, 1.0, 192, 224, 0.2),
    _v2_base("efficientnetv2-b1", 1.0, 1.1, 192, 240, 0.2),
    _v2_base("efficientnetv2-b2", 1.1, 1.2, 208, 260, 0.3),
    _v2_base("efficientnetv2-b3", 1.2, 1.4, 240, 300, 0.3),
    # name, width, depth, resolution, dropout
    _v1("efficientnet-b0", 1.0, 1.0, 224, 0.2),
    _v1("efficientnet-b1", 1.0, 1.1, 240, 0.2),
    _v1("efficientnet-b2", 1.1, 1.2, 260, 0.3),
    _v1("efficientnet-b3", 1.2, 1.4, 300, 0.3),
    _v1("efficientnet-b4", 1.4, 1.8, 380, 0.4),
    _v1("efficientnet-b5", 1.6, 2.2, 456, 0.4),
    _v1("efficientnet-b6", 1.8, 2.6, 528, 0.5),
    _v1("efficientnet-b7", 2.0, 3.1, 600, 0.5),
)
_REGISTRY = {spec.name: spec for spec in _SPECS}


def list_models():
  """Names of all registered variants, V2 first, in registry order."""
  return [spec.name for spec in _SPECS]


def get_model_spec(name: str) -> ModelSpec:
  """Looks a variant up by name (case-insensitive, '_' accepted for '-')."""
  key = str(name).strip().lower().replace("_", "-")
  if key not in _REGISTRY:
    raise ValueError(
        f"Unknown model {name!r}. Valid models: {', '.join(list_models())}.")
  return _REGISTRY[key]
