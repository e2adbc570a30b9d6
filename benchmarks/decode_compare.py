"""Fused against whole JPEG decoding of the same crops, over many photos.

A crop of a JPEG can be decoded two ways: the crop window alone
(`tf.image.decode_and_crop_jpeg`, the reference's legacy pipeline, our
`decode='fused'`) or the whole image, then a slice (the reference's V2
pipeline, `decode='whole'`). Along the window's edges libjpeg reconstructs
a block with or without its neighbours, so some photos get other pixels
there. For each case this decodes every photo both ways, through
`effnetv2_tf.data.preprocess` with the row's other values unchanged, and
prints how many photos differ and by how much: in raw grey levels (the
uint8 crops) and after resize and scaling (the model's input).

An eval case `ROW:SIZE` compares the eval crop at that eval size; a train
case compares `--train_crops` seeded random crops per photo (the same
window both ways), resized and scaled (flip and augmentation act alike on
both and are left out). The whole-decode numbers of the legacy row are
what the SavedModel's float-image signatures get against `serving_bytes`
(README, Export and inference). Picks the test photos of
tests/test_decode.py.

A reduced case `ROW:SIZE` measures the opt-in `decode_reduced` (a JPEG
decoded at 1/2, 1/4 or 1/8 scale where the training window keeps the
output size): per seeded training window, whether it reduces, and for
those that do the mean and largest absolute difference of the resized
0..255 pixels from the default's; beside it, how far each lies from an
antialiased resize of the full-scale window (the default's own
resampling error, for scale).

  PYTHONPATH=. python benchmarks/decode_compare.py
      [--eval_cases=legacy:224,legacy:380,v2:224,v2:384,finetune:224]
      [--train_cases=legacy:192,v2:300] [--train_crops=2] [--limit=0]
      [--reduced_cases=v2:128,v2:185,v2:242,v2:300,legacy:224,finetune:384]
"""

import dataclasses
import glob
import os
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
from effnetv2_tf.data import preprocess
from effnetv2_tf.data import preprocessing

FLAGS = flags.FLAGS
flags.DEFINE_string("samples_dir", bench_util.SAMPLES_DIR,
                    "Folder of JPEG photos (every *.JPEG, *.jpg and *.jpeg "
                    "in it).")
flags.DEFINE_list("eval_cases", ["legacy:224", "legacy:380", "v2:224",
                                 "v2:384", "finetune:224"],
                  "ROW:SIZE eval crops to compare (V2-B0 and V1-B0 eval at "
                  "224, V1-B4 at 380, the ImageNet-21k config at 224, "
                  "V2-S at 384).")
flags.DEFINE_list("train_cases", ["legacy:192", "v2:300"],
                  "ROW:SIZE training crops to compare.")
flags.DEFINE_list("reduced_cases", ["v2:128", "v2:185", "v2:242", "v2:300",
                                    "legacy:224", "finetune:384"],
                  "ROW:SIZE training windows to compare with and without "
                  "decode_reduced (V2-S's stages, B0's last, the finetune).")
flags.DEFINE_integer("train_crops", 2, "Random crops per photo and train "
                     "case.", lower_bound=1)
flags.DEFINE_integer("limit", 0, "Photos to compare (0: all).", lower_bound=0)
flags.DEFINE_integer("show", 5, "Most different photos named per case.",
                     lower_bound=0)
flags.DEFINE_string("json_out", "benchmarks/results/decode_compare.json",
                    "Where the JSON results go ('' to skip).")


def parse_case(text):
  """(row name, size) of 'ROW:SIZE', or app.UsageError naming it."""
  row, _, size = text.partition(":")
  if row not in preprocessing.ROWS or not size.isdigit() or int(size) < 1:
    raise app.UsageError(f"Case {text!r}: want ROW:SIZE with ROW one of "
                         f"{', '.join(preprocessing.ROWS)} and SIZE a positive "
                         "integer.")
  return row, int(size)


def _both(row):
  return [dataclasses.replace(preprocessing.ROWS[row], decode=d)
          for d in ("fused", "whole")]


def _difference(crops, size, prep):
  """(max abs raw difference, max abs scaled difference) of two crops."""
  raw = tf.reduce_max(tf.abs(tf.cast(crops[0], tf.int32) -
                             tf.cast(crops[1], tf.int32)))
  scaled = [preprocess.resize_and_scale(c, size, prep) for c in crops]
  return raw, tf.reduce_max(tf.abs(scaled[0] - scaled[1]))


def eval_comparer(row, size):
  """A tf.function: JPEG bytes -> the differences of the eval crops."""
  preps = _both(row)

  @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
  def compare(encoded):
    crops = [preprocess.eval_crop({"encoded": encoded}, size, p)
             for p in preps]
    return _difference(crops, size, preps[0])

  return compare


def train_comparer(row, size, crops_per_photo):
  """A tf.function: (JPEG bytes, photo index) -> the largest differences
  over the photo's seeded random crops."""
  preps = _both(row)

  @tf.function(input_signature=[tf.TensorSpec([], tf.string),
                                tf.TensorSpec([], tf.int64)])
  def compare(encoded, index):
    raw, scaled = tf.constant(0), tf.constant(0.0)
    for k in range(crops_per_photo):
      seed = tf.stack([index, tf.constant(k, tf.int64)])
      crops = [preprocess.random_crop({"encoded": encoded}, seed, size, p)
               for p in preps]
      r, s = _difference(crops, size, preps[0])
      raw, scaled = tf.maximum(raw, r), tf.maximum(scaled, s)
    return raw, scaled

  return compare


