"""The README's backbone example runs as printed and learns.

It trains a small FPN-style decoder on `create_model(features_only=True)`
to find the strokes of the sklearn digits; after its few steps the loss
has gone down and the per-pixel accuracy beats predicting the majority
class everywhere (the baseline, counted from the masks here).
"""

import re

import numpy as np
from sklearn.datasets import load_digits

from conftest import ROOT

START, END = "<!-- backbone-example -->", "<!-- /backbone-example -->"


def _example():
  """The python code block between the markers."""
  text = (ROOT / "README.md").read_text()
  section = text[text.index(START) + len(START):text.index(END)]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_backbone_example_learns_the_strokes():
  namespace = {"__name__": "readme_example"}
  exec(compile(_example(), "README.md:backbone-example", "exec"), namespace)  # pylint: disable=exec-used
  losses = namespace["history"].history["loss"]
  assert losses[-1] < 0.5 * losses[0], losses
  # Independent of the example: its masks are the strokes of the first
  # digits (ink above half of the maximum 16), 8x8 upscaled 4x.
  digits = load_digits().images
  masks = namespace["masks"]
  n = len(masks)
  expected = np.kron(digits[:n] > 8, np.ones((4, 4)))[..., None]
  np.testing.assert_array_equal(masks, expected)
  baseline = max(masks.mean(), 1 - masks.mean())  # all background: ~0.7
  predicted = namespace["segmenter"].predict(namespace["images"], verbose=0)
  accuracy = np.mean((predicted > 0) == (masks > 0.5))
  assert accuracy > baseline + 0.1, (accuracy, baseline)
