"""A run directory and what it says about its run.

  config.json    the resolved config and its format version
                 (`read_config`, `write_config`)
  summary.json   stages, loss history and evaluation (`read_summary`)
  labels.txt     class names, when the source has them
  ckpt-N.*       checkpoints (`checkpoint_prefix`)
  best/          with train.keep_best, the checkpoint of the best
                 evaluation so far (`best_prefix`, `--checkpoint=best`) and
                 best.json: its step, metric and score (`read_best`)

Export, infer.py and plot read runs through this module, so it imports no
training loop, step or optimizer.
"""

import json
import os
import shutil
import tempfile

import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf import fileio
from effnetv2_tf.data import preprocessing
from effnetv2_tf.models import model as model_lib
from effnetv2_tf.models import options
from effnetv2_tf.models import registry

CONFIG_FILENAME = "config.json"
# config.json's format, in its "format_version". 1: before the field
# existed (`_fill_format_1` adds the keys its older runs may lack); 2:
# data.name is data.dataset. Each format lists the keys it
# renamed, {old: new}, so an older run still resumes and evaluates; any
# other unknown key is an error.
FORMAT_KEY = "format_version"
CONFIG_FORMAT = 2
RENAMED_KEYS = {2: {"data.name": "data.dataset"}}
SUMMARY_FILENAME = "summary.json"
# The file name of a run's checkpoints: ckpt-<step>.
CHECKPOINT_NAME = "ckpt"
# --checkpoint's values besides a prefix: the run's latest checkpoint (the
# default), or its best one, which keep-best writes into the folder of that
# name with BEST_FILENAME beside it.
LATEST = "latest"
BEST = "best"
BEST_FILENAME = "best.json"


class RunDirError(errors.UserError, OSError):
  """A directory that cannot take a run's files; the message says why."""


def _nearest_existing(path):
  """`path` or its nearest ancestor that exists."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def check_writable(path, flag):
  """Makes sure `path` is (or can become) a directory this process can
  write, up front.

  A file in its place, or no permission to write, is a RunDirError naming
  `flag`. Nothing is created and nothing already there is touched: the
  probe is a uniquely named folder in `path` or, while `path` does not
  exist yet, in its nearest existing ancestor, removed again.
  """
  if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
    raise RunDirError(f"{flag} {path} is a file, not a directory.")
  if "://" in path:  # a bucket: only writing tells; its folders are names
    probe = os.path.join(path, f".write_probe_{os.getpid()}")
    try:
      with tf.io.gfile.GFile(probe, "w") as f:
        f.write("")
      tf.io.gfile.remove(probe)
    except tf.errors.OpError as err:
      raise RunDirError(f"{flag} {path} is not writable: {err.message}"
                        ) from None
    return
  parent = _nearest_existing(path)
  if not os.path.isdir(parent):
    raise RunDirError(f"{flag} {path} is not writable: {parent} is a file, "
                      "not a directory.")
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".write_probe_", dir=parent))
  except OSError as err:
    raise RunDirError(f"{flag} {path} is not writable: {err.strerror} "
                      f"({parent})") from None


def check_free_space(path, needed_bytes, flag, what):
  """RunDirError when the disk of `path` (local) has less than
  `needed_bytes` free for `what`; checked before the run writes it."""
  if "://" in path:
    return
  free = shutil.disk_usage(_nearest_existing(path)).free
  if free < needed_bytes:
    raise RunDirError(
        f"{flag} {path}: {_mib(free)} free on its disk, but {what} needs "
        f"{_mib(needed_bytes)}; free space or use another {flag}. Nothing "
        "was written.")


def _mib(num_bytes):
  return f"{num_bytes / 2**20:,.1f} MiB"


def read_config(model_dir):
  """config.json of `model_dir` as a dict in this code's format, or None."""
  path = os.path.join(model_dir, CONFIG_FILENAME)
  tree = fileio.read_json(path)
  return None if tree is None else upgrade_config(tree, path)


def _fill_format_1(tree):
  """Keys a format-1 run written before they existed lacks: data.dataset_cfg
  (the dataset's name) and preprocessing fields (its row's values)."""
  data = tree["data"]
  data.setdefault("dataset_cfg", data["dataset"])
  if not data.get("preprocessing"):
    data["preprocessing"] = registry.get_model_spec(
        tree["model"]["name"]).preprocessing
  row = preprocessing.get_row(data["preprocessing"])
  for name in preprocessing.FIELDS:
    if data.get(name) is None:
      data[name] = getattr(row, name)


def write_config(model_dir, tree):
  """Writes config.json (a nested dict of the config) with its format."""
  fileio.write_atomic(
      os.path.join(model_dir, CONFIG_FILENAME),
      json.dumps({FORMAT_KEY: CONFIG_FORMAT, **tree}, indent=2,
                 sort_keys=True))


_REPORTED = set()  # config.json files whose renames were printed


def upgrade_config(tree, where):
  """A config.json dict of any format in this code's (keys renamed, one
  line printed per file); RunDirError for a newer format."""
  tree = json.loads(json.dumps(tree))  # a copy
  version = tree.pop(FORMAT_KEY, 1)
  if version > CONFIG_FORMAT:
    raise RunDirError(
        f"{where}: config format {version} is newer than this code's "
        f"({CONFIG_FORMAT}); update effnetv2-tf to read it.")
  renamed = []
  for since, table in sorted(RENAMED_KEYS.items()):
    for old, new in table.items() if version < since else ():
      *parents, leaf = old.split(".")
      section = tree
      for part in parents:
        section = section.get(part, {})
      if leaf in section:
        *new_parents, new_leaf = new.split(".")
        target = tree
        for part in new_parents:
          target = target.setdefault(part, {})
        target[new_leaf] = section.pop(leaf)
        renamed.append(f"{old} -> {new}")
  if version < 2:
    _fill_format_1(tree)
  if renamed and where not in _REPORTED:
    _REPORTED.add(where)
    print(f"{where} (format {version}): renamed {', '.join(renamed)}",
          flush=True)
  return tree


