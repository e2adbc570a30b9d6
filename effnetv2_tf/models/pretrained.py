"""Published weights by name: `create_model(name, weights="imagenet")`.

`TABLE` holds every (model, tag) that the reference (google/automl) or
keras.applications publishes for our variants, with its URL, file format,
hash where one is published, class count and the recipe (a dataset config
name) the weights were trained with, and the eval preprocessing row and
size it resolves to (`preprocessing_of`).

Tags:
  imagenet          ImageNet-1k: keras.applications' file (the reference's
                    checkpoint converted, with an md5 hash, so the download
                    is verified).
  imagenet21k       ImageNet-21k pretraining, 21,843 sigmoid outputs
                    (reference).
  imagenet21k-ft1k  21k pretraining finetuned on 1k (reference).
  jft               EfficientNet (V1) Noisy Student, JFT-300M + ImageNet
                    (reference `effnetv2_model.get_model`).

Downloads go through `keras.utils.get_file` (its progress bar) into the
Keras cache (`$KERAS_HOME/models`, as keras.applications' own files, so a
file keras already fetched is a cache hit), but never straight to the cached
name: a `.part-<pid>` file is hashed and then renamed, and an archive is
unpacked into a temporary folder that is renamed when complete, so an
interrupted download or unpack is never taken for a cached one. A set
`EFFNETV2_TF_WEIGHTS_URL` replaces every URL's folder with a mirror holding
the files under their published names (https://, file:// or gs://).
"""

import dataclasses
import glob
import hashlib
import os
import shutil
import tarfile
import time

from absl import logging
import keras
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf.data import preprocessing
from effnetv2_tf.data import tfrecord_format
from effnetv2_tf.models import registry

MIRROR_ENV = "EFFNETV2_TF_WEIGHTS_URL"
# A killed download's `.part-<pid>` file (or `.unpacking-<pid>` folder) is
# removed by the next download once its process is gone and it has not
# changed for this long (a download on another host of a shared cache keeps
# writing, so it is left alone).
STALE_AFTER_S = 600
TAGS = ("imagenet", "imagenet21k", "imagenet21k-ft1k", "jft")
KERAS = "keras.applications"
REFERENCE = "reference"

# keras/src/applications/efficientnet_v2.py and efficientnet.py
# (BASE_WEIGHTS_PATH, WEIGHTS_HASHES: md5 of `<name>.h5`).
_KERAS_V2_URL = ("https://storage.googleapis.com/tensorflow/"
                 "keras-applications/efficientnet_v2/")
_KERAS_V1_URL = "https://storage.googleapis.com/keras-applications/"
_KERAS_MD5 = {
    "efficientnetv2-b0": "21ecbf6da12460d5c40bb2f29ceb2188",
    "efficientnetv2-b1": "069f0534ff22adf035c89e2d9547a9dc",
    "efficientnetv2-b2": "424e49f28180edbde1e94797771950a7",
    "efficientnetv2-b3": "1f1fc43bd98a6e4fd8fdfd551e02c7a0",
    "efficientnetv2-s": "e1d88a8495beba45748fedd0cecbe016",
    "efficientnetv2-m": "a3bf6aa3276309f4fc6a34aa114c95cd",
    "efficientnetv2-l": "27e6d408b53c7ebc868fefa357689935",
    "efficientnet-b0": "902e53a9f72be733fc0bcb005b3ebbac",
    "efficientnet-b1": "1d254153d4ab51201f1646940f018540",
    "efficientnet-b2": "b15cce36ff4dcbd00b6dd88e7857a6ad",
    "efficientnet-b3": "ffd1fdc53d0ce67064dc6a9c7960ede0",
    "efficientnet-b4": "18c95ad55216b8f92d7e70b3a046e2fc",
    "efficientnet-b5": "ace28f2a6363774853a83a0b21b9421a",
    "efficientnet-b6": "165f6e37dce68623721b423839de8be5",
    "efficientnet-b7": "8c03f828fec3ef71311cd463b6759d99",
}
# Reference URLs: efficientnetv2/effnetv2_model.py `get_model` (and its
# README). For V1 'imagenet' that code points at the AdvProp checkpoints,
# trained on (x - 127.5) / 127.5 inputs, not the mean/std scaling of V1's
# recipe: they are listed as the alternative, not taken. keras.applications'
# V1 files are the AutoAugment checkpoints (keras-applications PR 113),
# which efficientdet/backbone/efficientnet_builder.py publishes as
# ckptsaug/; like every published V1 checkpoint they were trained with the
# original EfficientNet's channel rounding, which V1's registry rows use.
_REF = "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/"
_WHY_V2 = ("keras.applications' file: the reference's checkpoint converted, "
           "with a published md5 (a verified download)")
