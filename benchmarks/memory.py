"""Peak memory (RSS) of training at each progressive stage size.

For each image size of the model's 4-stage schedule (128 px up to its train
size, as main.py plans them) it runs, each in a fresh process, and reads
that process's peak resident set size (`os.wait4`'s `ru_maxrss`):

- main.py: a real training run at that size (one stage, `--steps` steps,
  digits resized to the size, EMA and checkpoints included);
- the lean train step of ours (default fast paths) and of keras.applications'
  EfficientNetV2 (the baseline), the same variant, size and batch, SGD.

It prints peak RSS in MiB with ours / keras.applications, so that users can
pick a batch size per stage (memory grows with batch x size^2 beyond the
fixed cost of TensorFlow and the weights).

  PYTHONPATH=. python benchmarks/memory.py [--model=efficientnetv2-b0]
      [--batch_size=32] [--sizes=128,149,170,192] [--steps=2]

`--recompute` compares instead our lean step with and without recomputation
(models/recompute.py, train.recompute) at each of `--sizes`, each in a
fresh process: the peak RSS minus the RSS once the model, batch and
optimizer are built (what the training step itself adds), and the median
step time of `--steps` timed steps after one untimed (traced) step, with
the ratios with / without. It writes `--recompute_json_out`.

  PYTHONPATH=. python benchmarks/memory.py --recompute
      --model=efficientnetv2-s --sizes=300,384 --batch_size=8 --steps=3
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
from effnetv2_tf import config as config_lib
from effnetv2_tf.models import recompute
from effnetv2_tf.models import registry
from effnetv2_tf.training import progressive
import effnetv2_tf

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "efficientnetv2-b0",
                    "Our model name; keras.applications' is the same "
                    "variant (efficientnetv2-b0 -> EfficientNetV2B0).")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_list("sizes", None, "Image sizes (default: the 4 stage sizes "
                  "main.py plans for --model, 128 px to its train size).")
flags.DEFINE_integer("steps", 2, "Train steps per process.")
flags.DEFINE_enum("lean", None, ["ours", "applications", "ours_recomputed"],
                  "Internal: run one lean-step process and exit.")
flags.DEFINE_bool("timed", False, "Internal, with --lean: one more untimed "
                  "first step; print the RSS before the step and step times.")
flags.DEFINE_integer("size", None, "Internal: image size of --lean.")
flags.DEFINE_string("json_out", "benchmarks/results/memory.json",
                    "Where to write the results ('' to skip).")
flags.DEFINE_bool("recompute", False,
                  "Compare our lean step with and without recomputation "
                  "at each of --sizes (see the module docstring).")
flags.DEFINE_string("recompute_json_out",
                    "benchmarks/results/memory_recompute.json",
                    "Where --recompute writes its results ('' to skip).")

MIB = 1024.0  # ru_maxrss is in KiB on Linux
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Recomputed:
  """`model` as `bench_util.lean_train_step` calls it, its training pass
  recomputed (`recompute.training_forward`)."""

  def __init__(self, model):
    self.trainable_variables = model.trainable_variables
    self._forward = recompute.training_forward(model)

  def __call__(self, images, training):
    assert training
    return self._forward(images)


def _rss_mib():
  """This process's resident set size now, in MiB."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / MIB
  raise RuntimeError("no VmRSS in /proc/self/status")


def lean_child():
  """Trains --steps lean steps of one model at --size (in a fresh process).

  --timed: one more, untimed, first step (the trace), and one JSON line
  printed: the RSS once the model, batch and optimizer are built, and the
  time of each timed step.
  """
  shape = (FLAGS.size, FLAGS.size, 3)
  if FLAGS.lean == "applications":
    model = bench_util.applications_model(FLAGS.model, shape)
  else:
    model = effnetv2_tf.create_model(FLAGS.model, input_shape=shape)
  images, labels = map(tf.constant,
                       bench_util.random_batch(FLAGS.size, FLAGS.batch_size))
  optimizer = bench_util.build_optimizer()
  optimizer.build(model.trainable_variables)
  built_mib = _rss_mib()
  step = bench_util.lean_train_step(
      _Recomputed(model) if FLAGS.lean == "ours_recomputed" else model,
      optimizer)
  if FLAGS.timed:
    step(images, labels).numpy()
  times = []
  for _ in range(FLAGS.steps):
    started = time.perf_counter()
    step(images, labels).numpy()
    times.append(time.perf_counter() - started)
  if FLAGS.timed:
    print(json.dumps({"built_mib": built_mib, "step_s": times}))


