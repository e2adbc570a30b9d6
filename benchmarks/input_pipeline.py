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

With --baseline_dir (a second checkout, e.g. the commit before a change,
extracted with `git archive`), the same training pipelines are timed from
both checkouts instead, each in its own process (PYTHONPATH = that
checkout), one row at a time and alternating A/B: every progressive stage
of efficientnetv2-s on ImageNet (`progressive.plan_stages`, its RandAugment
magnitudes), the same last stage under the reference preset, B0's last
stage (AutoAugment, legacy row) and the `imagenetft` finetune row. Batch 32,
mixup and CutMix off, no caching, the same seed, the same TFRecords.

  PYTHONPATH=. python benchmarks/input_pipeline.py --baseline_dir=/tmp/base
      [--ours_prep=decode=fused,decode_reduced=true]

--ours_prep changes our side's preprocessing rows, e.g. to time the opt-in
reduced-scale JPEG decode against the baseline's default pipeline.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
from effnetv2_tf import errors
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
flags.DEFINE_string("baseline_dir", None, "A second checkout (its root, "
                    "with effnetv2_tf/) whose pipelines are timed beside "
                    "ours, row by row, alternating (see the module doc).")
flags.DEFINE_integer("repeats", 3, "With --baseline_dir: A/B alternations "
                     "per row; each side's median rate is reported.")
flags.DEFINE_list("ours_prep", [], "With --baseline_dir: FIELD=VALUE "
                  "changes to our side's preprocessing row, e.g. "
                  "decode=fused,decode_reduced=true (opt-ins that change "
                  "pixels: benchmarks/decode_compare.py measures by how "
                  "much); the baseline runs its rows as they are.")
flags.DEFINE_bool("serve", False, "Internal: time the rows that stdin "
                  "names (one JSON line each) with the effnetv2_tf on "
                  "PYTHONPATH.")

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (label, model, dataset config, hparams, stages: 'all' or 'last').
AB_ROWS = (
    ("S", "efficientnetv2-s", "imagenet", "", "all"),
    ("S reference", "efficientnetv2-s", "imagenet",
     "progressive.preset=reference", "last"),
    ("B0 autoaug", "efficientnetv2-b0", "imagenet", "", "last"),
    ("S finetune", "efficientnetv2-s", "imagenetft", "", "last"),
)


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


def ab_specs():
  """The A/B rows: every pipeline value a checkout needs, from our configs
  (the stage's size and magnitude, the row's preprocessing fields, the
  augmentation and its arithmetic). "our_prep" is "prep" with --ours_prep
  set as `data.FIELD=VALUE` hparams, so the config validates them."""
  from effnetv2_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  ours = [f"data.{item}" for item in FLAGS.ours_prep]
  specs = []
  for label, model, dataset, hparams, which in AB_ROWS:
    config = config_lib.build_config(model, dataset, hparam_str=hparams)
    our_config = config_lib.build_config(
        model, dataset, hparam_str=",".join(filter(None, [hparams] + ours)))
    stages = progressive.plan_stages(config, config.progressive.num_stages)
    stages = stages if which == "all" else stages[-1:]
    prep, our_prep = (
        {name: getattr(p, name) for name in preprocessing.FIELDS}
        for p in (preprocessing.from_config(config.data),
                  preprocessing.from_config(our_config.data)))
    for stage in stages:
      specs.append({
          "label": (f"{label} stage {stage.index + 1}/{len(stages)}"
                    if which == "all" else label),
          "size": stage.image_size, "magnitude": stage.randaug_magnitude,
          "augname": config.data.augname or None,
          "arithmetic": config.data.augment_arithmetic,
          "prep": prep, "our_prep": our_prep})
  return specs


def time_spec(source, spec):
  """Images/s (wall) and CPU ms per image (all threads) of one A/B row."""
  stage = progressive.Stage(index=0, start_step=0, steps=1,
                            image_size=spec["size"],
                            randaug_magnitude=spec["magnitude"],
                            mixup_alpha=0.0, cutmix_alpha=0.0, dropout=0.0)
  # A field this checkout lacks (a newer opt-in, off on the baseline's
  # side) is left out.
  prep = {k: v for k, v in spec["prep"].items() if k in preprocessing.FIELDS}
  train_input = pipeline.TrainInput(
      preprocessing.Preprocessing(**prep), augname=spec["augname"],
      augment_arithmetic=spec["arithmetic"])
  ds = pipeline.build_train_dataset(source, FLAGS.batch_size, stage,
                                    train_input, seed=0)
  it = iter(ds)
  for _ in range(FLAGS.warmup_batches):
    next(it)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(FLAGS.num_batches):
    next(it)
  images = FLAGS.batch_size * FLAGS.num_batches
  return {"images_per_s": images / (time.perf_counter() - wall),
          "cpu_ms_per_image": 1e3 * (time.process_time() - cpu) / images}


def serve():
  """Worker: one JSON spec per stdin line, one JSON result per line."""
  source = make_source(FLAGS.data_dir)
  for line in sys.stdin:
    print(json.dumps(time_spec(source, json.loads(line))), flush=True)


