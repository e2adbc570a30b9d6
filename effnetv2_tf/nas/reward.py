"""The search's reward (paper section 3.3): A * S**w * P**v.

A is the candidate's accuracy on the minival split, S its training step time
and P its parameter count, both divided by the backbone's (measured the same
way, on the same device), so the backbone's reward is its accuracy and a
candidate scores above it only by being more accurate, faster or smaller
by the paper's exchange rates w = -0.07 and v = -0.05.
"""

import math


def reward(accuracy, step_time, params, base_step_time, base_params,
           w=-0.07, v=-0.05):
  """`accuracy * (step_time / base_step_time) ** w * (params / base_params)
  ** v`; ValueError on a non-positive time or count."""
  for name, value in (("step_time", step_time),
                      ("base_step_time", base_step_time),
                      ("params", params), ("base_params", base_params)):
    if not value > 0 or math.isinf(value):
      raise ValueError(f"reward: {name} must be a positive number, got "
                       f"{value!r}.")
  return (accuracy * (step_time / base_step_time) ** w
          * (params / base_params) ** v)
