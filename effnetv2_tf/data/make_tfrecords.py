"""Converts a folder of images into sharded ImageNet-format TFRecords.

Usage:
  python -m effnetv2_tf.data.make_tfrecords --image_dir=DIR \
      --output_dir=OUT --num_shards=N [--split=train] [--layout=folders|flat]

--layout=folders: DIR/<class>/*.{jpg,jpeg,png,gif,bmp,webp} (any case;
images in sub-folders of a class folder are of that class), classes sorted
by folder name, which is also the readable name. --layout=flat: files named
DIR/<class>_<readable name>.<ext> (n01440764_great_white_shark.JPEG: class
n01440764, "great white shark"), classes sorted. Other files are counted and
named by extension. A DIR of split folders (train/, val/, ...) is converted
one split at a time: --image_dir=DIR/train --split=train, and so on.

Writes OUT/<split>-00000-of-0000N, labels.txt and dataset_info.json (format:
effnetv2_tf.data.tfrecord_format), shuffling with --seed first so every shard
mixes classes. Unreadable files are logged and skipped. A later split (e.g.
validation) reuses OUT/labels.txt and is merged into dataset_info.json.
"""

from effnetv2_tf import startup

# Run as a program, start up before the imports below load TensorFlow
# (see startup); imported as a module, this changes nothing.
if __name__ == "__main__":
  startup.start()

# pylint: disable=g-import-not-at-top,wrong-import-position
import collections
import concurrent.futures
import os
import random
import re
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf import fileio
from effnetv2_tf import quiet_start
from effnetv2_tf.data import sources
from effnetv2_tf.data import tfrecord_format

LAYOUTS = ("folders", "flat")
SOURCE_SPLITS = ("train", "validation")  # what tfrecord_source globs for

FLAGS = flags.FLAGS


def define_flags():
  """CLI flags; defined only when run as a script, so importing this module
  (benchmarks, other drivers) does not claim flag names like --seed."""
  flags.DEFINE_string("image_dir", None, "Folder of input images.")
  flags.DEFINE_string("output_dir", None, "Folder for shards and metadata.")
  flags.DEFINE_integer("num_shards", None, "Number of output shards.",
                       lower_bound=1)
  flags.DEFINE_string("split", "train", "Split name; shards are <split>-*.")
  flags.DEFINE_enum("layout", "folders", LAYOUTS, "Input layout (see above).")
  flags.DEFINE_integer("seed", 0, "Seed of the shuffle before sharding.")
  flags.DEFINE_integer("num_threads", min(8, os.cpu_count() or 1),
                       "Threads reading and re-encoding images.",
                       lower_bound=1)
  flags.DEFINE_integer("log_every", 500,
                       "Log progress every this many images.", lower_bound=1)
  flags.mark_flags_as_required(["image_dir", "output_dir", "num_shards"])


class ConversionError(errors.UserError, ValueError):
  """Bad input or arguments, with a message saying what to fix."""


ImageFile = collections.namedtuple("ImageFile", ["path", "class_name"])


# ------------------------------------------------------------------ listing
def list_folders(root):
  """Returns ([ImageFile], [(class, readable name)] sorted, [note lines])
  of root/<class>/, images in sub-folders of a class folder included."""
  splits = sources.split_folders(root)
  if splits:
    split_args = ", ".join(
        f"--image_dir={os.path.join(root, folder)} --split={split}"
        for split, folder in splits.items())
    raise ConversionError(
        f"{root} holds split folders ({', '.join(splits.values())}); "
        f"convert each on its own into the same --output_dir: {split_args}.")
  listing = sources.list_classes(root)
  if not listing.classes:
    raise ConversionError(
        f"{root} has no class subfolders (--layout=folders expects "
        f"{root}/<class>/*.jpg); for one folder of <class>_<name>.jpg files "
        "use --layout=flat.")
  sources.check_not_one_folder_too_high(listing, "--image_dir")
  files = [ImageFile(path, listing.classes[label])
           for path, label in zip(listing.files, listing.labels)]
  return (files, [(name, name) for name in listing.classes],
          listing.notes(root))


def _readable_names(pairs):
  """Most common readable name per class; numeric suffixes (ImageNet's
  n01440764_10026.JPEG) carry none, so such a class is named by itself."""
  counts = collections.defaultdict(collections.Counter)
  for class_name, rest in pairs:
    if rest and not rest.isdigit():
      counts[class_name][rest.replace("_", " ")] += 1
  return [(c, counts[c].most_common(1)[0][0] if counts[c] else c)
          for c in sorted({c for c, _ in pairs})]