class Worker:
  """This script in --serve mode with `checkout`'s effnetv2_tf."""

  def __init__(self, checkout, data_dir, log):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    args = [sys.executable, os.path.abspath(__file__), "--serve",
            f"--data_dir={data_dir}"] + [
                f"--{k}={FLAGS[k].value}" for k in (
                    "batch_size", "num_batches", "warmup_batches",
                    "num_classes")]
    self.log = log
    self.proc = subprocess.Popen(args, env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=log,
                                 text=True)

  def time(self, spec):
    self.proc.stdin.write(json.dumps(spec) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      self.log.seek(0)
      raise RuntimeError("A benchmark worker failed:\n"
                         + self.log.read()[-3000:])
    return json.loads(line)

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def compare(data_dir, specs):
  """Times every A/B row (`ab_specs`) from both checkouts, alternating;
  returns rows."""
  rows = []
  with tempfile.TemporaryFile("w+") as log_a, \
      tempfile.TemporaryFile("w+") as log_b:
    ours = Worker(REPO_DIR, data_dir, log_a)
    base = Worker(FLAGS.baseline_dir, data_dir, log_b)
    try:
      for spec in specs:
        our_spec = {**spec, "prep": spec["our_prep"]}
        runs = {"ours": [], "baseline": []}
        for _ in range(FLAGS.repeats):
          runs["ours"].append(ours.time(our_spec))
          runs["baseline"].append(base.time(spec))
        row = {k: spec[k] for k in ("label", "size", "magnitude", "augname",
                                    "arithmetic")}
        for side, results in runs.items():
          for key in ("images_per_s", "cpu_ms_per_image"):
            row[f"{side}_{key}"] = statistics.median(r[key] for r in results)
        row["speedup"] = row["ours_images_per_s"] / row[
            "baseline_images_per_s"]
        row["cpu_speedup"] = row["baseline_cpu_ms_per_image"] / row[
            "ours_cpu_ms_per_image"]
        print_ab_row(row)
        rows.append(row)
    finally:
      ours.close()
      base.close()
  return rows


AB_HEADER = (f"{'row':<18} {'size':>4} {'aug':>12} {'ours/s':>8} "
             f"{'base/s':>8} {'x wall':>7} {'ours ms':>8} {'base ms':>8} "
             f"{'x cpu':>6}")


def print_ab_row(row):
  aug = {"randaug": f"RA {row['magnitude']:.3g} {row['arithmetic'][:3]}",
         "autoaug": f"AA {row['arithmetic'][:3]}"}.get(row["augname"], "none")
  print(f"{row['label']:<18} {row['size']:>4} {aug:>12} "
        f"{row['ours_images_per_s']:>8.1f} "
        f"{row['baseline_images_per_s']:>8.1f} {row['speedup']:>7.2f} "
        f"{row['ours_cpu_ms_per_image']:>8.2f} "
        f"{row['baseline_cpu_ms_per_image']:>8.2f} "
        f"{row['cpu_speedup']:>6.2f}", flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.serve:
    serve()
    return
  try:  # a bad --ours_prep fails here, before the conversion
    specs = ab_specs() if FLAGS.baseline_dir else None
  except errors.ConfigError as err:
    raise app.UsageError(f"--ours_prep: {err}") from None
  print("Machine: " + ", ".join(
      f"{k}={v}" for k, v in bench_util.machine().items()))
  data_dir = FLAGS.data_dir or convert_samples(FLAGS.samples_dir)
  try:
    source = make_source(data_dir)
    if FLAGS.baseline_dir:
      changed = f" ({', '.join(FLAGS.ours_prep)})" if FLAGS.ours_prep else ""
      print(f"Ours{changed}: {REPO_DIR}; baseline: {FLAGS.baseline_dir}; "
            f"batch {FLAGS.batch_size}, {FLAGS.num_batches} timed batches after "
            f"{FLAGS.warmup_batches}, median of {FLAGS.repeats} alternating "
            "runs; images/s (wall) and CPU ms per image (all threads)")
      print(AB_HEADER)
      print("-" * len(AB_HEADER))
      rows = compare(data_dir, specs)
    else:
      rows = [measure_size(source, int(s)) for s in FLAGS.sizes]
  finally:
    if not FLAGS.data_dir:
      shutil.rmtree(data_dir, ignore_errors=True)
  if FLAGS.baseline_dir:
    json_out = FLAGS.json_out
    if json_out == FLAGS["json_out"].default:
      json_out = json_out.replace(
          ".json", "_ab_changed.json" if FLAGS.ours_prep else "_ab.json")
    bench_util.write_results(json_out, {
        "benchmark": "input_pipeline_ab", "baseline_dir": FLAGS.baseline_dir,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": {
            k: FLAGS[k].value for k in ("data_dir", "batch_size",
                                        "num_batches", "warmup_batches",
                                        "repeats", "ours_prep")},
        "results": rows})
    return
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
