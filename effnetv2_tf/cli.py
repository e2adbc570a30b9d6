"""absl flags shared by main.py and main_tf2.py, and the config they build."""

import os

from absl import flags

from configs import datasets
from effnetv2_tf.models import registry
from effnetv2_tf.training import config as config_lib
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
                      "progressive.max_cutmix=0.1'.")
  flags.DEFINE_string("config_file", None, "YAML/JSON file of overrides.")
  flags.DEFINE_string("model_dir", None,
                      "Checkpoints, config.json, summary.json, TensorBoard. "
                      "Default: runs/<model>-<dataset_cfg>.")
  flags.DEFINE_string("data_dir", None, "Dataset location.")
  flags.DEFINE_string("init_checkpoint", None,
                      "Initialise from a run directory, checkpoint, .h5 or "
                      ".keras file (finetune; the head is skipped when the "
                      "class count differs). With --mode=eval: the "
                      "checkpoint to evaluate instead of --model_dir's latest.")
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
  flags.register_validator(
      "model", _known_model, message="unknown model (see --helpfull)")


def _known_model(name):
  try:
    registry.get_model_spec(name)
  except ValueError as err:
    raise flags.ValidationError(str(err)) from None
  return True


def config_from_flags(values):
  """The locked config from parsed flag values (`flags.FLAGS`)."""
  hparams = values.hparam_str
  if values.steps_per_loop:
    hparams = ",".join(filter(None, [
        hparams, f"runtime.steps_per_loop={values.steps_per_loop}"]))
  for flag in ("mixed_precision", "deterministic"):
    if getattr(values, flag):
      hparams = ",".join(filter(None, [hparams, f"runtime.{flag}=true"]))
  return config_lib.build_config(
      model_name=values.model, dataset_cfg=values.dataset_cfg,
      hparam_str=hparams, config_file=values.config_file,
      data_dir=values.data_dir)


def model_dir_from_flags(values, config):
  return values.model_dir or os.path.join(
      "runs", f"{config.model.name}-{values.dataset_cfg.lower()}")