_WHY_V1 = ("keras.applications' file: the AutoAugment weights with a "
           "published md5; the reference's 'imagenet' are AdvProp weights, "
           "trained on (x - 127.5) / 127.5 inputs, not V1's mean/std")
_V2_NAMES = ("efficientnetv2-b0", "efficientnetv2-b1", "efficientnetv2-b2",
             "efficientnetv2-b3", "efficientnetv2-s", "efficientnetv2-m",
             "efficientnetv2-l", "efficientnetv2-xl")
_V1_NAMES = tuple(f"efficientnet-b{i}" for i in range(8))
_NUM_CLASSES = {"imagenet": 1000, "imagenet21k": 21843,
                "imagenet21k-ft1k": 1000, "jft": 1000}
# What each tag's weights were trained with: the dataset config
# (configs/datasets.py; `--mode=eval` of the weights builds it) and the
# eval preprocessing row and size that config resolves to (None: the
# model's own): 1k at the model's row and size, 21k on the v2 row at 224
# px, the 21k -> 1k finetune on the finetune row. Written here so models/
# reads no config; tests/test_pretrained.py checks them against the
# dataset configs.
_TRAINED_WITH = {  # tag: (dataset config, preprocessing row, eval size)
    "imagenet": ("imagenet", None, None),
    "imagenet21k": ("imagenet21k", "v2", 224),
    "imagenet21k-ft1k": ("imagenetft", "finetune", None),
    "jft": ("imagenet", None, None),
}

class PretrainedError(errors.UserError, ValueError):
  """An unknown or unpublished tag, or weights that cannot be fetched."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """One published set of weights."""
  model: str
  tag: str
  url: str
  file_format: str       # 'h5' (keras.applications) or 'tgz' (reference)
  md5: str | None        # published hash, or None (the reference has none)
  num_classes: int
  source: str            # KERAS or REFERENCE
  alternative: str = ""  # the other publisher's URL for this (model, tag)
  why: str = ""          # why the tag takes `url`, not `alternative`

  @property
  def dataset_cfg(self):
    """The configs.datasets name of the weights' training recipe."""
    return _TRAINED_WITH[self.tag][0]

  @property
  def name(self):
    return f"{self.model}:{self.tag}"

  @property
  def filename(self):
    return self.url.rsplit("/", 1)[-1]


def _entries():
  """Every published (model, tag), in registry order."""
  rows = []
  for model in _V2_NAMES:
    ref = {"imagenet": f"{_REF}v2/{model}.tgz",
           "imagenet21k": f"{_REF}v2/{model}-21k.tgz",
           "imagenet21k-ft1k": f"{_REF}v2/{model}-21k-ft1k.tgz"}
    if model == "efficientnetv2-xl":
      del ref["imagenet"]  # the reference trained XL on 21k only
    for tag, url in ref.items():
      if tag == "imagenet" and model in _KERAS_MD5:
        rows.append(Pretrained(model, tag, f"{_KERAS_V2_URL}{model}.h5", "h5",
                               _KERAS_MD5[model], 1000, KERAS,
                               alternative=url, why=_WHY_V2))
      else:
        rows.append(Pretrained(model, tag, url, "tgz", None,
                               _NUM_CLASSES[tag], REFERENCE))
  for model in _V1_NAMES:
    keras_name = model.replace("-", "")  # efficientnetb0
    rows.append(Pretrained(model, "imagenet", f"{_KERAS_V1_URL}"
                           f"{keras_name}.h5", "h5", _KERAS_MD5[model],
                           1000, KERAS,
                           alternative=f"{_REF}advprop/{model}.tar.gz",
                           why=_WHY_V1))
    rows.append(Pretrained(
        model, "jft", f"{_REF}noisystudent/noisy_student_{model}.tar.gz",
        "tgz", None, 1000, REFERENCE))
  return tuple(rows)


TABLE = _entries()


def tags_of(model_name):
  """The tags published for a model, in TAGS order."""
  return [e.tag for e in TABLE if e.model == model_name]


def is_tag(value):
  """Whether `value` has the form of a tag: 'TAG' or 'MODEL:TAG'."""
  return isinstance(value, str) and value.rsplit(":", 1)[-1] in TAGS


def get(model_name, value):
  """The entry of `value` ('TAG' or 'MODEL:TAG') for `model_name`.

  Args:
    model_name: a registered name (aliases allowed); None takes the model
      from 'MODEL:TAG'.
    value: a tag, or 'MODEL:TAG'.

  Raises:
    PretrainedError: one line naming the tags that model has.
  """
  model, _, tag = value.rpartition(":")
  if model:
    model = _model_name(model, value)
    if model_name and _model_name(model_name, value) != model:
      raise PretrainedError(
          f"Weights {value!r} are for {model}, not for "
          f"{_model_name(model_name, value)}.")
  if not (model or model_name):
    raise PretrainedError(f"Weights {value!r} need a model: give the model "
                          f"name, or MODEL:{tag}.")
  model = model or _model_name(model_name, value)
  for entry in TABLE:
    if entry.model == model and entry.tag == tag:
      return entry
  published = tags_of(model)
  raise PretrainedError(
      f"No published weights {tag!r} for {model}; it has: "
      f"{', '.join(published) if published else 'none'} (tags: "
      f"{', '.join(TAGS)}).")