def list_flat(root):
  """Lists `root/<class>_<readable name>.<ext>`; same returns as list_folders.
  """
  paths, others = sources.list_images(root, recursive=False)
  names = [os.path.basename(p) for p in paths]
  parts = [os.path.splitext(n)[0].partition("_") for n in names]
  bad = [n for n, (c, sep, _) in zip(names, parts) if not (c and sep)]
  if bad:
    raise ConversionError(
        f"--layout=flat needs files named <class>_<name>.<ext>; these are "
        f"not: {bad[:5]} ({len(bad)} in all).")
  pairs = [(c, rest) for c, _, rest in parts]
  files = [ImageFile(os.path.join(root, n), c)
           for n, (c, _) in zip(names, pairs)]
  notes = sources.FolderListing(root, [], others=others).notes(root)
  folders = sources.class_folders(root)
  if folders:
    notes.append(f"--layout=flat reads the files in {root} alone, not its "
                 "sub-folders "
                 f"({errors.first_few([f + '/' for f in folders], 5)})")
  return files, _readable_names(pairs), notes


def _list_images(image_dir, layout):
  if not image_dir or not tf.io.gfile.isdir(image_dir):
    raise ConversionError(f"--image_dir {image_dir!r} is not a directory.")
  if layout not in LAYOUTS:
    raise ConversionError(f"--layout must be one of {LAYOUTS}, not {layout!r}.")
  files, classes, notes = (list_folders if layout == "folders" else
                           list_flat)(image_dir)
  if not files:
    where = (f"{image_dir}/<class>/" if layout == "folders"
             else f"{image_dir}/")
    raise ConversionError(
        f"No images ({sources.IMAGE_PATTERNS}) found in {where} "
        f"(--layout={layout}){'; ' if notes else ''}{'; '.join(notes)}.")
  return files, classes, notes


def _label_classes(output_dir, classes):
  """The class list in label order: labels.txt's if present, else `classes`.
  """
  existing = tfrecord_format.read_labels(output_dir)
  if existing is None:
    return classes
  known = {name for name, _ in existing}
  unknown = sorted({name for name, _ in classes} - known)
  if unknown:
    raise ConversionError(
        f"Classes {unknown[:5]} ({len(unknown)} in all) are not in "
        f"{os.path.join(output_dir, tfrecord_format.LABELS_FILENAME)}, which "
        "fixes the label of every class for all splits. Convert every split "
        "with the same classes, or use a new --output_dir.")
  return existing


# ----------------------------------------------------------------- encoding
CUT_IN_HEADER = "a JPEG cut off in its header (no image data)"


def load_image(path):
  """Returns (RGB JPEG bytes, height, width) of an image file; raises
  tf.errors.OpError or OSError when it is unreadable or corrupt."""
  data = tf.io.read_file(path)
  if sources.jpeg_cut_in_header(data):  # libjpeg would not name the file
    raise tf.errors.InvalidArgumentError(None, None, CUT_IN_HEADER)
  return tfrecord_format.to_rgb_jpeg(data)


def _try_load(path):
  try:
    return load_image(path), None
  except (tf.errors.OpError, OSError) as e:
    message = getattr(e, "message", None) or str(e)
    return None, message.strip().splitlines()[-1][:200]


class _Progress:
  """Logs images done and images/s every `every` images."""

  def __init__(self, split, total, every):
    self.split, self.total, self.every = split, total, every
    self.done = self.skipped = 0
    self.start = time.time()

  def update(self, skipped):
    self.done += 1
    self.skipped += int(skipped)
    if self.done % self.every == 0 or self.done == self.total:
      elapsed = time.time() - self.start
      eta = (self.total - self.done) / max(self.rate(), 1e-9)
      print(f"{self.split}: {self.done}/{self.total} images, "
            f"{self.rate():.1f} images/s, {self.skipped} skipped, elapsed "
            f"{elapsed:.0f}s, ETA {eta:.0f}s", flush=True)

  def rate(self):
    return self.done / max(time.time() - self.start, 1e-9)


def _write_shard(path, files, labels, pool, progress):
  """Writes one shard via a temporary file; returns (records, skipped)."""
  tmp = fileio.temp_path(path)
  count, skipped = 0, []
  try:
    with tf.io.TFRecordWriter(tmp) as writer:
      loaded = pool.map(_try_load, [f.path for f in files])
      for item, (result, reason) in zip(files, loaded):
        progress.update(skipped=reason is not None)
        if reason is not None:
          logging.warning("Skipping %s: %s", item.path, reason)
          skipped.append((item.path, reason))
          continue
        encoded, height, width = result
        label, readable = labels[item.class_name]
        writer.write(tfrecord_format.make_example(
            encoded, label, synset=item.class_name, text=readable,
            filename=os.path.basename(item.path), height=height,
            width=width).SerializeToString())
        count += 1
    tf.io.gfile.rename(tmp, path, overwrite=True)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
  return count, skipped


# ----------------------------------------------------------------- metadata
def _remove_stale_shards(output_dir, split, keep):
  """Deletes shards of `split` from an earlier run with another num_shards,
  and temporary files an interrupted run left."""
  for name in tf.io.gfile.listdir(output_dir):
    is_shard = tfrecord_format.is_shard_file
    stale = is_shard(name, split) and name not in keep
    interrupted = name.startswith(".") and name.endswith(".tmp") and (
        is_shard(name[1:-len(".tmp")], split))
    if stale or interrupted:
      logging.info("Removing stale shard %s", name)
      tf.io.gfile.remove(os.path.join(output_dir, name))


