"""The on-disk TFRecord format: feature keys, shard names, info and labels.

Records follow the standard ImageNet TFRecord format (the reference
`build_imagenet_data.py`): `image/encoded` holds RGB JPEG bytes and
`image/class/label` the 1-based class index (a list of them for multi-label
ImageNet-21k). Shards are named `<split>-00000-of-00004`, so the usual
`train-*` / `validation-*` patterns find them. Beside the shards:

  dataset_info.json  {"format_version", "num_classes",
                      "splits": {split: examples},
                      "shards": {shard basename: records},
                      "skipped": {split: unreadable inputs}}
  labels.txt         one line per class in label order:
                     `<synset or folder name>\t<readable name>`
"""

import json
import os
import re

import tensorflow as tf

from effnetv2_tf import fileio

FORMAT_VERSION = 1
INFO_FILENAME = "dataset_info.json"
LABELS_FILENAME = "labels.txt"
LABEL_OFFSET = 1  # image/class/label is 1-based, as in the ImageNet format
JPEG_QUALITY = 95  # for images that must be re-encoded

ENCODED_KEY = "image/encoded"
FORMAT_KEY = "image/format"
LABEL_KEY = "image/class/label"
SYNSET_KEY = "image/class/synset"
TEXT_KEY = "image/class/text"
FILENAME_KEY = "image/filename"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
CHANNELS_KEY = "image/channels"
COLORSPACE_KEY = "image/colorspace"


def _bytes(values):
  values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def make_example(encoded, label, synset="", text="", filename="", height=0,
                 width=0):
  """Builds one ImageNet-format record.

  Args:
    encoded: RGB JPEG bytes.
    label: the 1-based class index, or a list of them (multi-label).
    synset: the class name (WordNet id or folder name).
    text: the readable class name.
    filename: the source file's basename.
    height: image height in pixels.
    width: image width in pixels.

  Returns:
    A tf.train.Example.
  """
  labels = [int(label)] if isinstance(label, int) else [int(v) for v in label]
  feature = {
      ENCODED_KEY: _bytes([encoded]),
      FORMAT_KEY: _bytes([b"JPEG"]),
      LABEL_KEY: _ints(labels),
      SYNSET_KEY: _bytes([synset]),
      TEXT_KEY: _bytes([text]),
      FILENAME_KEY: _bytes([filename]),
      HEIGHT_KEY: _ints([int(height)]),
      WIDTH_KEY: _ints([int(width)]),
      CHANNELS_KEY: _ints([3]),
      COLORSPACE_KEY: _bytes([b"RGB"]),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature))


def to_rgb_jpeg(data):
  """Checks image bytes and makes them a 3-channel JPEG.

  Args:
    data: JPEG, PNG, GIF, BMP or WebP bytes (a string tensor or bytes).

  Returns:
    (JPEG bytes, height, width): `data` itself when it is a 3-channel JPEG;
    PNGs and the like, and CMYK or grayscale JPEGs, decoded to RGB and
    re-encoded at JPEG_QUALITY.

  Raises:
    tf.errors.InvalidArgumentError: corrupt or truncated data.
  """
  # A full decode also catches truncated JPEGs, whose header is intact.
  image = tf.io.decode_image(data, channels=3, expand_animations=False)
  if not (tf.io.is_jpeg(data) and
          int(tf.image.extract_jpeg_shape(data)[2]) == 3):
    data = tf.io.encode_jpeg(image, quality=JPEG_QUALITY)
  height, width = image.shape[:2]
  return bytes(tf.convert_to_tensor(data).numpy()), int(height), int(width)


def feature_spec():
  """Returns the tf.io.parse_single_example spec of every key we write."""
  string = tf.io.FixedLenFeature([], tf.string, default_value="")
  integer = tf.io.FixedLenFeature([], tf.int64, default_value=0)
  return {
      ENCODED_KEY: string, FORMAT_KEY: string,
      LABEL_KEY: tf.io.VarLenFeature(tf.int64),
      SYNSET_KEY: string, TEXT_KEY: string, FILENAME_KEY: string,
      HEIGHT_KEY: integer, WIDTH_KEY: integer, CHANNELS_KEY: integer,
      COLORSPACE_KEY: string,
  }