def _model_name(name, value):
  try:
    return registry.get_model_spec(name).name
  except ValueError as err:
    raise PretrainedError(f"Weights {value!r}: {err}") from None


def lookup(model_name, weights):
  """The entry a weights argument names, or None for a path.

  An existing path is the path, also when it reads like a tag; a tag is
  looked up (PretrainedError if unpublished); anything else is a path for
  the loaders to judge.
  """
  path = os.fspath(weights)
  if not is_tag(path) or os.path.exists(path):
    return None
  return get(model_name, path)


def resolve(model_name, weights):
  """A weights argument as (local path, entry or None): `lookup`, with a
  tag's weights fetched, and the log saying when a path reads like a tag."""
  entry = lookup(model_name, weights)
  if entry:
    return fetch(entry), entry
  path = os.fspath(weights)
  if is_tag(path):
    logging.warning("Weights %r: an existing path, taken as the path, not "
                    "as the tag.", path)
  return path, None


# ---------------------------------------------------------------- recipe


def preprocessing_of(entry):
  """(preprocessing.Preprocessing, eval size) the weights were trained with."""
  spec = registry.get_model_spec(entry.model)
  _, row, eval_size = _TRAINED_WITH[entry.tag]
  return (preprocessing.get_row(row or spec.preprocessing),
          eval_size or spec.eval_size)

def describe(entry):
  """One line: name, classes, recipe, scaling, source and URL."""
  prep, size = preprocessing(entry)
  hash_note = f"md5 {entry.md5}" if entry.md5 else "no published hash"
  return (f"{entry.name:<35} {entry.num_classes:>6} classes  recipe "
          f"{entry.dataset_cfg:<11} {size:>3} px "
          f"{preprocessing.SCALING_FORMULAS[prep.input_scaling]:<22} "
          f"{entry.source:<18} {entry.url} ({hash_note})")


# The 1000 ImageNet-1k classes in label order (sorted wnids), each
# `wnid<TAB>name`: the names of ../shared/data/imagenet-samples/, one file
# per class, `<wnid>_<name>.JPEG` with '_' read as ' '.
IMAGENET_LABELS = os.path.join(os.path.dirname(tfrecord_format.__file__),
                               "imagenet_labels.txt")
NO_21K_NAMES = ("the reference publishes no ImageNet-21k class list, so "
                "classes are printed as indices")


def class_names(entry):
  """The readable class names of the weights' head, or None (21k)."""
  if entry.num_classes != 1000:
    return None
  return [name for _, name in tfrecord_format.read_labels_file(
      IMAGENET_LABELS)]


# ---------------------------------------------------------------- fetch


def cache_dirs():
  """Where weights are looked for, the last one written: keras.utils.
  get_file's `models` folder of `$KERAS_HOME` (default ~/.keras), and when
  that is not writable (a shared, read-only cache) then /tmp/.keras's too,
  as get_file does."""
  base = os.path.expanduser(os.environ.get("KERAS_HOME") or
                            os.path.join("~", ".keras"))
  folders = [os.path.join(base, "models")]
  if not os.access(base, os.W_OK):
    folders.append(os.path.join("/tmp", ".keras", "models"))
  return folders


def url_of(entry):
  """The entry's URL, or the mirror's (`EFFNETV2_TF_WEIGHTS_URL`)."""
  mirror = os.environ.get(MIRROR_ENV)
  return f"{mirror.rstrip('/')}/{entry.filename}" if mirror else entry.url


def cached_path(entry, folder=None):
  """The path `fetch` returns once cached: the h5 file, or the folder the
  archive is unpacked into (its name without .tgz/.tar.gz)."""
  folder = folder or cache_dirs()[-1]
  if entry.file_format == "h5":
    return os.path.join(folder, entry.filename)
  return os.path.join(folder, entry.filename.split(".")[0])


