"""Dataset sources behind one interface (ImageNet/21k TFRecords, TFDS, folders, digits).

Each source yields examples {'encoded': image bytes} or {'image': uint8
[H, W, 3]}, plus 'label': a float32 target vector of `num_classes` (one-hot,
or for ImageNet-21k a multi-hot vector normalised to sum to 1, paper section
5.2). Split sizes come from the data (dataset_info.json, TFDS info, or
counting). `from_config` builds the source a run config names, from the
`FROM_CONFIG` table.
"""

import collections
import dataclasses
import os
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf import settings
from effnetv2_tf.data import tfrecord_format
from effnetv2_tf.settings import Setting

# What tf.io.decode_image, the pipeline's decoder, reads (TF 2.21: JPEG, PNG,
# GIF, BMP, WebP); other files in a folder are counted and named by extension.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
IMAGE_FORMATS = "JPEG, PNG, GIF, BMP or WebP"
IMAGE_PATTERNS = ", ".join(f"*{e}" for e in IMAGE_EXTENSIONS) + " (any case)"
# A folder root of split folders: train/ (required), validation/ or val/
# (the 'validation' split), test/ (the 'test' split), each of class folders.
TRAIN_FOLDER = "train"
VALIDATION_FOLDERS = ("validation", "val")
TEST_FOLDER = "test"
SPLIT_FOLDERS = (TRAIN_FOLDER,) + VALIDATION_FOLDERS + (TEST_FOLDER,)
# Folder names that look like splits but are not read as such: a root with
# one is an error naming SPLIT_FOLDERS (as classes they would train a
# "training" vs "valid" classifier).
SPLIT_LOOKALIKES = ("training", "valid", "validate", "testing", "eval",
                    "evaluation")
# Folders up to this many images are decoded once before training, so an
# unreadable file is named (and left out) up front.
MAX_CHECKED_FILES = 50_000
DIGITS_EVAL_EVERY = 5  # digits example i is held out when i % 5 == 0


class DataNotFoundError(errors.MissingInputError):
  """Raised, with a message saying where we looked, when data is missing."""


class DataError(errors.UserError, ValueError):
  """The data cannot be read as configured (an unknown TFDS name, a split
  or layout that does not fit); the message says why."""


@dataclasses.dataclass
class Source:
  """A dataset: how to read a split, its class count and split sizes."""
  name: str
  num_classes: int
  split_sizes: Dict[str, int]
  multi_label: bool = False
  class_names: tuple = ()  # readable names in label order, when known
  split_rule: str = ""  # how the splits were made, when the source chose
  notes: tuple = ()  # lines to print after describe(): what was left out

  def describe(self):
    """One line: classes and split sizes (printed before training)."""
    sizes = ", ".join(f"{k} {v}" for k, v in self.split_sizes.items())
    return (f"Data: {self.name}, {self.num_classes} classes, {sizes}"
            + (f" ({self.split_rule})" if self.split_rule else ""))

  def read(self, split, input_context=None, shuffle_files_seed=None):
    raise NotImplementedError

  def drop_unreadable(self):
    """Removes images that do not decode; returns their names.

    Only sources small enough to check up front do (folders); the others
    return () and the pipelines skip and count such images as they meet
    them.
    """
    return ()

  def num_examples(self, split):
    if split not in self.split_sizes:
      raise DataError(
          f"{self.name}: no size known for split {split!r}; known: "
          f"{sorted(self.split_sizes)}. Give it as data.train_examples (the "
          "training split) or data.eval_examples (data.eval_split).")
    return self.split_sizes[split]


def _shard(ds, input_context):
  if input_context and input_context.num_input_pipelines > 1:
    ds = ds.shard(input_context.num_input_pipelines,
                  input_context.input_pipeline_id)
  return ds


def _one_hot(label, num_classes):
  return tf.one_hot(tf.cast(label, tf.int32), num_classes, dtype=tf.float32)


