"""Decode, crop and resize of one training image, per `decode` setting.

Times `preprocess.random_crop` + `preprocess.resize` (the V2 row, one image
per call of a tf.function) for the four ways bytes can become the crop:
'whole' (the row's default, as the reference's preprocessing.py), 'fused'
(the window alone), each with and without `decode_reduced` (libjpeg's DCT
scaling where the window keeps the output size). Both opt-ins change
pixels (benchmarks/decode_compare.py says by how much). It runs on the
shared ImageNet photos as they are (about 500 x 375) and scaled up
--upscale times and re-encoded (quality 90), as a camera's photos of an
image folder are; prints CPU ms per image (median of --rounds, the
configurations alternating) and the speedup over 'whole'.

  PYTHONPATH=. python benchmarks/decode_speed.py [--photos=60] [--upscale=4]
      [--sizes=128,300] [--rounds=3]
"""

import dataclasses
import glob
import os
import statistics
import time

from absl import app
from absl import flags
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
from effnetv2_tf.data import preprocess
from effnetv2_tf.data import preprocessing

FLAGS = flags.FLAGS
flags.DEFINE_string("samples_dir", bench_util.SAMPLES_DIR,
                    "Folder of *.JPEG photos.")
flags.DEFINE_integer("photos", 60, "Photos timed (every tenth, sorted).",
                     lower_bound=1)
flags.DEFINE_integer("upscale", 4, "Factor of the large photos' sides.",
                     lower_bound=2)
flags.DEFINE_list("sizes", ["128", "300"], "Output sizes (V2-S's first and "
                  "last stage).")
flags.DEFINE_integer("rounds", 3, "Rounds per configuration.", lower_bound=1)

_V2 = preprocessing.ROWS["v2"]
CONFIGS = {
    "whole": _V2,
    "whole+reduced": dataclasses.replace(_V2, decode_reduced=True),
    "fused": dataclasses.replace(_V2, decode="fused"),
    "fused+reduced": dataclasses.replace(_V2, decode="fused",
                                         decode_reduced=True),
}


def upscaled(encoded, factor):
  image = tf.io.decode_jpeg(encoded, channels=3)
  size = tf.shape(image)[:2] * factor
  image = tf.image.resize(image, size)
  return tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255),
                                   tf.uint8), quality=90)


def crop_fn(prep, size):
  @tf.function(input_signature=[tf.TensorSpec([], tf.string),
                                tf.TensorSpec([2], tf.int64)])
  def crop(encoded, seed):
    window = preprocess.random_crop({"encoded": encoded}, seed, size, prep)
    return preprocess.resize(window, size, prep.resize_method)
  return crop


def time_set(data, size):
  """{configuration: median CPU ms per image} at one output size."""
  fns = {name: crop_fn(prep, size) for name, prep in CONFIGS.items()}
  for fn in fns.values():
    fn(data[0], tf.constant([0, 0], tf.int64))
  times = {name: [] for name in fns}
  for round_ in range(FLAGS.rounds):
    for name, fn in fns.items():
      start = time.process_time()
      for i, encoded in enumerate(data):
        fn(encoded, tf.constant([i, round_], tf.int64))
      times[name].append(1e3 * (time.process_time() - start) / len(data))
  return {name: statistics.median(t) for name, t in times.items()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  paths = sorted(glob.glob(os.path.join(FLAGS.samples_dir, "*.JPEG")))
  if not paths:
    raise app.UsageError(f"--samples_dir {FLAGS.samples_dir}: no *.JPEG.")
  print("Machine: " + ", ".join(
      f"{k}={v}" for k, v in bench_util.machine().items()))
  photos = [tf.io.read_file(p) for p in paths[::10][:FLAGS.photos]]
  sets = {"as shipped": photos,
          f"{FLAGS.upscale}x upscaled": [upscaled(p, FLAGS.upscale)
                                         for p in photos]}
  print(f"{len(photos)} photos; CPU ms per image (speedup over whole)")
  for label, data in sets.items():
    shape = tf.io.extract_jpeg_shape(data[0]).numpy()[:2]
    for size in (int(s) for s in FLAGS.sizes):
      ms = time_set(data, size)
      print(f"{label} (first {shape[0]}x{shape[1]}), {size} px: " + ", ".join(
          f"{name} {t:.2f} ({ms['whole'] / t:.2f}x)"
          for name, t in ms.items()), flush=True)


if __name__ == "__main__":
  app.run(main)
