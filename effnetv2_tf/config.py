"""Builds the final, locked experiment config shared by both drivers.

Order: `configs.base` -> the `--dataset_cfg` overrides -> a run's
config.json (resuming or evaluating a run: its values are the truth) ->
`--config_file` (YAML or JSON) -> `--hparam_str` ("a.b=1,c.d=x") -> defaults
filled from the model's registry entry -> validation -> lock. An unknown key
or a value of the wrong type is an error naming the key (big_vision style: a
typo is never a silent default).
"""

import json
import os
import re

import ml_collections
import tensorflow as tf
import yaml

from configs import base
from configs import datasets
from effnetv2_tf import errors
from effnetv2_tf import settings
from effnetv2_tf.data import preprocessing
from effnetv2_tf.models import registry
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import progressive

ConfigError = errors.ConfigError  # callers and tests name it here too


def flatten(tree, prefix=""):
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      yield from flatten(value, path + ".")
    else:
      yield path, value


def set_value(config, key, value):
  """Sets dotted `key` in `config`, raising ConfigError naming the key."""
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f"Unknown config key {'.'.join(parents[:i + 1])!r} "
                        f"(in {key!r}).")
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    valid = ", ".join(sorted(node)) if isinstance(
        node, ml_collections.ConfigDict) else ""
    raise ConfigError(f"Unknown config key {key!r}. Valid keys here: {valid}")
  if isinstance(node[leaf], ml_collections.ConfigDict):
    raise ConfigError(f"Config key {key!r} is a section, not a value.")
  expected = node.get_type(leaf)
  # ml_collections takes True for an int (a bool is one) and None for any
  # key; only a placeholder (default None) may be null.
  wrong = (value is None and not _nullable(key) or
           isinstance(value, bool) and expected is not bool)
  if not wrong:
    try:
      setattr(node, leaf, value)
    except TypeError:  # its message is ml_collections' own: ours instead
      wrong = True
  if wrong:
    raise ConfigError(_wrong_type(key, value, expected))


# How a type reads in an error, in the words of --hparam_str's YAML.
_IS_WORDS = {int: "an integer", float: "a decimal number", str: "a string",
             bool: "a boolean", list: "a list", dict: "a mapping"}
_GIVE_WORDS = {**_IS_WORDS, float: "a number", bool: "true or false"}


def _wrong_type(key, value, expected):
  """The one line of a value of the wrong type: "Wrong type for config key
  'train.batch_size': 'abc' is a string; give an integer."."""
  if value is None:
    given = "null"
  else:
    shown = json.dumps(value) if isinstance(value, bool) else repr(value)
    kind = type(value)
    given = f"{shown} is {_IS_WORDS.get(kind, 'a ' + kind.__name__)}"
  return (f"Wrong type for config key {key!r}: {given}; give "
          f"{_GIVE_WORDS.get(expected, expected.__name__)}.")


def _nullable(key):
  """Whether dotted `key` may be null: a placeholder (default None),
  filled later or left unset."""
  section, _, name = key.partition(".")
  setting = settings.by_name(base.SECTIONS.get(section, ())).get(name)
  return setting is None or setting.default is None


def apply_overrides(config, overrides):
  """Applies a nested dict of overrides."""
  for key, value in flatten(overrides):
    set_value(config, key, value)