# ---------------------------------------------------------------- TFRecords
def _parse_record(record, filename, num_classes, multi_label, label_offset):
  """Parses our/ImageNet format and the reference 21k format in one pass."""
  spec = {
      **tfrecord_format.image_spec(),
      tfrecord_format.LABEL_KEY: tf.io.VarLenFeature(tf.int64),
      "labels": tf.io.VarLenFeature(tf.int64),
  }
  parsed = tf.io.parse_single_example(record, spec)
  ours = tf.sparse.to_dense(parsed[tfrecord_format.LABEL_KEY]) - label_offset
  reference = tf.sparse.to_dense(parsed["labels"])  # 0-based already
  labels = tf.cond(tf.size(ours) > 0, lambda: ours, lambda: reference)
  encoded = tfrecord_format.image_bytes(parsed)
  labels = tf.cast(labels, tf.int32)
  in_range = tf.logical_and(
      tf.size(labels) > 0,
      tf.reduce_all((labels >= 0) & (labels < num_classes)))
  check = tf.debugging.Assert(in_range, [
      "Label out of range [0, num_classes) (or missing) in file", filename,
      "labels (0-based):", labels, "num_classes:", num_classes], summarize=8)
  with tf.control_dependencies([check]):
    if multi_label:
      hot = tf.reduce_max(tf.one_hot(labels, num_classes), axis=0)
      target = hot / tf.reduce_sum(hot)
    else:
      target = _one_hot(labels[0], num_classes)
  return {"encoded": encoded, "label": target}


@dataclasses.dataclass
class TFRecordSource(Source):
  """ImageNet-format TFRecords (`train-*`, `validation-*`) under data_dir.

  For ImageNet-21k without validation files, 'validation' is the first
  `eval_files` training files (reference: 16). Then, with `minival_files`
  > 0, the next files form the 'minival' split and 'train' reads the rest
  (reference datasets.py: ImageNet minival files 0-19 and train 20 onward,
  1,256,144 images; 21k eval 0-15, minival 16-19, train 20 onward).
  """
  data_dir: str = ""
  files: Dict[str, list] = dataclasses.field(default_factory=dict)
  label_offset: int = tfrecord_format.LABEL_OFFSET

  def read(self, split, input_context=None, shuffle_files_seed=None):
    files = self.files.get(split)
    if not files:
      raise DataError(f"{self.name}: unknown split {split!r}; known: "
                       f"{sorted(self.files)}.")
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = _shard(ds, input_context)
    if shuffle_files_seed is not None:
      ds = ds.shuffle(len(files), seed=shuffle_files_seed)
    num_classes, multi, offset = (self.num_classes, self.multi_label,
                                  self.label_offset)

    def read_file(filename):
      records = tf.data.TFRecordDataset(filename, buffer_size=8 << 20)
      return records.map(
          lambda r: _parse_record(r, filename, num_classes, multi, offset))

    return ds.interleave(read_file, cycle_length=min(16, len(files)),
                         num_parallel_calls=tf.data.AUTOTUNE,
                         deterministic=shuffle_files_seed is not None)


def _glob(data_dir, pattern):
  return sorted(tf.io.gfile.glob(os.path.join(data_dir, pattern)))


def _count_records(files):
  return sum(1 for f in files for _ in tf.data.TFRecordDataset(f))