def reduced_comparer(row, size, crops_per_photo):
  """A tf.function: (JPEG bytes, photo index) -> [crops, 5] float32: per
  seeded training window, whether it reduced, the mean and largest
  absolute difference of the resized 0..255 pixels with and without
  decode_reduced, and each one's mean absolute difference from an
  antialiased resize of the full-scale window."""
  plain = preprocessing.ROWS[row]
  reduced = dataclasses.replace(plain, decode_reduced=True)

  def window(features, seed, prep):
    if prep.train_crop:
      return preprocess.random_crop(features, seed, size, prep)
    return preprocess.uncropped(features, size, prep)

  @tf.function(input_signature=[tf.TensorSpec([], tf.string),
                                tf.TensorSpec([], tf.int64)])
  def compare(encoded, index):
    features, rows = {"encoded": encoded}, []
    for k in range(crops_per_photo):
      seed = tf.stack([index, tf.constant(k, tf.int64)])
      full = window(features, seed, plain)
      a = preprocess.resize(full, size, plain.resize_method)
      b = preprocess.resize(window(features, seed, reduced), size,
                            plain.resize_method)
      target = tf.image.resize(full, [size, size], antialias=True)
      rows.append(tf.stack([
          tf.cast(preprocess.jpeg_ratio(tf.shape(full)[:2], size) > 1,
                  tf.float32),
          tf.reduce_mean(tf.abs(a - b)), tf.reduce_max(tf.abs(a - b)),
          tf.reduce_mean(tf.abs(a - target)),
          tf.reduce_mean(tf.abs(b - target))]))
    return tf.stack(rows)

  return compare


def run_reduced_case(row, size, compare, inputs):
  """Compares every photo's windows; prints and returns the summary."""
  started = time.perf_counter()
  values = np.concatenate([compare(*args).numpy() for args in inputs])
  hit = values[values[:, 0] > 0]
  summary = {"kind": "reduced", "row": row, "size": size,
             "windows": len(values), "reduced": len(hit)}
  if len(hit):
    summary.update(
        mean_abs=float(hit[:, 1].mean()), max_abs=float(hit[:, 2].max()),
        default_to_antialiased=float(hit[:, 3].mean()),
        reduced_to_antialiased=float(hit[:, 4].mean()))
  text = (f"reduced {row} {size} px: {len(hit)} of {len(values)} windows "
          "reduce")
  if len(hit):
    text += (f"; resized pixels differ by {summary['mean_abs']:.2f} mean, "
             f"{summary['max_abs']:.0f} max (0..255); from an antialiased "
             f"resize: default {summary['default_to_antialiased']:.2f}, "
             f"reduced {summary['reduced_to_antialiased']:.2f}")
  print(f"{text} ({time.perf_counter() - started:.0f} s)", flush=True)
  return summary


def photos(folder, limit):
  paths = sorted(p for ext in ("JPEG", "jpg", "jpeg")
                 for p in glob.glob(os.path.join(folder, f"*.{ext}")))
  if not paths:
    raise app.UsageError(f"--samples_dir {folder}: no JPEG photos there.")
  return paths[:limit] if limit else paths


def run_case(kind, row, size, compare, inputs, names):
  """Compares every photo; prints and returns the case's summary."""
  started = time.perf_counter()
  raw, scaled = np.array([[float(v) for v in compare(*args)]
                          for args in inputs]).T
  order = [int(i) for i in np.argsort(-scaled, kind="stable")
           if scaled[i] > 0]
  summary = {"kind": kind, "row": row, "size": size,
             "decode": preprocessing.ROWS[row].decode, "photos": len(scaled),
             "differ": len(order), "max_abs_scaled": float(scaled.max()),
             "max_abs_raw": int(raw.max()),
             "differing": {names[i]: float(scaled[i]) for i in order}}
  print(f"{kind} {row} {size} px (row decodes {summary['decode']}): "
        f"{len(order)} of {len(scaled)} photos differ; max abs "
        f"{summary['max_abs_scaled']:.4f} scaled, {summary['max_abs_raw']} "
        f"grey levels raw ({time.perf_counter() - started:.0f} s)",
        flush=True)
  for i in order[:FLAGS.show]:
    print(f"  {names[i]}: {scaled[i]:.4f} scaled")
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  eval_cases = [parse_case(c) for c in FLAGS.eval_cases]
  train_cases = [parse_case(c) for c in FLAGS.train_cases]
  reduced_cases = [parse_case(c) for c in FLAGS.reduced_cases]
  paths = photos(FLAGS.samples_dir, FLAGS.limit)
  names = [os.path.basename(p) for p in paths]
  data = [tf.io.read_file(p) for p in paths]
  indexed = [(e, tf.constant(i, tf.int64)) for i, e in enumerate(data)]
  cases = ([("eval", r, s, eval_comparer(r, s), [(e,) for e in data])
            for r, s in eval_cases] +
           [("train", r, s, train_comparer(r, s, FLAGS.train_crops), indexed)
            for r, s in train_cases])
  results = [run_case(*case, names) for case in cases] + [
      run_reduced_case(r, s, reduced_comparer(r, s, FLAGS.train_crops),
                       indexed) for r, s in reduced_cases]
  bench_util.write_results(FLAGS.json_out, {
      "samples_dir": os.path.relpath(FLAGS.samples_dir),
      "train_crops": FLAGS.train_crops, "cases": results})


if __name__ == "__main__":
  app.run(main)
