"""Input pipeline throughput: full training preprocessing vs JPEG decoding.

Measures images/second of the project's real training pipeline
(`effnetv2_tf.data.pipeline.build_train_dataset` on the v2 row: whole
decode, inception crop, flip, resize, RandAugment, batch-level mixup,
normalisation; the numbers in benchmarks/README were measured when it
still decoded the crop window alone)
at several image sizes, beside two references taken from the same files in
the same run:

  decode-only        `source.read('train')` + `decode_image`, nothing else;
  crop+flip+resize   the training pipeline with augname=None, mixup 0.

The ratio full / decode-only is the number to watch: it says how much of the
decoding budget the augmentation costs, and moves less with the machine than
the raw rates do. Without --data_dir the 1000 shared ImageNet samples are
first converted to TFRecords in a temporary folder.

  PYTHONPATH=. python benchmarks/input_pipeline.py --sizes=128,224,300
"""

import shutil
import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
from effnetv2_tf.data import make_tfrecords
from effnetv2_tf.data import pipeline
from effnetv2_tf.data import preprocess
from effnetv2_tf.data import preprocessing
from effnetv2_tf.data import sources
from effnetv2_tf.data import tfrecord_format
from effnetv2_tf.training import progressive

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Existing TFRecords (train-*); default: "
                    "convert --samples_dir into a temporary folder.")
flags.DEFINE_string("samples_dir", bench_util.SAMPLES_DIR,
                    "Flat <wnid>_<name>.JPEG images converted when "
                    "--data_dir is not given.")
flags.DEFINE_list("sizes", ["128", "224", "300"], "Training image sizes.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("num_batches", 30, "Timed batches per pipeline and size "
                     "(default: about 10-20 s per size on 2 CPU cores).")
flags.DEFINE_integer("warmup_batches", 3, "Untimed batches first.")
flags.DEFINE_string("augname", "randaug", "'randaug', 'autoaug' or 'none'.")
flags.DEFINE_integer("magnitude", 15, "RandAugment magnitude.")
flags.DEFINE_float("mixup_alpha", 0.2, "Batch-level mixup alpha.")
flags.DEFINE_integer("num_classes", 1000, "Classes, when the TFRecords have "
                     "no dataset_info.json.")
flags.DEFINE_string("json_out", "benchmarks/results/input_pipeline.json",
                    "Where the JSON results go ('' to skip).")


def make_source(data_dir):
  """The TFRecord source; class count from dataset_info.json if present."""
  info = tfrecord_format.read_info(data_dir)
  return sources.tfrecord_source(
      "benchmark", data_dir, info.get("num_classes", FLAGS.num_classes))


def convert_samples(image_dir):
  """Converts the shared samples to TFRecords in a new temporary folder."""
  out = tempfile.mkdtemp(prefix="input_pipeline_bench_")
  summary = make_tfrecords.convert(image_dir, out, num_shards=8,
                                   split="train", layout="flat")
  print(f"Converted {summary['num_examples']} images from {image_dir} to "
        f"{out} in {summary['seconds']:.1f} s.")
  return out


def decode_only(source, batch_size):
  """Decoding of the same records, reduced to the shape so batching works."""
  ds = source.read("train").repeat()
  ds = ds.map(lambda ex: tf.shape(preprocess.decode_image(ex["encoded"])),
              num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_pipeline(source, batch_size, size, augname, magnitude, mixup_alpha):
  stage = progressive.Stage(index=0, start_step=0, steps=1, image_size=size,
                            randaug_magnitude=magnitude,
                            mixup_alpha=mixup_alpha, cutmix_alpha=0.0,
                            dropout=0.0)
  return pipeline.build_train_dataset(
      source, batch_size, stage,
      pipeline.TrainInput(preprocessing.ROWS["v2"], augname=augname), seed=0)


def images_per_second(ds, batch_size, num_batches, warmup_batches):
  """Rate over `num_batches` after `warmup_batches` untimed ones."""
  it = iter(ds)
  for _ in range(warmup_batches):
    next(it)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  return batch_size * num_batches / (time.perf_counter() - start)


def measure_size(source, size):
  """The three rates at one image size."""
  b, augname = FLAGS.batch_size, FLAGS.augname
  augname = None if augname.lower() == "none" else augname
  pipes = {
      "decode_only": decode_only(source, b),
      "crop_flip_resize": train_pipeline(source, b, size, None, 0, 0.0),
      "full": train_pipeline(source, b, size, augname, FLAGS.magnitude,
                             FLAGS.mixup_alpha),
  }
  row = {"size": size}
  for name, ds in pipes.items():
    row[name] = images_per_second(ds, b, FLAGS.num_batches,
                                  FLAGS.warmup_batches)
  row["ratio_full_to_decode"] = row["full"] / row["decode_only"]
  return row


def print_table(rows):
  header = (f"{'size':>5} {'decode-only':>12} {'crop+flip+resize':>17} "
            f"{'full':>9} {'full/decode':>12}")
  print(header)
  print("-" * len(header))
  for r in rows:
    print(f"{r['size']:>5} {r['decode_only']:>12.1f} "
          f"{r['crop_flip_resize']:>17.1f} {r['full']:>9.1f} "
          f"{r['ratio_full_to_decode']:>12.3f}")
  print("(images/s; full = " + f"{FLAGS.augname} {FLAGS.magnitude}, mixup "
        f"{FLAGS.mixup_alpha}, batch {FLAGS.batch_size}, "
        f"{FLAGS.num_batches} timed batches)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print("Machine: " + ", ".join(
      f"{k}={v}" for k, v in bench_util.machine().items()))
  data_dir = FLAGS.data_dir or convert_samples(FLAGS.samples_dir)
  try:
    source = make_source(data_dir)
    rows = [measure_size(source, int(s)) for s in FLAGS.sizes]
  finally:
    if not FLAGS.data_dir:
      shutil.rmtree(data_dir, ignore_errors=True)
  print_table(rows)
  settings = {k: FLAGS[k].value for k in (
      "data_dir", "batch_size", "num_batches", "warmup_batches", "augname",
      "magnitude", "mixup_alpha")}
  settings["num_examples"] = source.num_examples("train")
  bench_util.write_results(FLAGS.json_out, {
      "benchmark": "input_pipeline",
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": settings,
      "results": rows})


if __name__ == "__main__":
  app.run(main)