def tfrecord_source(name, data_dir, num_classes, multi_label=False,
                    minival_files=0, eval_files=16, split_sizes=None):
  """Finds the files and split sizes of an ImageNet-format TFRecord set.

  The class count is dataset_info.json's when it has one, else
  `num_classes`.
  """
  if not data_dir:
    raise DataNotFoundError(f"{name}: --data_dir is required for TFRecords.")
  train = _glob(data_dir, "train-*")
  validation = _glob(data_dir, "validation-*")
  if not train and not validation:
    raise DataNotFoundError(
        f"{name}: no files match {os.path.join(data_dir, 'train-*')} or "
        "validation-*. Make them with "
        "`python -m effnetv2_tf.data.make_tfrecords`.")
  if not train:  # validation files alone serve --mode=eval
    files = {"validation": validation}
    return _tfrecord_source(name, data_dir, num_classes, multi_label, files,
                            split_sizes)
  files = {"train": train, "validation": validation}
  if multi_label and not validation:
    if len(train) <= eval_files:
      raise DataError(f"{name}: {len(train)} train files cannot hold out "
                       f"{eval_files} for evaluation.")
    files = {"train": train[eval_files:], "validation": train[:eval_files]}
  if minival_files:
    if minival_files >= len(files["train"]):
      raise DataError(
          f"{name}: holding out data.minival_files={minival_files} files "
          f"for 'minival' leaves none of the {len(files['train'])} training "
          "files; set data.minival_files=0 to train on all of them.")
    files["minival"] = files["train"][:minival_files]
    files["train"] = files["train"][minival_files:]
  if not files["validation"]:
    del files["validation"]
  return _tfrecord_source(name, data_dir, num_classes, multi_label, files,
                          split_sizes)


def _tfrecord_source(name, data_dir, num_classes, multi_label, files,
                     split_sizes):
  sizes = _tfrecord_split_sizes(data_dir, files)
  sizes.update(split_sizes or {})
  # Our converter records the class count; the reference's files do not.
  num_classes = tfrecord_format.read_info(data_dir).get(
      "num_classes", num_classes)
  labels = tfrecord_format.read_labels(data_dir) or []
  if len(labels) != num_classes:  # e.g. a subset's labels.txt
    labels = []
  return TFRecordSource(name=name, num_classes=num_classes, split_sizes=sizes,
                        multi_label=multi_label, data_dir=data_dir,
                        files=files,
                        class_names=tuple(readable for _, readable in labels))


def _tfrecord_split_sizes(data_dir, files):
  """Sizes from dataset_info.json where it covers the split, else counted."""
  info = tfrecord_format.read_info(data_dir)
  shard_counts = info.get("shards", {})
  splits = info.get("splits", {})
  sizes = {}
  for split, split_files in files.items():
    names = [os.path.basename(f) for f in split_files]
    if all(n in shard_counts for n in names):
      sizes[split] = sum(shard_counts[n] for n in names)
    elif split in splits and len(split_files) == len(_glob(
        data_dir, f"{split}-*")):
      sizes[split] = splits[split]
    else:
      sizes[split] = _count_records(split_files)
  return sizes


# --------------------------------------------------------------------- TFDS
TFDS_EVAL_SPLITS = {"cifar10": "test", "cifar100": "test",
                    "oxford_flowers102": "test", "cars196": "test",
                    "imagenet2012": "validation"}


