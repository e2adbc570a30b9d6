"""The search space as data: checked choices, sampled candidates.

A space (`configs/nas.py`) names a backbone and the choices per stage. A
candidate is one value of each of four parameters per stage,
`stage<i>_conv`, `stage<i>_layers`, `stage<i>_kernel`, `stage<i>_expand`,
and its architecture is the backbone's block strings with those four fields
replaced. `sample` takes a `suggest(name, choices)` function: Optuna's
`trial.suggest_categorical` in the search, a seeded random choice in tests.
"""

from typing import Callable, Dict, Sequence, Tuple

from configs import nas as nas_configs
from effnetv2_tf import errors
from effnetv2_tf.models import block_strings
from effnetv2_tf.models import registry

PARAMETERS = ("conv", "layers", "kernel", "expand")
_CHOICE_KEYS = {"conv": "conv_types", "layers": "num_layers",
                "kernel": "kernel_sizes", "expand": "expand_ratios"}
_CONV_TYPE = {"mbconv": block_strings.MBCONV,
              "fused": block_strings.FUSED_MBCONV}
# The squeeze-excitation ratio of an MBConv stage whose backbone stage has
# none (the EfficientNetV2 backbones' Fused stages): 0.25, V1's and V2's.
DEFAULT_SE_RATIO = 0.25


class SpaceError(errors.UserError, ValueError):
  """A search space that cannot be searched; the message names the key."""


def choices(space) -> Dict[str, Tuple]:
  """{parameter: its choices} of one stage, checked.

  Raises:
    SpaceError: an unknown backbone or convolution type, an empty choice,
      a layer count below 1, an even or non-positive kernel, an expansion
      ratio below 1.
  """
  try:
    registry.get_model_spec(space["backbone"])
  except ValueError as err:
    raise SpaceError(f"space.backbone: {err}") from None
  found = {}
  for parameter, key in _CHOICE_KEYS.items():
    values = tuple(space[key])
    if not values:
      raise SpaceError(f"space.{key} is empty; give at least one choice.")
    if len(set(values)) != len(values):
      raise SpaceError(f"space.{key} {values} repeats a choice.")
    found[parameter] = values
  unknown = [c for c in found["conv"] if c not in _CONV_TYPE]
  if unknown:
    raise SpaceError(f"space.conv_types: unknown {', '.join(map(str, unknown))}"
                     f"; valid: {', '.join(nas_configs.CONV_TYPES)}.")
  for parameter, low, what in (("layers", 1, "at least 1"),
                               ("expand", 1, "at least 1"),
                               ("kernel", 1, "odd and at least 1")):
    bad = [v for v in found[parameter]
           if not isinstance(v, int) or v < low
           or (parameter == "kernel" and v % 2 == 0)]
    if bad:
      raise SpaceError(f"space.{_CHOICE_KEYS[parameter]}: {bad} must be "
                       f"integers {what}.")
  return found


def backbone_blocks(space) -> Tuple[str, ...]:
  return registry.get_model_spec(space["backbone"]).blocks


def num_stages(space) -> int:
  return len(backbone_blocks(space))


def parameter_names(space) -> Tuple[str, ...]:
  return tuple(f"stage{i + 1}_{p}" for i in range(num_stages(space))
               for p in PARAMETERS)


def blocks_of(space, values: Dict) -> Tuple[str, ...]:
  """The block strings of the candidate `values` ({parameter name: value})."""
  stages = []
  for i, text in enumerate(backbone_blocks(space)):
    base = block_strings.decode(text)
    conv = values[f"stage{i + 1}_conv"]
    se_ratio = 0.0 if conv == "fused" else (base.se_ratio or
                                             DEFAULT_SE_RATIO)
    stages.append(block_strings.encode(block_strings.BlockArgs(
        num_repeat=values[f"stage{i + 1}_layers"],
        kernel_size=values[f"stage{i + 1}_kernel"], strides=base.strides,
        expand_ratio=values[f"stage{i + 1}_expand"],
        input_filters=base.input_filters,
        output_filters=base.output_filters, se_ratio=se_ratio,
        conv_type=_CONV_TYPE[conv])))
  return tuple(stages)


def sample(space, suggest: Callable[[str, Sequence], object]) -> Dict:
  """One candidate: {parameter name: value}, each drawn by `suggest`."""
  options = choices(space)
  return {name: suggest(name, options[name.split("_", 1)[1]])
          for name in parameter_names(space)}


def backbone_values(space) -> Dict:
  """The backbone as a candidate (its values need not be in the space)."""
  values = {}
  for i, text in enumerate(backbone_blocks(space)):
    base = block_strings.decode(text)
    values.update({
        f"stage{i + 1}_conv": ("fused" if base.conv_type ==
                               block_strings.FUSED_MBCONV else "mbconv"),
        f"stage{i + 1}_layers": base.num_repeat,
        f"stage{i + 1}_kernel": base.kernel_size,
        f"stage{i + 1}_expand": base.expand_ratio})
  return values