# The reference's ImageNet-21k records keep the image under 'image'.
REFERENCE_21K_IMAGE_KEY = "image"


def image_spec():
  """Parse spec of the image bytes in our/ImageNet or the 21k layout."""
  string = tf.io.FixedLenFeature([], tf.string, default_value="")
  return {ENCODED_KEY: string, REFERENCE_21K_IMAGE_KEY: string}


def image_bytes(parsed):
  """The image bytes of a record parsed with `image_spec()` keys."""
  ours = parsed[ENCODED_KEY]
  return tf.cond(tf.strings.length(ours) > 0, lambda: ours,
                 lambda: parsed[REFERENCE_21K_IMAGE_KEY])


def parse_example(record):
  """Parses one serialized record; the label comes back as a dense vector."""
  parsed = tf.io.parse_single_example(record, feature_spec())
  parsed[LABEL_KEY] = tf.sparse.to_dense(parsed[LABEL_KEY])
  return parsed


def shard_name(split, index, num_shards):
  """`train`, 0, 4 -> `train-00000-of-00004`."""
  return f"{split}-{index:05d}-of-{num_shards:05d}"


def is_shard_file(filename, split):
  """Whether a basename is a shard of `split` (of any shard count)."""
  return bool(re.fullmatch(re.escape(split) + r"-\d{5}-of-\d{5}", filename))


def read_info(data_dir):
  """Returns the parsed dataset_info.json of data_dir, or {} if absent."""
  return fileio.read_json(os.path.join(data_dir, INFO_FILENAME)) or {}


def merge_info(info, split, shards, num_classes, num_skipped):
  """Returns `info` with `split` replaced by a new conversion of it.

  Args:
    info: the existing dataset_info.json contents ({} if none).
    split: the converted split.
    shards: {shard basename: records} of the split.
    num_classes: the length of labels.txt.
    num_skipped: unreadable inputs left out of the split.

  Returns:
    The merged dict; other splits and their shards are kept.
  """
  info = dict(info, format_version=FORMAT_VERSION, num_classes=num_classes)
  info["splits"] = {**info.get("splits", {}), split: sum(shards.values())}
  info["shards"] = {k: v for k, v in info.get("shards", {}).items()
                    if not is_shard_file(k, split)}
  info["shards"].update(shards)
  info["skipped"] = {**info.get("skipped", {}), split: num_skipped}
  return info


def write_info(data_dir, info):
  fileio.write_atomic(os.path.join(data_dir, INFO_FILENAME),
               json.dumps(info, indent=2, sort_keys=True) + "\n")


def read_labels(data_dir):
  """Reads labels.txt.

  Args:
    data_dir: the folder holding labels.txt.

  Returns:
    A list of (name, readable name) in label order (label = index + 1), or
    None when there is no labels.txt.
  """
  path = os.path.join(data_dir, LABELS_FILENAME)
  if not tf.io.gfile.exists(path):
    return None
  return read_labels_file(path)


def read_labels_file(path):
  """[(name, readable name)] of a labels file (`name[<TAB>readable]` lines)."""
  classes = []
  with tf.io.gfile.GFile(path) as f:
    for line in f.read().splitlines():
      if line.strip():
        name, _, readable = line.partition("\t")
        classes.append((name, readable or name))
  return classes


def write_class_names(data_dir, names):
  """Writes labels.txt of plain class names (each its own readable name)."""
  write_labels(data_dir, [(name, name) for name in names])


def write_labels(data_dir, classes):
  """Writes labels.txt from a list of (name, readable name) in label order."""
  fileio.write_atomic(os.path.join(data_dir, LABELS_FILENAME),
               "".join(f"{name}\t{readable}\n" for name, readable in classes))