@dataclasses.dataclass
class TFDSSource(Source):
  """A TFDS dataset read from data_dir without downloading."""
  tfds_name: str = ""
  data_dir: Optional[str] = None
  split_names: Dict[str, str] = dataclasses.field(default_factory=dict)

  def read(self, split, input_context=None, shuffle_files_seed=None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    read_config = tfds.ReadConfig(input_context=input_context,
                                  shuffle_seed=shuffle_files_seed)
    ds = tfds.load(self.tfds_name, split=self.split_names.get(split, split),
                   data_dir=self.data_dir, download=False,
                   shuffle_files=shuffle_files_seed is not None,
                   read_config=read_config)
    num_classes = self.num_classes

    def convert(ex):
      image = ex["image"]
      if image.shape[-1] == 1:  # e.g. MNIST-like sets
        image = tf.image.grayscale_to_rgb(image)
      return {"image": image, "label": _one_hot(ex["label"], num_classes)}

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def _tfds_prepared(builder):
  """Whether the builder's files are on disk (tests patch this with mocks)."""
  return tf.io.gfile.exists(os.path.join(builder.data_dir,
                                         "dataset_info.json"))


def tfds_source(tfds_name, data_dir=None, split_sizes=None,
                train_split="train"):
  """Checks a prepared TFDS dataset exists, failing fast with a clear fix.

  `train_split` is the TFDS split (or split expression, e.g.
  'train+validation') that 'train' reads.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except Exception as e:  # tfds raises its own DatasetNotFoundError
    raise DataError(f"Unknown TFDS dataset {tfds_name!r}: {e}") from None
  # tfds.load(download=False) would fail too, but only when first iterated;
  # check now, and never let TFDS reach for the network.
  if not _tfds_prepared(builder):
    raise DataNotFoundError(
        f"TFDS dataset {tfds_name} is not prepared: looked in "
        f"{builder.data_dir}. Prepare it on a machine with internet "
        f"(`tfds build {tfds_name} --data_dir=DIR`, or for imagenet2012 put "
        "the ILSVRC tar files in DIR/downloads/manual first) and pass "
        "--data_dir=DIR.")
  num_classes = builder.info.features["label"].num_classes
  eval_split = TFDS_EVAL_SPLITS.get(tfds_name, "test")
  split_names = {"train": train_split, "validation": eval_split}
  sizes = {}
  for ours, theirs in split_names.items():
    parts = theirs.split("+")  # 'train+validation': the sum of both
    if all(part in builder.info.splits for part in parts):
      sizes[ours] = sum(builder.info.splits[part].num_examples
                        for part in parts)
  sizes.update(split_sizes or {})
  return TFDSSource(name=tfds_name, num_classes=num_classes,
                    class_names=tuple(builder.info.features["label"].names),
                    split_sizes=sizes, tfds_name=tfds_name,
                    data_dir=data_dir, split_names=split_names)


# ------------------------------------------------------------ image folders
def _by_extension(counts):
  """'.tiff 2, .txt 1': a Counter of extensions, most common first."""
  return ", ".join(f"{ext} {n}" for ext, n in sorted(
      counts.items(), key=lambda item: (-item[1], item[0])))


def list_images(folder, recursive=True, _seen=None):
  """The images under `folder`, its sub-folders included, and the rest.

  Hidden files and folders (.DS_Store, .ipynb_checkpoints) are neither;
  with `recursive` False, sub-folders are not read.

  Returns:
    (image paths, each folder's files and sub-folders in name order;
    collections.Counter of the other files' extensions, lower case).
  """
  seen = set() if _seen is None else _seen
  seen.add(os.path.realpath(folder))  # a folder linked to twice: once
  images, others = [], collections.Counter()
  for entry in sorted(tf.io.gfile.listdir(folder)):
    name = entry.rstrip("/")  # GCS marks folders with a trailing /
    path = os.path.join(folder, name)
    if name.startswith("."):
      continue
    if name.lower().endswith(IMAGE_EXTENSIONS) and not entry.endswith("/"):
      images.append(path)
    elif entry.endswith("/") or tf.io.gfile.isdir(path):
      if recursive and os.path.realpath(path) not in seen:
        more, more_others = list_images(path, True, seen)
        images += more
        others.update(more_others)
    else:
      others[os.path.splitext(name)[1].lower() or "(no extension)"] += 1
  return images, others


def class_folders(root):
  """The sub-folder names of `root`, sorted; hidden ones are not classes."""
  names = [d.rstrip("/") for d in tf.io.gfile.listdir(root)]
  return sorted(d for d in names if not d.startswith(".")
                and tf.io.gfile.isdir(os.path.join(root, d)))


@dataclasses.dataclass
class FolderListing:
  """The images of root/<class>/: classes sorted, labels their indices."""
  root: str
  classes: list
  files: list = dataclasses.field(default_factory=list)
  labels: list = dataclasses.field(default_factory=list)
  nested: list = dataclasses.field(default_factory=list)  # in sub-folders
  empty: list = dataclasses.field(default_factory=list)  # class folders
  others: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)  # non-image files' extensions

  def notes(self, where):
    """Lines naming what the listing left out or read from sub-folders."""
    notes = []
    count = sum(self.others.values())
    if count:
      notes.append(
          f"Skipped {count} file{'s' if count > 1 else ''} under {where} "
          f"that {'are' if count > 1 else 'is'} not {IMAGE_PATTERNS}: "
          f"{_by_extension(self.others)}")
    if self.nested:
      notes.append(
          f"Read {len(self.nested)} image{'s' if len(self.nested) > 1 else ''}"
          f" in sub-folders of class folders (e.g. "
          f"{os.path.dirname(self.nested[0])}/) as the class of the class "
          "folder above them")
    return notes


def list_classes(root):
  """Lists root/<class>/; an image in a sub-folder of a class folder is of
  that class (as keras' image_dataset_from_directory reads folders)."""
  listing = FolderListing(root, class_folders(root))
  for label, name in enumerate(listing.classes):
    class_dir = os.path.join(root, name)
    images, others = list_images(class_dir)
    listing.files += images
    listing.labels += [label] * len(images)
    listing.nested += [f for f in images if os.path.dirname(f) != class_dir]
    listing.others.update(others)
    if not images:
      listing.empty.append(class_dir)
  return listing


def split_folders(root):
  """The split folders `root` holds, e.g. {'train': 'train', 'validation':
  'val', 'test': 'test'}; {} when it holds class folders.

  Raises DataError when folders named like splits (training/, valid/, a
  train/ beside class folders) form neither layout.
  """
  names = class_folders(root)
  if not any(n.lower() in SPLIT_FOLDERS + SPLIT_LOOKALIKES for n in names):
    return {}
  validation = [n for n in VALIDATION_FOLDERS if n in names]
  if (TRAIN_FOLDER in names and set(names) <= set(SPLIT_FOLDERS)
      and len(validation) <= 1):
    splits = {"train": TRAIN_FOLDER,
              "validation": validation[0] if validation else None,
              "test": TEST_FOLDER if TEST_FOLDER in names else None}
    return {k: v for k, v in splits.items() if v}
  either = " or ".join(f"{n}/" for n in VALIDATION_FOLDERS)
  raise DataError(
      f"{root} holds {errors.first_few([n + '/' for n in names], 8)}: a "
      "folder of images holds either class folders alone, or the split folders "
      f"{TRAIN_FOLDER}/, then {either} and {TEST_FOLDER}/ if wanted, each "
      "of the same class folders; rename or move the folders to fit one.")


def _check_no_empty(listing):
  if listing.files and listing.empty:  # (no image at all: the callers')
    many = len(listing.empty) > 1
    raise DataError(
        f"Class folder{'s' if many else ''} "
        f"{errors.first_few(listing.empty, 5)} "
        f"hold{'' if many else 's'} no image ({IMAGE_PATTERNS}): add "
        "images or remove the folder.")


def _unlike(listing, train):
  """How the split folder `listing` differs from the training classes
  `train`, or '' when its classes are theirs."""
  missing = [c for c in train.classes if c not in listing.classes]
  extra = [c for c in listing.classes if c not in train.classes]
  if missing:
    return (f"lacks the class folder(s) {errors.first_few(missing, 5)} of "
            f"{train.root}")
  if extra:
    return (f"has class folder(s) {errors.first_few(extra, 5)} that "
            f"{train.root} lacks")
  if not listing.files:
    return "holds no images"
  if listing.empty:
    return ("has class folder(s) without images: "
            f"{errors.first_few(listing.empty, 5)}")
  return ""


def jpeg_cut_in_header(encoded):
  """Whether image bytes start as a JPEG but end before its image data (no
  start-of-scan marker FF DA): a file cut off in its header.

  libjpeg answers such a file with "Improper call to JPEG library in state
  201" on stderr, naming no file; checked first, it is named instead.
  """
  data = tf.io.decode_raw(encoded, tf.uint8)
  has_scan = tf.reduce_any((data[:-1] == 0xFF) & (data[1:] == 0xDA))
  return tf.logical_and(tf.io.is_jpeg(encoded), tf.logical_not(has_scan))


@dataclasses.dataclass
class FolderSource(Source):
  """`root/<class>/` images (IMAGE_EXTENSIONS, sub-folders included);
  classes sorted by name.

  With split folders (`root/train/`, `validation/` or `val/`, `test/`)
  those are the 'train', 'validation' and 'test' splits; without a
  validation folder every 10th image of each class is held out for
  validation.
  """
  root: str = ""
  examples: Dict[str, tuple] = dataclasses.field(default_factory=dict)

  def read(self, split, input_context=None, shuffle_files_seed=None):
    files, labels = self.examples[split]
    ds = tf.data.Dataset.from_tensor_slices((list(files), list(labels)))
    ds = _shard(ds, input_context)
    if shuffle_files_seed is not None:
      ds = ds.shuffle(len(files), seed=shuffle_files_seed)
    num_classes = self.num_classes
    return ds.map(lambda f, y: {
        "encoded": tf.io.read_file(f), "label": _one_hot(y, num_classes)},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def drop_unreadable(self, max_files=MAX_CHECKED_FILES):
    """Decodes every image once (up to `max_files`), drops and returns the
    ones that fail, so the split sizes are the readable images'.

    A JPEG cut off in its header fails before it reaches libjpeg (see
    `jpeg_cut_in_header`).
    """
    files = [f for split_files, _ in self.examples.values()
             for f in split_files]
    if len(files) > max_files:
      return ()

    def decodes(index, path):
      encoded = tf.io.read_file(path)
      # Decoded only when not cut: a failed decode is an error, which
      # ignore_errors drops with its index.
      decoded = tf.cond(jpeg_cut_in_header(encoded), lambda: False,
                        lambda: tf.size(tf.io.decode_image(
                            encoded, channels=3,
                            expand_animations=False)) > 0)
      return index, decoded

    checked = tf.data.Dataset.from_tensor_slices(files).enumerate().map(
        decodes, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False).ignore_errors()
    readable = {int(i) for i, ok in checked.as_numpy_iterator() if ok}
    bad = {f for i, f in enumerate(files) if i not in readable}
    for split, (split_files, labels) in self.examples.items():
      kept = [(f, y) for f, y in zip(split_files, labels) if f not in bad]
      self.examples[split] = ([f for f, _ in kept], [y for _, y in kept])
      self.split_sizes[split] = len(kept)
    return sorted(bad)


def _hold_out(files, labels, eval_every):
  """(train files, labels), (validation files, labels): every
  `eval_every`th image held out."""
  train, held = ([], []), ([], [])
  for i, (path, label) in enumerate(zip(files, labels)):
    part = held if i % eval_every == eval_every - 1 else train
    part[0].append(path)
    part[1].append(label)
  return train, held


def _no_images(listing):
  found = (f"; it holds only {_by_extension(listing.others)}"
           if listing.others else "")
  return DataNotFoundError(f"No images ({IMAGE_PATTERNS}) found under "
                           f"{listing.root}/<class>/{found}.")


def check_not_one_folder_too_high(listing, flag="--data_dir"):
  """Raises DataError for one class folder whose images all lie in its
  sub-folders: the classes are likely those (`flag` one folder too high)."""
  if (len(listing.classes) == 1 and listing.files
      and len(listing.nested) == len(listing.files)):
    only = os.path.join(listing.root, listing.classes[0])
    subs = errors.first_few([f"{n}/" for n in class_folders(only)], 5)
    raise DataError(
        f"{listing.root} holds one class folder, {listing.classes[0]}/, "
        f"whose images all lie in its sub-folders ({subs}); if those are "
        f"the classes, give {flag}={only}.")


def folder_source(root, eval_every=10):
  """Builds a FolderSource, failing clearly on a missing or empty root.

  `root/train/` (alone, or with `validation/` or `val/`, and `test/`)
  holds the training classes; without a validation folder, or with no
  split folders at all (`root/<class>/`), every `eval_every`th image is
  held out. A `test/` of the training classes is the 'test' split.
  """
  if not root or not tf.io.gfile.isdir(root):
    raise DataNotFoundError(f"Image folder {root!r} does not exist.")
  splits = split_folders(root)
  image_root = os.path.join(root, TRAIN_FOLDER) if splits else root
  train = list_classes(image_root)
  if not train.files:
    raise _no_images(train)
  _check_no_empty(train)
  if not splits:
    check_not_one_folder_too_high(train)
  listings = [train]
  if "validation" in splits:
    val_dir = os.path.join(root, splits["validation"])
    val = list_classes(val_dir)
    _check_no_empty(val)
    unlike = _unlike(val, train)
    if unlike:
      raise DataError(
          f"{val_dir} {unlike}; make its class folders those of "
          f"{image_root}, or remove {val_dir} to hold out every "
          f"{eval_every}th training image.")
    listings.append(val)
    examples = {"train": (train.files, train.labels),
                "validation": (val.files, val.labels)}
    split_rule = f"{image_root} and {val_dir}"
  else:
    held_in, held_out = _hold_out(train.files, train.labels, eval_every)
    examples = {"train": held_in, "validation": held_out}
    split_rule = ((f"{image_root}, " if splits else "") +
                  f"every {eval_every}th image held out for validation; give "
                  "train/ and validation/ folders to choose")
  if "test" in splits:
    test_dir = os.path.join(root, splits["test"])
    test = list_classes(test_dir)
    unlike = _unlike(test, train)
    if unlike:
      split_rule += f"; {test_dir} not used: it {unlike}"
    else:
      listings.append(test)
      examples["test"] = (test.files, test.labels)
      split_rule += (f"; {test_dir} is split 'test', evaluated with "
                     "data.eval_split=test")
  merged = FolderListing(root, train.classes, nested=[
      f for listing in listings for f in listing.nested])
  for listing in listings:
    merged.others.update(listing.others)
  return FolderSource(
      name="folder", num_classes=len(train.classes),
      split_sizes={k: len(v[0]) for k, v in examples.items()}, root=root,
      class_names=tuple(train.classes), examples=examples,
      split_rule=split_rule, notes=tuple(merged.notes(root)))


# ------------------------------------------------------------------- digits
@dataclasses.dataclass
class DigitsSource(Source):
  """scikit-learn's 1797 real 8x8 handwritten digits, upscaled to 32 px.

  Fixed split: example i (in load_digits order) is held out for validation
  when i % 5 == 0 (360 images), the other 1437 train.
  """
  arrays: Dict[str, tuple] = dataclasses.field(default_factory=dict)

  def read(self, split, input_context=None, shuffle_files_seed=None):
    images, labels = self.arrays[split]
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = _shard(ds, input_context)
    return ds.map(lambda x, y: {"image": x, "label": _one_hot(y, 10)})


def digits_source(upscale=4, minival_every=0):
  """The digits; with `minival_every` > 0 every such training digit (in
  load_digits order) forms the 'minival' split instead."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  # 0..16 ink values -> 0..255, nearest-neighbour upscale, gray -> RGB.
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
  images = np.repeat(images[..., None], 3, axis=-1)
  held = np.arange(len(images)) % DIGITS_EVAL_EVERY == 0
  arrays = {"train": (images[~held], digits.target[~held]),
            "validation": (images[held], digits.target[held])}
  if minival_every:
    train_images, train_labels = arrays["train"]
    mini = np.arange(len(train_labels)) % minival_every == 0
    arrays["train"] = (train_images[~mini], train_labels[~mini])
    arrays["minival"] = (train_images[mini], train_labels[mini])
  return DigitsSource(
      name="digits", num_classes=10, class_names=tuple("0123456789"),
      split_sizes={k: len(v[1]) for k, v in arrays.items()}, arrays=arrays)


# ------------------------------------------------------- by config name
# `data.source` -> the source built from a config's `data` section and the
# model's class count; config.py's list of valid names is this table's keys.
FROM_CONFIG = {
    "tfrecord": lambda data, num_classes: tfrecord_source(
        data.dataset, data.data_dir, num_classes, multi_label=data.multi_label,
        minival_files=data.minival_files, eval_files=data.eval_files),
    "tfds": lambda data, _: tfds_source(
        data.tfds_name, data.data_dir, train_split=data.tfds_train_split),
    "folder": lambda data, _: folder_source(data.data_dir),
    "digits": lambda data, _: digits_source(
        minival_every=data.minival_every),
}
# Sources read from `data.data_dir`, which they need.
NEEDS_DATA_DIR = ("tfrecord", "folder")

# The config's dataset keys (`data` section).
SETTINGS = (
    Setting("dataset", "imagenet", str, "the dataset (its TFRecord files' "
            "name, summaries); data.dataset_cfg names the config"),
    Setting("dataset_cfg", "imagenet", str,
            "the --dataset_cfg this config was built on"),
    Setting("source", "tfrecord", str, "where examples come from",
            choices=tuple(FROM_CONFIG)),
    Setting("tfds_name", "", str, "the TFDS dataset of source tfds"),
    Setting("tfds_train_split", "train", str,
            "the TFDS split (expression) that trains"),
    Setting("data_dir", None, str, "the dataset's location (--data_dir)",
            fills="unset"),
    Setting("multi_label", False, bool,
            "multi-hot targets, sigmoid loss (ImageNet-21k)"),
    # Reference datasets.py: ImageNet trains on train files 20 onward
    # (1,256,144 images), 0-19 are 'minival'; 21k without validation
    # files: files 0-15 are the eval split (eval_files), then
    # minival_files more are 'minival'.
    Setting("minival_files", 20, int, "train files held out as 'minival' "
            "(0: train on all, the reference's 'trainval')",
            **settings.at_least(0)),
    Setting("minival_every", 0, int, "digits: every Nth training digit is "
            "'minival', the architecture search's hold-out",
            **settings.at_least(0, " (0: no minival split)")),
    Setting("eval_files", 16, int, "21k: train files that form the eval "
            "split when there are no validation files"),
    Setting("eval_split", "validation", str, "the split evaluated"),
    Setting("train_examples", None, int, "overrides the counted training "
            "split size", fills="counted", **settings.at_least(1)),
    Setting("eval_examples", None, int, "overrides the counted eval split "
            "size", fills="counted", **settings.at_least(1)),
)


def from_config(config):
  """The `Source` a run config's data section names.

  `data.train_examples`/`data.eval_examples`, when set, override the split
  sizes the source found.
  """
  data = config.data
  if data.source in NEEDS_DATA_DIR and not data.data_dir:
    raise DataNotFoundError(
        f"--data_dir (data.data_dir) is required for {data.dataset!r} "
        f"({data.source} source).")
  source = FROM_CONFIG[data.source](data, config.model.num_classes)
  overrides = {"train": data.train_examples,
               data.eval_split: data.eval_examples}
  source.split_sizes.update({k: v for k, v in overrides.items() if v})
  return source


def check(source, splits):
  """Checks, before any training, that `source` can serve a run.

  At least two classes, and each of `splits` known and not empty; each
  problem is one DataError naming the fix.
  """
  if source.num_classes < 2:
    names = f" ({', '.join(source.class_names)})" if source.class_names else ""
    raise DataError(f"{source.name}: {source.num_classes} class{names}; a "
                    "classifier needs at least two.")
  for split in splits:
    size = source.split_sizes.get(split)
    if not size:
      known = ", ".join(f"{k} ({v})" for k, v in source.split_sizes.items())
      key = ("data.eval_split" if split != "train" else
             "data.train_examples")
      make = (
          "Add images (a folder holds out every 10th one, or give "
          f"{TRAIN_FOLDER}/ beside validation/ and {TEST_FOLDER}/ folders)"
          if isinstance(source, FolderSource) else
          f"Write {split}-* files (python -m effnetv2_tf.data.make_tfrecords"
          f" --split={split})" if isinstance(source, TFRecordSource) else
          "Make the split")
      raise DataError(
          f"{source.name}: the {split!r} split is "
          f"{'empty' if size == 0 else 'missing'} (splits: {known}). "
          + (f"{make}, or set {key} to another split; --mode=train "
             "needs none." if split != "train" else
             f"Add training data, or set {key}."))