def fetch(entry):
  """Downloads (once) and returns the local weights path of `entry`.

  Returns:
    The .h5 file, or the checkpoint prefix inside the unpacked archive.

  Raises:
    PretrainedError: offline, or a file that fails its hash (removed); the
      line names the URL, the cache path and how to place the file by hand.
  """
  for folder in cache_dirs():
    hit = _cached(entry, cached_path(entry, folder))
    if hit:
      return hit
  target = cached_path(entry, folder)
  os.makedirs(folder, exist_ok=True)
  _remove_leftovers(entry, folder)
  url = url_of(entry)
  part = _download(entry, url, folder)
  try:
    if entry.md5:
      got = md5_of(part)
      if got != entry.md5:
        raise PretrainedError(
            f"{entry.name}: the file from {url} has md5 {got}, not the "
            f"published {entry.md5}; removed it. {_by_hand(entry, target)}")
      os.replace(part, target)
    else:
      _unpack(entry, part, target)
  finally:
    if os.path.exists(part):
      os.remove(part)
  print(f"Cached {entry.name} at {target}", flush=True)
  return target if entry.file_format == "h5" else _checkpoint_in(target)


def _cached(entry, target):
  """The usable path at `target`, or None (absent, or a bad hash)."""
  if entry.file_format == "h5":
    if not os.path.isfile(target):
      return None
    if entry.md5 and md5_of(target) != entry.md5:
      print(f"{entry.name}: {target} does not have the published md5 "
            f"{entry.md5}; downloading it again.", flush=True)
      return None
    return target
  return _checkpoint_in(target)


def _remove_leftovers(entry, folder):
  """Removes what killed downloads of `entry` left in `folder`."""
  stems = (f"{entry.filename}.part-",
           f"{os.path.basename(cached_path(entry, folder))}.unpacking-")
  for name in os.listdir(folder):
    stem = next((s for s in stems if name.startswith(s)), None)
    pid = name[len(stem):] if stem else ""
    path = os.path.join(folder, name)
    if not pid.isdigit() or _alive(int(pid)):
      continue
    try:
      if time.time() - os.path.getmtime(path) < STALE_AFTER_S:
        continue
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
    except OSError:  # another process removed it first
      continue
    logging.info("Removed %s, left by an interrupted download.", path)


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def _checkpoint_in(folder):
  """The checkpoint prefix below `folder` (the newest, if an archive holds
  several), or None."""
  indexes = glob.glob(os.path.join(glob.escape(folder), "**", "*.index"),
                      recursive=True)
  if not indexes:
    return None
  return max(indexes, key=os.path.getmtime)[:-len(".index")]


def _download(entry, url, folder):
  """The file at `url` under a per-process `.part` name in `folder`."""
  part_name = f"{entry.filename}.part-{os.getpid()}"
  part = os.path.join(folder, part_name)
  try:
    if url.startswith(("http://", "https://", "file://", "ftp://")):
      # get_file prints the URL and a progress bar.
      keras.utils.get_file(part_name, url, cache_dir=os.path.dirname(folder),
                           cache_subdir=os.path.basename(folder),
                           force_download=True)
    else:  # gs:// and the other file systems TensorFlow knows
      print(f"Copying {entry.name} from {url}", flush=True)
      tf.io.gfile.copy(url, part, overwrite=True)
  except Exception as err:  # pylint: disable=broad-except
    if os.path.exists(part):
      os.remove(part)
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    raise PretrainedError(
        f"{entry.name}: cannot download {url} ({reason}). "
        f"{_by_hand(entry, cached_path(entry, folder))}") from None
  if not os.path.isfile(part):
    raise PretrainedError(f"{entry.name}: {url} gave no file. "
                          f"{_by_hand(entry, cached_path(entry, folder))}")
  return part


def _by_hand(entry, target):
  where = (f"place {entry.filename} at {target}" if entry.file_format == "h5"
           else f"unpack {entry.filename} into {target}/")
  return (f"Offline? Download {entry.url} elsewhere and {where}, or set "
          f"{MIRROR_ENV} to a folder or URL that holds {entry.filename}.")


def _unpack(entry, archive, target):
  """Unpacks `archive` into `target` through a temporary folder."""
  tmp = f"{target}.unpacking-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    with tarfile.open(archive) as tar:
      if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
        tar.extractall(tmp, filter="data")  # no paths outside `tmp`
      else:
        for member in tar.getmembers():
          if (member.name.startswith("/") or member.issym() or
              member.islnk() or ".." in member.name.split("/")):
            raise tarfile.TarError(f"unsafe member {member.name!r}")
        tar.extractall(tmp)  # noqa: S202 (members checked above)
  except (tarfile.TarError, OSError, EOFError) as err:
    shutil.rmtree(tmp, ignore_errors=True)
    raise PretrainedError(
        f"{entry.name}: the file from {url_of(entry)} is not a readable "
        f"archive ({err}); removed it. {_by_hand(entry, target)}") from None
  if not _checkpoint_in(tmp):
    shutil.rmtree(tmp, ignore_errors=True)
    raise PretrainedError(
        f"{entry.name}: the archive from {url_of(entry)} holds no "
        f"TensorFlow checkpoint. {_by_hand(entry, target)}")
  shutil.rmtree(target, ignore_errors=True)
  os.replace(tmp, target)


def md5_of(path):
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()
