"""The model's settings: the config's `model` section and `ModelOptions`,
the per-model knobs of `create_model(**overrides)`, from one definition."""

import dataclasses
from typing import Optional, Sequence

from effnetv2_tf import settings
from effnetv2_tf.models import block_strings
from effnetv2_tf.settings import Setting


def _blocks_ok(value, _):
  block_strings.decode_all(value.split())  # ValueError says what is wrong
  return True


# The config's `model` section (configs/base.py gathers it).
SETTINGS = (
    Setting("name", "efficientnetv2-s", str,
            "a registered model (list_models())"),
    Setting("num_classes", 1000, int, "size of the classification head; a "
            "folder or TFDS dataset's own count wins",
            **settings.at_least(1)),
    Setting("survival_prob", 0.8, float,
            "stochastic depth: the last block's survival probability",
            **settings.in_unit()),
    Setting("bn_momentum", 0.9, float,
            "batch-norm moving-average momentum, Keras sense (reference "
            "code; the paper says 0.99)"),
    # The reference's value (also Keras' default), kept explicit because
    # the published weights were trained with it.
    Setting("bn_epsilon", 1e-3, float, "batch-norm epsilon"),
    Setting("train_size", None, int, "training image size",
            fills="the registry's, or from train_size_ratio",
            **settings.at_least(8)),
    Setting("eval_size", None, int, "eval image size", fills="the registry's",
            **settings.at_least(8)),
    Setting("train_size_ratio", None, float,
            "train_size = int(eval_size * ratio) // 16 * 16 when set "
            "(reference main.py; the finetune configs: 1.0)", fills="unset",
            valid="> 0, or null", check=lambda v, _: v > 0),
    Setting("width_coefficient", None, float,
            "channel scaling (tests, smoke runs)", fills="the registry's",
            valid="> 0", check=lambda v, _: v > 0),
    Setting("depth_coefficient", None, float,
            "block-count scaling", fills="the registry's",
            valid="> 0", check=lambda v, _: v > 0),
    Setting("blocks", None, str,
            "block strings, space-separated (an architecture search's "
            "winner)", fills="the registry's",
            valid="decodable block strings", check=_blocks_ok),
)
_DEFAULTS = {s.name: s.default for s in SETTINGS}


def default(name):
  """The default of setting `name`."""
  return _DEFAULTS[name]


def check(name, value):
  """ValueError naming setting `name` unless `value` is valid for it."""
  problem = settings.by_name(SETTINGS)[name].problem(value, None)
  if problem:
    raise ValueError(f"{name} must be {problem}, got {value}.")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """Knobs a caller may override per model (`create_model(**overrides)`)."""
  dropout_rate: float
  survival_prob: float = _DEFAULTS["survival_prob"]
  bn_momentum: float = _DEFAULTS["bn_momentum"]
  bn_epsilon: float = _DEFAULTS["bn_epsilon"]
  # Replicas whose BN statistics are pooled in training: 1 each its own,
  # k groups of k consecutive replicas, 0 all (`fused_bn`); the drivers
  # set it from runtime.bn_group_size.
  bn_group_size: int = 1
  # TensorFlow's fused BN kernel (`fused_bn`), same numerics as Keras' layer.
  bn_fused: bool = True
  # 1x1 convolutions as matmuls in training (`pointwise_conv`), same math.
  pointwise_matmul: bool = True
  activation: str = "swish"
  width_coefficient: Optional[float] = None  # None: the registry's value
  depth_coefficient: Optional[float] = None
  blocks: Optional[Sequence[str]] = None
  feature_size: Optional[int] = None


OVERRIDABLE = tuple(f.name for f in dataclasses.fields(ModelOptions))
