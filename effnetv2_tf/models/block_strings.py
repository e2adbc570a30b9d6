"""Block strings: the reference's compact notation for one stage of blocks.

A stage is written ``r<repeats>_k<kernel>_s<stride>_e<expand>_i<in>_o<out>``
followed by optional ``_se<ratio>`` (squeeze-excitation) and ``_c<conv type>``
(0: MBConv, 1: Fused-MBConv), exactly as in the EfficientNetV2 reference code,
so the model tables can be diffed line by line against the paper and the
reference (paper Table 4).
"""

import dataclasses
import re

MBCONV = 0
FUSED_MBCONV = 1

_TOKEN = re.compile(r"^(se|[rksieoc])(.+)$")
_REQUIRED = ("r", "k", "s", "e", "i", "o")


@dataclasses.dataclass(frozen=True)
class BlockArgs:
  """One stage of identical blocks, before width/depth scaling."""
  num_repeat: int
  kernel_size: int
  strides: int
  expand_ratio: int
  input_filters: int
  output_filters: int
  se_ratio: float = 0.0
  conv_type: int = MBCONV

  @property
  def has_se(self) -> bool:
    return 0 < self.se_ratio <= 1


def _parse_int(key, value, text):
  if not value.isdigit():
    raise ValueError(
        f"Block string {text!r}: '{key}{value}' must be '{key}' followed by a "
        "non-negative integer.")
  return int(value)


def decode(text: str) -> BlockArgs:
  """Parses one block string, raising ValueError that names the bad part."""
  if not isinstance(text, str) or not text:
    raise ValueError(f"Block string must be a non-empty string, got {text!r}.")
  fields = {}
  for token in text.split("_"):
    match = _TOKEN.match(token)
    if not match:
      raise ValueError(
          f"Block string {text!r}: unknown part {token!r}; expected "
          "r<repeats>_k<kernel>_s<stride>_e<expand>_i<in>_o<out>"
          "[_se<ratio>][_c<0|1>].")
    key, value = match.groups()
    if key in fields:
      raise ValueError(f"Block string {text!r}: '{key}' appears twice.")
    fields[key] = value
  missing = [k for k in _REQUIRED if k not in fields]
  if missing:
    raise ValueError(
        f"Block string {text!r}: missing {', '.join(missing)}.")
  ints = {k: _parse_int(k, fields[k], text) for k in _REQUIRED}
  se_ratio = 0.0
  if "se" in fields:
    try:
      se_ratio = float(fields["se"])
    except ValueError:
      raise ValueError(
          f"Block string {text!r}: 'se{fields['se']}' must be 'se' followed "
          "by a number.") from None
    if not 0 < se_ratio <= 1:
      raise ValueError(
          f"Block string {text!r}: se ratio {se_ratio} must be in (0, 1].")
  conv_type = _parse_int("c", fields["c"], text) if "c" in fields else MBCONV
  if conv_type not in (MBCONV, FUSED_MBCONV):
    raise ValueError(
        f"Block string {text!r}: conv type c{conv_type} must be c0 (MBConv) "
        "or c1 (Fused-MBConv).")
  for key in ("r", "k", "s", "e", "i", "o"):
    if ints[key] < 1:
      raise ValueError(f"Block string {text!r}: '{key}' must be at least 1.")
  return BlockArgs(
      num_repeat=ints["r"], kernel_size=ints["k"], strides=ints["s"],
      expand_ratio=ints["e"], input_filters=ints["i"],
      output_filters=ints["o"], se_ratio=se_ratio, conv_type=conv_type)


def encode(args: BlockArgs) -> str:
  """Writes BlockArgs back in the reference notation (inverse of decode)."""
  parts = [
      f"r{args.num_repeat}", f"k{args.kernel_size}", f"s{args.strides}",
      f"e{args.expand_ratio}", f"i{args.input_filters}",
      f"o{args.output_filters}"
  ]
  if args.has_se:
    parts.append(f"se{args.se_ratio:g}")
  if args.conv_type != MBCONV:
    parts.append(f"c{args.conv_type}")
  return "_".join(parts)


def decode_all(texts) -> list:
  return [decode(t) for t in texts]