def _check_output_dir(image_dir, layout, output_dir):
  inside = os.path.realpath(output_dir).startswith(
      os.path.realpath(image_dir).rstrip(os.sep) + os.sep)
  if layout == "folders" and inside:
    raise ConversionError(
        f"--output_dir {output_dir} is inside --image_dir {image_dir}, where "
        "--layout=folders would read it as a class folder; put it elsewhere.")


def _check_args(num_shards, split, num_images=None):
  if num_shards < 1:
    raise ConversionError(f"--num_shards must be >= 1, not {num_shards}.")
  if not re.fullmatch(r"[A-Za-z0-9_]+", split or ""):
    raise ConversionError(f"--split must be a word like 'train', not "
                          f"{split!r}.")
  if num_images is not None and num_shards > num_images:
    raise ConversionError(f"--num_shards={num_shards} is more than the "
                          f"{num_images} images found.")


# --------------------------------------------------------------------- main
def _write_shards(files, labels, output_dir, split, num_shards, num_threads,
                  progress):
  """Writes `files` into `num_shards` equal shards of `split`; returns
  ({shard basename: records}, [(path, reason) skipped])."""
  bounds = np.linspace(0, len(files), num_shards + 1).astype(int)
  shards, skipped = {}, []
  with concurrent.futures.ThreadPoolExecutor(
      num_threads or min(8, os.cpu_count() or 1)) as pool:
    for i in range(num_shards):
      name = tfrecord_format.shard_name(split, i, num_shards)
      shards[name], bad = _write_shard(
          os.path.join(output_dir, name), files[bounds[i]:bounds[i + 1]],
          labels, pool, progress)
      skipped += bad
  return shards, skipped


def convert(image_dir, output_dir, num_shards, split="train",
            layout="folders", seed=0, num_threads=None, log_every=500):
  """Converts `image_dir` into `output_dir/<split>-*` shards and metadata.

  Args:
    image_dir: folder of images in `layout`.
    output_dir: where shards, labels.txt and dataset_info.json go.
    num_shards: number of shards of this split.
    split: split name, e.g. 'train' or 'validation'.
    layout: 'folders' or 'flat' (see the module docstring).
    seed: seed of the shuffle before sharding.
    num_threads: image reading threads; default min(8, CPUs).
    log_every: log progress every this many images.

  Returns:
    A summary dict: split, num_examples, num_skipped, skipped ([(path,
    reason)]), num_classes, shards ({basename: records}), notes (the lines
    printed about files that are not images and images in sub-folders),
    seconds, images_per_second.
  """
  _check_args(num_shards, split)
  if split not in SOURCE_SPLITS:
    logging.warning("Split %r: effnetv2_tf.data.sources reads only %s.",
                    split, " and ".join(f"{s}-*" for s in SOURCE_SPLITS))
  files, classes, notes = _list_images(image_dir, layout)
  _check_args(num_shards, split, len(files))
  _check_output_dir(image_dir, layout, output_dir)
  classes = _label_classes(output_dir, classes)
  labels = {name: (i + tfrecord_format.LABEL_OFFSET, readable)
            for i, (name, readable) in enumerate(classes)}
  random.Random(seed).shuffle(files)
  tf.io.gfile.makedirs(output_dir)
  print(f"{split}: {len(files)} images of {len(classes)} classes from "
        f"{image_dir} -> {num_shards} shards in {output_dir}", flush=True)
  for note in notes:
    print(note, flush=True)
  progress = _Progress(split, len(files), log_every)
  shards, skipped = _write_shards(files, labels, output_dir, split,
                                  num_shards, num_threads, progress)
  _remove_stale_shards(output_dir, split, set(shards))
  tfrecord_format.write_labels(output_dir, classes)
  tfrecord_format.write_info(output_dir, tfrecord_format.merge_info(
      tfrecord_format.read_info(output_dir), split, shards, len(classes),
      len(skipped)))
  return {"split": split, "num_examples": sum(shards.values()),
          "num_skipped": len(skipped), "skipped": skipped,
          "num_classes": len(classes), "shards": shards, "notes": notes,
          "seconds": time.time() - progress.start,
          "images_per_second": progress.rate()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  quiet_start.quiet_info_logs(FLAGS)
  with errors.reported("make_tfrecords"):
    summary = convert(FLAGS.image_dir, FLAGS.output_dir, FLAGS.num_shards,
                      split=FLAGS.split, layout=FLAGS.layout, seed=FLAGS.seed,
                      num_threads=FLAGS.num_threads,
                      log_every=FLAGS.log_every)
  print(f"{summary['split']}: wrote {summary['num_examples']} examples of "
        f"{summary['num_classes']} classes in {len(summary['shards'])} shards "
        f"to {FLAGS.output_dir} ({summary['images_per_second']:.1f} images/s);"
        f" skipped {summary['num_skipped']} unreadable files.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