def _run(command):
  """Runs `command`; returns (its peak RSS in MiB, its stdout) (raises if it
  failed)."""
  with tempfile.TemporaryFile("w+") as stdout:
    process = subprocess.Popen(command, cwd=REPO, stdout=stdout,
                               stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
      raise RuntimeError(f"{' '.join(command)} failed "
                         f"({process.returncode}):\n{stderr[-3000:]}")
    stdout.seek(0)
    return usage.ru_maxrss / MIB, stdout.read()


def _peak_mib(command):
  """Runs `command`; returns its peak RSS in MiB (raises if it failed)."""
  return _run(command)[0]


def _stage_sizes():
  if FLAGS.sizes:
    return [int(s) for s in FLAGS.sizes]
  train_size = registry.get_model_spec(FLAGS.model).train_size
  config = config_lib.build_config(
      model_name=FLAGS.model, dataset_cfg="digits", hparam_str=(
          "progressive.num_stages=4,progressive.min_image_size=128,"
          f"progressive.max_image_size={train_size}"))
  stages = progressive.plan_stages(config, total_steps=4)
  return [stage.image_size for stage in stages]


def _main_py_command(size, model_dir):
  hparams = ",".join([
      f"train.steps={FLAGS.steps}", f"train.batch_size={FLAGS.batch_size}",
      "progressive.num_stages=1", f"progressive.min_image_size={size}",
      f"progressive.max_image_size={size}", "train.log_every=1000000"])
  return [sys.executable, "main.py", f"--model={FLAGS.model}",
          "--dataset_cfg=digits", "--mode=train", f"--model_dir={model_dir}",
          f"--hparam_str={hparams}"]


def _timed_child(script, size, lean):
  """(peak RSS - RSS before the step in MiB, peak RSS in MiB, median step
  seconds) of one `--lean --timed` process."""
  peak, stdout = _run([
      sys.executable, script, f"--model={FLAGS.model}",
      f"--batch_size={FLAGS.batch_size}", f"--steps={FLAGS.steps}",
      f"--size={size}", f"--lean={lean}", "--timed", "--json_out="])
  report = json.loads([line for line in stdout.splitlines()
                       if line.startswith("{")][-1])
  return (peak - report["built_mib"], peak,
          statistics.median(report["step_s"]))


def compare_recompute(script):
  """--recompute: our step without and with recomputation per size."""
  rows = []
  for size in _stage_sizes():
    row = {"size": size, "batch": FLAGS.batch_size}
    for name, lean in (("plain", "ours"), ("recompute", "ours_recomputed")):
      (row[f"{name}_step_mib"], row[f"{name}_peak_mib"],
       row[f"{name}_step_s"]) = _timed_child(script, size, lean)
    row["memory_ratio"] = row["recompute_step_mib"] / row["plain_step_mib"]
    row["time_ratio"] = row["recompute_step_s"] / row["plain_step_s"]
    print(f"{size} px: {row}", flush=True)
    rows.append(row)
  print(f"\n{FLAGS.model}, batch {FLAGS.batch_size}, float32, "
        f"TensorFlow {tf.__version__}, {bench_util.cpu_description()}; "
        f"memory: peak RSS minus RSS before the first step (MiB); time: "
        f"median of {FLAGS.steps} steps\n")
  print("| image size | memory without | memory with recompute | with / "
        "without | step without (s) | step with (s) | with / without |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['size']} | {r['plain_step_mib']:.0f} | "
          f"{r['recompute_step_mib']:.0f} | {r['memory_ratio']:.2f} | "
          f"{r['plain_step_s']:.2f} | {r['recompute_step_s']:.2f} | "
          f"{r['time_ratio']:.2f} |")
  bench_util.write_results(FLAGS.recompute_json_out, {
      "model": FLAGS.model, "batch_size": FLAGS.batch_size,
      "steps": FLAGS.steps, "results": rows})


def main(argv):
  del argv
  if FLAGS.lean:
    lean_child()
    return
  script = os.path.abspath(__file__)
  if FLAGS.recompute:
    compare_recompute(script)
    return
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for size in _stage_sizes():
      lean = [sys.executable, script, f"--model={FLAGS.model}",
              f"--batch_size={FLAGS.batch_size}", f"--steps={FLAGS.steps}",
              f"--size={size}", "--json_out="]
      row = {"size": size, "batch": FLAGS.batch_size}
      row["applications_mib"] = _peak_mib(lean + ["--lean=applications"])
      row["ours_mib"] = _peak_mib(lean + ["--lean=ours"])
      row["main_py_mib"] = _peak_mib(
          _main_py_command(size, os.path.join(tmp, str(size))))
      row["ratio"] = row["ours_mib"] / row["applications_mib"]
      print(f"{size} px: {row}", flush=True)
      rows.append(row)
  print(f"\n{FLAGS.model}, batch {FLAGS.batch_size}, peak RSS (MiB), "
        f"{os.cpu_count()} CPUs, TensorFlow {tf.__version__}, float32\n")
  print("| image size | keras.applications step | ours step | "
        "ours / keras.applications | main.py training run |")
  print("|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['size']} | {r['applications_mib']:.0f} | "
          f"{r['ours_mib']:.0f} | {r['ratio']:.2f} | "
          f"{r['main_py_mib']:.0f} |")
  bench_util.write_results(FLAGS.json_out, {
      "model": FLAGS.model, "batch_size": FLAGS.batch_size,
      "steps": FLAGS.steps, "results": rows})


if __name__ == "__main__":
  app.run(main)
