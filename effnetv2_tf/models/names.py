"""Layer names of the model that other code looks up.

The model (`model.py`) names its layers as keras.applications does
(`stem_conv`, `block2a_expand_conv`, `top_conv`, `predictions`), so weight
files map by name; the training step, layer-wise learning-rate decay,
recomputation and weight loading find the stem, blocks and head by these.
"""

import re
import string

STEM_PREFIX = "stem_"  # stem_conv, stem_bn, stem_activation
# Every layer of a block: block<stage><letters>_, stage from 1, letters
# a..z, aa, ... the block's index in its stage (`block_prefix`).
BLOCK_NAME = re.compile(r"block(\d+)([a-z]+)_")
HEAD_PREFIX = "top_"  # top_conv, top_bn, top_activation, top_dropout
DROPOUT_LAYER = "top_dropout"  # the head's dropout (a rate per stage)
CLASSIFIER_LAYER = "predictions"  # the dense classifier (include_top)


def block_prefix(stage, index):
  """`BLOCK_NAME`'s prefix of block `index` (from 0) of `stage` (from 0)."""
  return f"block{stage + 1}{block_suffix(index)}_"


def block_suffix(index):
  """a..z, then aa, ab, ... (XL has stages of more than 26 blocks)."""
  letters = string.ascii_lowercase
  suffix = ""
  index += 1
  while index:
    index, rem = divmod(index - 1, 26)
    suffix = letters[rem] + suffix
  return suffix
