"""absl flags shared by main.py and main_tf2.py, and the config they build."""

import dataclasses
import os
from typing import Optional

from absl import flags
import ml_collections

from configs import base
from configs import datasets
from effnetv2_tf import config as config_lib
from effnetv2_tf.models import pretrained
from effnetv2_tf.models import registry
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import distribute

MODES = ("train", "eval", "train_and_eval")


def define_flags():
  """Defines the drivers' flags (call once, at import of a driver)."""
  flags.DEFINE_enum("mode", "train_and_eval", MODES, "What to run.")
  flags.DEFINE_string("model", "efficientnetv2-s",
                      f"Model name: {', '.join(registry.list_models())}.")
  flags.DEFINE_alias("model_name", "model")
  flags.DEFINE_string("dataset_cfg", "imagenet",
                      "Dataset config (case-insensitive): "
                      f"{', '.join(datasets.DATASET_CONFIGS)}.")
  flags.DEFINE_string("hparam_str", "",
                      "Config overrides, e.g. 'train.batch_size=64,"
                      "progressive.max_cutmix=0.1' (YAML values; also "
                      "--config_file). docs/recipes.md has their values per "
                      "--dataset_cfg. The keys, by section:\n"
                      + config_help())
  flags.DEFINE_string("config_file", None, "YAML/JSON file of overrides.")
  flags.DEFINE_string("model_dir", None,
                      "Checkpoints, config.json, summary.json, TensorBoard. "
                      "Default: runs/<model>-<dataset_cfg>.")
  flags.DEFINE_string("data_dir", None, "Dataset location.")
  flags.DEFINE_string("init_checkpoint", None,
                      "Initialise from published weights (TAG or MODEL:TAG; "
                      f"tags: {', '.join(pretrained.TAGS)}; downloaded once "
                      "into the Keras cache), a run directory, checkpoint, "
                      ".h5 or .keras file (finetune; the head is replaced "
                      "when the class count differs). With --mode=eval: the "
                      "weights to evaluate instead of --model_dir's latest "
                      "checkpoint, with their own recipe's preprocessing.")
  flags.DEFINE_string("checkpoint", run_dir.LATEST,
                      "--mode=eval: which checkpoint of --model_dir to "
                      "evaluate (and --export_dir to export): "
                      f"{run_dir.LATEST}, {run_dir.BEST} (best/, kept with "
                      "train.keep_best) or a checkpoint prefix of the run.")
  flags.DEFINE_bool("use_tpu", False, "Same as --strategy=tpu.")
  flags.DEFINE_string("tpu", None, "TPU name or grpc address.")
  flags.DEFINE_enum("strategy", "default", distribute.STRATEGIES,
                    "Distribution strategy; explicit wins over detection.")
  flags.DEFINE_bool("mixed_precision", False,
                    "bfloat16 compute on TPU/CPU, float16 with loss scaling "
                    "on GPU (float32 variables, logits and loss).")
  flags.DEFINE_bool("deterministic", False,
                    "Seeded randomness and deterministic ops; main.py also "
                    "saves the input position in checkpoints, so a resumed "
                    "run ends with the same weights as an uninterrupted "
                    "one (runtime.deterministic).")
  flags.DEFINE_integer("steps_per_loop", None,
                       "Train steps per device call (runtime.steps_per_loop).")
  flags.DEFINE_string("export_dir", None,
                      "Export a SavedModel (EMA weights) here at the end.")
  flags.DEFINE_bool("overwrite_export", False,
                    "Replace a non-empty --export_dir whole at the end of "
                    "the run (checked before the run starts).")
  flags.register_validator(
      "model", _known_model, message="unknown model (see --helpfull)")


def config_help():
  """Every config key with its default and help, by section (--help)."""
  return "\n".join(
      f"{section}.{setting.name} {setting.describe()}"
      for section, keys in base.SECTIONS.items() for setting in keys)


def _known_model(name):
  try:
    registry.get_model_spec(name)
  except ValueError as err:
    raise flags.ValidationError(str(err)) from None
  return True


def flag_given(values, flag, default=True):
  """Whether `flag` was on the command line (`default` for a plain
  namespace, which has no such record)."""
  try:
    return bool(values[flag].present)
  except (KeyError, TypeError, AttributeError):
    return default


def config_from_flags(values, model_dir):
  """The locked config from parsed flag values (`flags.FLAGS`)."""
  return draft_from_flags(values, model_dir).lock(values)