def check_model_flag(model_name, run_config, source="the run"):
  """RunDirError unless --model `model_name` (None: not given) names the
  model of `run_config` (a run's config.json dict); `source` names where
  that config came from in the message."""
  if not model_name:
    return
  run_model = run_config["model"]["name"]
  try:
    given = registry.get_model_spec(model_name).name
  except ValueError as err:
    raise RunDirError(f"--model: {err}") from None
  if given != run_model:
    raise RunDirError(f"--model {model_name} differs from {source}'s model "
                      f"{run_model} (config.json); drop --model.")


def preprocessing_of(run_config):
  """The run's `preprocessing.Preprocessing` (`run_config`: a run's
  ConfigDict or its config.json dict)."""
  return preprocessing.from_config(run_config["data"])


# Keys of a run's `config.model` section that are create_model overrides;
# None there means the registry's value.
CONFIG_OVERRIDES = tuple(s.name for s in options.SETTINGS
                         if s.name in options.OVERRIDABLE)


def model_from_config(model_config, num_classes, dropout_rate=0.0,
                      bn_group_size=1):
  """The model of a run's `config.model` section (ConfigDict or dict).

  `dropout_rate` is the head's (progressive learning sets it per stage);
  `bn_group_size` the run's (`distribute.bn_group_size`).
  """
  return model_lib.create_model(
      model_config["name"], num_classes=num_classes,
      dropout_rate=dropout_rate, bn_group_size=bn_group_size,
      **model_overrides(model_config))


def model_overrides(model_config):
  """The create_model overrides a run's `config.model` section sets (its
  `CONFIG_OVERRIDES` that are not None), block strings as a tuple."""
  overrides = {key: model_config[key] for key in CONFIG_OVERRIDES
               if model_config.get(key) is not None}
  if "blocks" in overrides:  # space-separated block strings
    overrides["blocks"] = tuple(overrides["blocks"].split()) or None
  return overrides


def checkpoint_prefix(path, what="--init_checkpoint"):
  """The checkpoint `path` names: a prefix, or a directory's latest one."""
  if tf.io.gfile.isdir(path):
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
      raise errors.MissingInputError(f"{what} {path}: no checkpoint in "
                                     "this directory.")
    return prefix
  if tf.io.gfile.exists(path + ".index"):
    return path
  check_exists(path, what)
  raise errors.MissingInputError(f"{what} {path}: no checkpoint of that "
                                 "name (no .index file).")


def run_of_checkpoint(prefix):
  """The run directory of a checkpoint prefix: its folder, or the folder
  above for a run's best/ checkpoint (config.json and labels.txt are
  there)."""
  directory = os.path.dirname(prefix)
  if (os.path.basename(directory) == BEST and
      read_config(directory) is None):
    return os.path.dirname(directory)
  return directory


def read_best(model_dir):
  """best/best.json of `model_dir` as a dict (step, metric, score and the
  checkpoint's name in best/), or None."""
  return fileio.read_json(os.path.join(model_dir, BEST, BEST_FILENAME))


def best_prefix(model_dir):
  """The prefix of `model_dir`'s best checkpoint; MissingInputError (one
  line) when it has none."""
  record = read_best(model_dir)
  if record is None:
    raise errors.MissingInputError(
        f"--checkpoint={BEST}: {model_dir} has no {BEST}/ checkpoint (train "
        "with train.keep_best=true and an eval cadence or "
        "--mode=train_and_eval).")
  return checkpoint_prefix(
      os.path.join(model_dir, BEST, record["checkpoint"]),
      f"--checkpoint={BEST}")


def checkpoint_of(model_dir, name):
  """The checkpoint prefix --checkpoint `name` picks in run `model_dir`:
  latest (None: the latest one), best (`best_prefix`) or a prefix, or a
  directory's latest one (`checkpoint_prefix`)."""
  if name not in (None, LATEST, BEST):
    return checkpoint_prefix(name, "--checkpoint")
  if not model_dir:
    raise errors.MissingInputError(
        f"--checkpoint={name} needs --model_dir: the run whose checkpoint "
        "to read.")
  if name == BEST:
    check_exists(model_dir, "--model_dir")
    return best_prefix(model_dir)
  return checkpoint_prefix(model_dir, "--model_dir")


def check_exists(path, what="--init_checkpoint"):
  """MissingInputError "WHAT PATH does not exist." unless `path` is a file,
  a directory or a checkpoint prefix."""
  if not (tf.io.gfile.exists(path) or tf.io.gfile.exists(path + ".index")):
    raise errors.MissingInputError(f"{what} {path} does not exist.")


def read_summary(model_dir):
  """summary.json of `model_dir` as a dict, or None."""
  return fileio.read_json(os.path.join(model_dir, SUMMARY_FILENAME))


def write_summary(model_dir, summary):
  fileio.write_atomic(os.path.join(model_dir, SUMMARY_FILENAME),
                      json.dumps(summary, indent=2))
