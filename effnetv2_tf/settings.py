"""A config key, defined once: default, type, valid values and one line of help.

The module that owns a value declares its keys as `Setting`s (the model's
beside `ModelOptions`, the optimizer names beside the optimizer table, a
preprocessing field beside its row); `configs/base.py` gathers them into the
ConfigDict, and the validation, the model's defaults and `--help` read the
same records. Pure Python.
"""

import dataclasses
from typing import Any, Callable, Optional

from ml_collections.config_dict import placeholder


@dataclasses.dataclass(frozen=True)
class Setting:
  """One config key of a section.

  `default` None is a placeholder of `type`, filled from the model's
  registry entry, its preprocessing row or the progressive preset, or left
  None; `fills` says which, for --help. `check(value, section)` (with
  `valid`, the range as users read it; a ValueError it raises says more)
  or `choices` say what is valid; None always is, and so is a value
  whose check needs another key of `section` that is still None (checked
  again once it is filled).
  """
  name: str
  default: Any
  type: type
  help: str
  fills: str = ""
  choices: tuple = ()
  valid: str = ""
  check: Optional[Callable[[Any, Any], bool]] = None

  def problem(self, value, section):
    """None when `value` is valid in `section`, else what is valid."""
    if value is None:
      return None
    if self.choices and value not in self.choices:
      return ", ".join(map(repr, self.choices))
    try:
      if self.check and not self.check(value, section):
        return self.valid
    except ValueError as err:
      return str(err)
    except TypeError:  # compares with a placeholder not yet filled (None)
      return None
    return None

  def describe(self):
    """'= default (valid values): help', a line of --help."""
    default = repr(self.default) if self.default is not None else (
        self.fills or "None")
    valid = (" | ".join(str(c) or "''" for c in self.choices)
             if self.choices else self.valid)
    return f"= {default}" + (f" ({valid})" if valid else "") + (
        f": {self.help}")


def at_least(low, note=""):
  """A `Setting` check and its text: value >= low."""
  return dict(valid=f">= {low}{note}", check=lambda v, _: v >= low)


def in_unit(low_open=True, high_open=False):
  """A check for values in (0, 1], [0, 1), ... and its text."""
  left, right = "(" if low_open else "[", ")" if high_open else "]"
  def check(v, _):
    above = v > 0 if low_open else v >= 0
    below = v < 1 if high_open else v <= 1
    return above and below
  return dict(valid=f"in {left}0, 1{right}", check=check)


def section_defaults(settings):
  """{name: default, or a typed placeholder} for a ConfigDict section."""
  return {s.name: placeholder(s.type) if s.default is None else s.default
          for s in settings}


def by_name(settings):
  return {s.name: s for s in settings}