@dataclasses.dataclass
class Draft:
  """A command's config before it is locked: filled and checked, without
  the values that come from the data (`lock` sets them)."""
  config: ml_collections.ConfigDict
  run_config: Optional[dict]  # the run's config.json it continues
  origin: str                 # where run_config comes from

  def lock(self, values, source=None):
    """The locked config; with `source`, model.num_classes is its class
    count (printed when the config said otherwise) unless the command gave
    the key, which is then an error. A continued run's overrides are
    printed."""
    if source is not None:
      _set_class_count(values, self.config, source.num_classes)
    config = config_lib.freeze(self.config)
    if self.run_config is not None:
      changes = config_lib.changed_values(self.run_config, config)
      print(f"Config: {self.origin}" + (
          ", overridden: " + ", ".join(f"{k} {old!r} -> {new!r}"
                                       for k, old, new in changes)
          if changes else ""), flush=True)
    return config


def draft_from_flags(values, model_dir):
  """The `Draft` of a command.

  When `model_dir` holds a run (config.json), its config is the base: a
  rerun resumes and --mode=eval evaluates exactly what was trained, and
  only the flags and keys given now override it (each printed). So is the
  config.json beside --init_checkpoint for --mode=eval in a new
  `model_dir`.
  """
  origin = f"{model_dir}/config.json"
  run_config = run_dir.read_config(model_dir)
  if run_config is None and values.mode == "eval" and values.init_checkpoint:
    weights = published_weights(values)
    if weights:  # published weights: evaluated on their own recipe
      run_config = config_lib.build_config(
          model_name=weights.model, dataset_cfg=weights.dataset_cfg).to_dict()
      origin = f"recipe {weights.dataset_cfg} of {weights.name}"
    else:
      config_dir = _checkpoint_dir(values.init_checkpoint)
      run_config = config_dir and run_dir.read_config(config_dir)
      origin = f"{config_dir}/config.json"
  resuming = run_config is not None
  # The flags that set a config key, as typed values after --hparam_str.
  flag_values = {"runtime.steps_per_loop": values.steps_per_loop or None,
                 "runtime.mixed_precision": values.mixed_precision or None,
                 "runtime.deterministic": values.deterministic or None}
  config = config_lib.draft_config(
      model_name=model_name(values)
      if not resuming or flag_given(values, "model") else None,
      dataset_cfg=values.dataset_cfg
      if not resuming or flag_given(values, "dataset_cfg") else None,
      hparam_str=values.hparam_str, config_file=values.config_file,
      data_dir=values.data_dir, run_config=run_config,
      overrides={k: v for k, v in flag_values.items() if v is not None})
  return Draft(config, run_config or None, origin)


def published_weights(values):
  """The `pretrained.Pretrained` that --init_checkpoint names, or None (a
  path; an existing path wins over a tag of the same name)."""
  try:
    return pretrained.lookup(
        values.model if flag_given(values, "model") else None,
        values.init_checkpoint)
  except pretrained.PretrainedError as err:
    raise config_lib.ConfigError(f"--init_checkpoint: {err}") from None


def model_name(values):
  """--model, or the model of --init_checkpoint=MODEL:TAG without one."""
  if (not flag_given(values, "model") and values.init_checkpoint and
      ":" in values.init_checkpoint):
    weights = published_weights(values)
    if weights:
      return weights.model
  return values.model


def _checkpoint_dir(path):
  """The run directory of a checkpoint path, or None (a weights file, or
  nothing there: init_from says so later)."""
  try:
    return run_dir.run_of_checkpoint(run_dir.checkpoint_prefix(path))
  except FileNotFoundError:
    return None


def model_dir_from_flags(values):
  """--model_dir, or runs/<model>-<dataset_cfg>."""
  return values.model_dir or os.path.join(
      "runs", f"{registry.get_model_spec(model_name(values)).name}-"
      f"{values.dataset_cfg.lower()}")


def given_keys(values):
  """Config keys this command sets explicitly (--hparam_str, --config_file)."""
  keys = set(config_lib.parse_hparam_str(values.hparam_str))
  if values.config_file:
    keys |= {k for k, _ in config_lib.flatten(
        config_lib.load_config_file(values.config_file))}
  return keys


def _set_class_count(values, config, count):
  """model.num_classes = `count`, the data's (see `Draft.lock`)."""
  if count == config.model.num_classes:
    return
  if "model.num_classes" in given_keys(values):
    raise config_lib.ConfigError(
        f"model.num_classes={config.model.num_classes}, but the data "
        f"({config.data.dataset}) has {count} classes; drop the key to use "
        f"{count}.")
  print(f"model.num_classes: {count}, the data's class count (the "
        f"{config.data.dataset_cfg} config says {config.model.num_classes})",
        flush=True)
  config.model.num_classes = count