class _YamlLoader(yaml.SafeLoader):
  """SafeLoader that also reads '1e-7' as a float (YAML 1.2, not 1.1)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _load_yaml(text):
  return yaml.load(text, Loader=_YamlLoader)  # safe: a SafeLoader subclass


def _yaml_error(err, text, end, at):
  """(where, what) of a YAML error in `text`: where it is and what was
  expected, as one line.

  `end` names the end of the text (PyYAML's '<stream end>'); `at(line,
  column)` (0-based) says where a place is, e.g. a column of an item.
  """
  if isinstance(err, yaml.reader.ReaderError):  # a character YAML refuses
    before = text[:err.position]
    where = at(before.count("\n"), len(before) - before.rfind("\n") - 1)
    return where, f"unacceptable character #x{err.character:04x}: {err.reason}"
  mark = getattr(err, "problem_mark", None)
  if mark is None:
    return None, " ".join(str(err).split())
  what = (err.problem or "").replace("'<stream end>'", end)
  if err.context:
    start = err.context_mark
    what += f" ({err.context}" + (
        f" from {at(start.line, start.column)})" if start else ")")
  return at(mark.line, mark.column), what


def _split_items(text):
  """`text` split at the commas outside [] and {} (YAML lists and maps); an
  unclosed bracket keeps the rest in its item, whose error then shows it."""
  items, depth, start = [], 0, 0
  for i, char in enumerate(text):
    if char in "[{":
      depth += 1
    elif char in "]}":
      depth = max(depth - 1, 0)
    elif char == "," and not depth:
      items.append(text[start:i])
      start = i + 1
  return items + [text[start:]]


def parse_hparam_str(hparam_str):
  """'a.b=1,c=[1, 2],d=x' -> {'a.b': 1, 'c': [1, 2], 'd': 'x'} (YAML values).

  A value YAML cannot parse is a ConfigError naming its item and key, the
  column in the item and what was expected.
  """
  pairs = {}
  for item in _split_items(hparam_str or ""):
    item = item.strip()
    if not item:
      continue
    if "=" not in item:
      raise ConfigError(f"Bad --hparam_str item {item!r}: expected key=value.")
    key, text = (s.strip() for s in item.split("=", 1))
    try:
      pairs[key] = _load_yaml(text) if text else ""
    except yaml.YAMLError as err:
      start = item.index(text, item.index("="))  # the value's column

      def at(line, column, start=start):  # 1-based, in the item
        return (f"column {start + column + 1}" if line == 0 else
                f"line {line + 1}, column {column + 1} of the value")

      where, what = _yaml_error(err, text, "the end of the value", at)
      raise ConfigError(f"Bad --hparam_str item {item!r}, the value of "
                        f"{key}" + (f", {where}" if where else "") +
                        f": {what}.") from None
  return pairs


def load_config_file(path):
  """Reads a YAML or JSON file of (nested) overrides.

  A file that cannot be read or parsed is a ConfigError naming it and, for
  a syntax error, the line and column and what was expected.
  """
  if not os.path.exists(path):
    raise ConfigError(f"--config_file {path!r} does not exist.")
  if os.path.isdir(path):
    raise ConfigError(f"--config_file {path} is a directory, not a YAML or "
                      "JSON file.")
  try:
    with open(path, "rb") as f:
      text = f.read().decode("utf-8-sig")
  except UnicodeDecodeError as err:
    raise ConfigError(f"--config_file {path} is not UTF-8 text (byte "
                      f"0x{err.object[err.start]:02x} at offset {err.start})"
                      "; give a YAML or JSON file.") from None
  except OSError as err:
    raise ConfigError(f"--config_file {path} cannot be read: "
                      f"{err.strerror}.") from None
  try:
    tree = _load_yaml(text)  # YAML is a superset of JSON ...
  except yaml.YAMLError as err:
    tree = _load_json(path, text, err)  # ... but for tab indents
  if not isinstance(tree, dict):
    raise ConfigError(f"--config_file {path!r} must hold a mapping of keys.")
  return tree


def _load_json(path, text, yaml_error):
  """A .json file YAML could not read (JSON allows tab indents, YAML does
  not); else a ConfigError of JSON's error (.json) or `yaml_error`."""
  if path.lower().endswith(".json"):
    try:
      return json.loads(text)
    except json.JSONDecodeError as err:
      raise ConfigError(f"--config_file {path} line {err.lineno}, column "
                        f"{err.colno}: {err.msg}.") from None
  where, what = _yaml_error(
      yaml_error, text, "the end of the file",
      lambda line, column: f"line {line + 1}, column {column + 1}")
  raise ConfigError(f"--config_file {path}" + (f" {where}" if where else "")
                    + f": {what}.")


def _fill_defaults(config):
  """Fills every placeholder the model, preprocessing row and preset set.

  Afterwards config.json holds each value the run uses: sizes, stages,
  every preprocessing field and the preset's min/max stage values.
  """
  spec = registry.get_model_spec(config.model.name)
  model = config.model
  model.name = spec.name
  if model.eval_size is None:
    model.eval_size = spec.eval_size
  if model.train_size is None:
    model.train_size = (
        registry.train_size_from_eval(model.eval_size,
                                      model.train_size_ratio)
        if model.train_size_ratio else spec.train_size)
  if config.data.augname is None:
    config.data.augname = spec.augname
  if config.data.augment_arithmetic is None:
    # Each preset names its arithmetic: `reference` trains with the ops the
    # published models were trained with, `paper` with PIL's.
    config.data.augment_arithmetic = config.progressive.preset
  if config.progressive.num_stages is None:
    config.progressive.num_stages = spec.num_stages
  preprocessing.resolve(config.data, spec.preprocessing)


def _fill_stage_ranges(config):
  """progressive.min_*/max_*: the preset's values where not set."""
  lo, hi = progressive.preset_ranges(config)
  cast = lambda key: int if key == "image_size" else float
  for key in progressive.KEYS:
    config.progressive[f"min_{key}"] = cast(key)(lo[key])
    config.progressive[f"max_{key}"] = cast(key)(hi[key])


def validate(config):
  """Checks every value against its `settings.Setting` before any heavy
  work; raises ConfigError naming the key and its valid range or names."""
  for section, keys in base.SECTIONS.items():
    for setting in keys:
      value = config[section][setting.name]
      valid = setting.problem(value, config[section])
      if valid:
        raise ConfigError(f"Bad value for {section}.{setting.name}: "
                          f"{value!r}; valid: {valid}.")


def _apply_run_config(config, run_config, model_name, dataset_given):
  """Sets every value of a run's config.json dict on `config`.

  `model_name`, when given, must be the run's model; with `dataset_given`
  the dataset config applied to `config` must be the run's dataset.
  """
  old_model = run_config["model"]["name"]
  old_data = run_config["data"]["dataset"]
  if model_name:
    try:
      name = registry.get_model_spec(model_name).name
    except ValueError as err:
      raise ConfigError(str(err)) from None
    if name != old_model:
      raise ConfigError(f"config.json holds a run of {old_model}, not "
                        f"{name}; use another --model_dir.")
  if dataset_given and config.data.dataset != old_data:
    raise ConfigError(f"config.json holds a run on {old_data!r}, not "
                      f"{config.data.dataset!r} (--dataset_cfg); use another "
                      "--model_dir.")
  old_cfg = run_config["data"]["dataset_cfg"]
  if dataset_given and config.data.dataset_cfg != old_cfg:
    raise ConfigError(f"config.json holds a run of --dataset_cfg={old_cfg}, "
                      f"not {config.data.dataset_cfg}; drop the flag to go "
                      "on with it, or use another --model_dir.")
  for key, value in flatten(run_config):
    try:
      set_value(config, key, value)
    except ConfigError as err:
      raise ConfigError(f"config.json: {err}") from None


def build_config(*args, **kwargs):
  """The final locked config: `freeze(draft_config(...))`."""
  return freeze(draft_config(*args, **kwargs))


def draft_config(model_name=None, dataset_cfg="imagenet", hparam_str="",
                 config_file=None, data_dir=None, run_config=None,
                 overrides=None):
  """The config filled and checked, before the values that come from the
  data (its class count) are set and it is frozen (`freeze`).

  Args:
    model_name: registered model name (None keeps the base default, or the
      run's with `run_config`).
    dataset_cfg: a name from `configs.datasets.DATASET_CONFIGS`; None only
      with `run_config` (the run's dataset).
    hparam_str: comma-separated key=value overrides, applied last.
    config_file: optional YAML/JSON file of overrides.
    data_dir: `--data_dir`, stored as data.data_dir.
    run_config: a run's config.json dict, to resume or evaluate it: its
      values replace the defaults; the arguments above override them.
    overrides: {dotted key: typed value} (flags that set keys), applied
      after `hparam_str`.

  Raises:
    ConfigError: unknown dataset config, key, type or a bad value; a model
      or dataset config other than the run's.
  """
  config = base.get_config()
  config.lock()
  if dataset_cfg is not None or run_config is None:
    try:
      apply_overrides(config, datasets.get_dataset_config(
          dataset_cfg or "imagenet"))
    except ValueError as err:
      raise ConfigError(str(err)) from None
    config.data.dataset_cfg = (dataset_cfg or "imagenet").lower()
  if run_config is not None:
    _apply_run_config(config, run_config, model_name,
                      dataset_given=dataset_cfg is not None)
  _apply_given(config, model_name, data_dir, config_file,
               {**parse_hparam_str(hparam_str), **(overrides or {})})
  # The values as given first: a bad one is named, not a value filled
  # from it (model.eval_size=0 makes train_size 0 by train_size_ratio).
  validate(config)
  try:
    _fill_defaults(config)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  validate(config)
  return config


def freeze(draft):
  """The final config of a `draft_config` (checked again, stage ranges
  filled), frozen."""
  validate(draft)
  _fill_stage_ranges(draft)
  return ml_collections.FrozenConfigDict(draft)


def _apply_given(config, model_name, data_dir, config_file, values):
  """The values this command gives, in order: --model, --data_dir,
  --config_file, then `values` ({dotted key: value})."""
  if model_name:
    config.model.name = model_name
  if data_dir:
    config.data.data_dir = data_dir
  if config_file:
    apply_overrides(config, load_config_file(config_file))
  for key, value in values.items():
    set_value(config, key, value)
  if config.data.data_dir and "://" not in config.data.data_dir:
    # config.json's data_dir must work from any working directory (an
    # eval, export or resume started elsewhere).
    config.data.data_dir = os.path.abspath(config.data.data_dir)


def save_config(config, model_dir):
  """Writes config.json; refuses a model_dir that belongs to another model."""
  path = os.path.join(model_dir, run_dir.CONFIG_FILENAME)
  tf.io.gfile.makedirs(model_dir)
  previous = run_dir.read_config(model_dir) or {}
  old = previous.get("model", {}).get("name")
  if old and old != config.model.name:
    raise ConfigError(
        f"--model_dir {model_dir} holds a run of {old}, not "
        f"{config.model.name}; use another --model_dir.")
  run_dir.write_config(model_dir, json.loads(config.to_json()))
  return path


def changed_values(run_config, config):
  """[(key, config.json value, value now)] where `config` departs from a
  run's config.json dict (the overrides of a resumed or evaluated run)."""
  now = dict(flatten(json.loads(config.to_json())))
  return [(key, value, now[key]) for key, value in flatten(run_config)
          if key in now and now[key] != value]
