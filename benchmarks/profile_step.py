"""Where a training step's time goes: TensorFlow profiler, time per op type.

Traces `--steps` lean train steps (SGD, cross-entropy) of a model with
`tf.profiler` into --logdir, then, if the `xprof` package is importable
(`pip install xprof`; not a dependency of this project), prints the
self-time per TensorFlow op type from its framework_op_stats tool. The
trace also opens in TensorBoard's or xprof's profile viewer.

With --torch_python (a Python that imports torch and timm, as for
peers.py), the same step of timm's port of the model in channels-last
memory format (`tf_` + the name, e.g. tf_efficientnetv2_s) is profiled
with `torch.profiler` on the same batch, and both are summed into kernel
groups side by side (`bench_util.KERNEL_GROUPS`), with the GFLOP/s of the
convolutions: which kernels hold one framework behind the other, and by
how much.

  PYTHONPATH=. python benchmarks/profile_step.py [--model=efficientnetv2-b0]
      [--size=224] [--batch_size=32] [--bn_fused=false]
      [--torch_python=../peers-venv/bin/python]
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
import effnetv2_tf
from effnetv2_tf.models.flops import count_flops

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "efficientnetv2-b0", "Model to profile.")
flags.DEFINE_integer("size", 224, "Image size.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("steps", 3, "Profiled steps (after 2 warm-up steps).")
flags.DEFINE_bool("bn_fused", True, "TensorFlow's fused batch norm.")
flags.DEFINE_string("logdir", "/tmp/effnetv2_profile", "Trace output.")
flags.DEFINE_string("torch_python", None, "A Python that imports torch and "
                    "timm: profile timm's channels-last model beside ours.")
flags.DEFINE_string("json_out", "", "Where to write the kernel groups "
                    "('' to skip).")


def op_type_table(logdir, steps):
  """[(op type, ms per step, share)] from xprof, or None without xprof."""
  try:
    from xprof.convert import raw_to_tool_data  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  paths = tf.io.gfile.glob(f"{logdir}/plugins/profile/*/*.xplane.pb")
  data, _ = raw_to_tool_data.xspace_to_tool_data(
      [sorted(paths)[-1]], "framework_op_stats", {})
  table = json.loads(data)[0]
  ids = [c["id"] for c in table["cols"]]
  kind, self_time = ids.index("type"), ids.index("total_self_time")
  totals = {}
  for row in table["rows"]:
    cells = [c["v"] if c else None for c in row["c"]]
    totals[cells[kind]] = totals.get(cells[kind], 0.0) + cells[self_time]
  everything = sum(totals.values())
  return [(name, us / 1e3 / steps, us / everything)
          for name, us in sorted(totals.items(), key=lambda kv: -kv[1])]


def _timm_profile(python, images, labels):
  """timm's channels-last train step under torch.profiler (peers_torch)."""
  worker = bench_util.TorchWorker(python)
  try:
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "batch.npz")
      np.savez(path, images=images, labels=labels)
      timm_name = "tf_" + FLAGS.model.replace("-", "_")
      worker.setup(task="train", model=timm_name, batch_file=path,
                   warmup=2)
    return timm_name, worker.ask(cmd="profile", steps=FLAGS.steps)
  finally:
    worker.close()


def _compare(ours_ops, ours_wall, timm_name, timm, train_gflop):
  """Prints the kernel groups of both side by side; returns them."""
  ours = bench_util.kernel_groups(ours_ops)
  theirs = bench_util.kernel_groups(timm["ops"])
  conv = bench_util.KERNEL_GROUPS[0][0]
  print(f"\n| kernels (ms per step) | ours | {timm_name} channels-last | "
        "ours / timm |\n|---|---:|---:|---:|")
  for group, _ in bench_util.KERNEL_GROUPS:
    ratio = ours[group] / theirs[group] if theirs[group] else float("nan")
    print(f"| {group} | {ours[group]:.0f} | {theirs[group]:.0f} | "
          f"{ratio:.2f} |")
  print(f"| wall time of a profiled step | {ours_wall:.0f} | "
        f"{timm['wall_ms']:.0f} | {ours_wall / timm['wall_ms']:.2f} |")
  print(f"\nConvolutions and matmuls: {train_gflop:.1f} GFLOP a step (3x the "
        f"forward multiply-adds, 2 FLOPs each): ours "
        f"{train_gflop / ours[conv] * 1e3:.0f} GFLOP/s, timm "
        f"{train_gflop / theirs[conv] * 1e3:.0f} GFLOP/s. TensorFlow's times "
        "are summed over its executor threads (IDLE: a thread waiting), "
        "PyTorch's are its operators' self CPU time on the calling thread.")
  return {"ours_ms": ours, "timm_ms": theirs, "ours_wall_ms": ours_wall,
          "timm_wall_ms": timm["wall_ms"], "train_gflop": train_gflop,
          "timm_model": timm_name}


def main(argv):
  del argv
  size = FLAGS.size
  python = FLAGS.torch_python and bench_util.torch_python(FLAGS.torch_python)
  model = effnetv2_tf.create_model(FLAGS.model, input_shape=(size, size, 3),
                                   bn_fused=FLAGS.bn_fused)
  step = bench_util.lean_train_step(model)
  images, labels = bench_util.random_batch(size, FLAGS.batch_size)
  x, y = tf.constant(images), tf.constant(labels)
  for _ in range(2):
    step(x, y).numpy()
  tf.profiler.experimental.start(FLAGS.logdir)
  started = time.perf_counter()
  for _ in range(FLAGS.steps):
    step(x, y).numpy()
  wall_ms = 1e3 * (time.perf_counter() - started) / FLAGS.steps
  tf.profiler.experimental.stop()
  print(f"Trace in {FLAGS.logdir}")
  table = op_type_table(FLAGS.logdir, FLAGS.steps)
  if table is None:
    print("pip install xprof for the per-op-type table.")
    return
  print("| op type | self time (ms/step, summed over threads) | share |")
  print("|---|---:|---:|")
  for name, ms, share in table[:16]:
    print(f"| {name} | {ms:.0f} | {100 * share:.1f}% |")
  if not python:
    return
  flops_model = effnetv2_tf.create_model(FLAGS.model,
                                         input_shape=(size, size, 3))
  train_gflop = 6 * count_flops(flops_model) * FLAGS.batch_size / 1e9
  timm_name, timm = _timm_profile(python, images, labels)
  result = _compare({name: ms for name, ms, _ in table}, wall_ms, timm_name,
                    timm, train_gflop)
  bench_util.write_results(FLAGS.json_out, dict(
      result, model=FLAGS.model, size=size, batch=FLAGS.batch_size,
      steps=FLAGS.steps))


if __name__ == "__main__":
  app.run(main)
