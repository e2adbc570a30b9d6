"""main.py (custom loop) vs main_tf2.py (Model.fit) on the digits demo.

Runs both drivers one after the other, in fresh processes, with the same
command line (the digits config: seed, stages, 24 epochs, so both plan the
same four stages), and reports each one's final EMA top-1/top-5, wall time
and per-stage images/s from its summary.json, with main_tf2.py / main.py
ratios. Accuracy should agree within run-to-run noise (a point or two on
360 eval digits); the ratios say what Model.fit's loop costs.

  PYTHONPATH=. python benchmarks/drivers_digits.py [--hparam_str=...]
      [--out_dir=runs/drivers]
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

import bench_util  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVERS = ("main.py", "main_tf2.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("model", "efficientnetv2-b0", "Model to train.")
flags.DEFINE_string("hparam_str", "", "Extra config overrides for both.")
flags.DEFINE_string("out_dir", None,
                    "Keep the runs in OUT_DIR/main and OUT_DIR/main_tf2 "
                    "(e.g. for effnetv2_tf.plot); default: a temporary "
                    "folder, removed.")
flags.DEFINE_string("json_out", "benchmarks/results/drivers_digits.json",
                    "Where to write the results ('' to skip).")


def run_driver(driver, model_dir):
  """Trains with `driver`; returns its summary.json plus the wall time."""
  command = [sys.executable, os.path.join(ROOT, driver),
             f"--model={FLAGS.model}", "--dataset_cfg=digits",
             f"--model_dir={model_dir}", "--mode=train_and_eval"]
  if FLAGS.hparam_str:
    command.append(f"--hparam_str={FLAGS.hparam_str}")
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  started = time.time()
  subprocess.run(command, check=True, env=env)
  seconds = time.time() - started
  with open(os.path.join(model_dir, "summary.json")) as f:
    summary = json.load(f)
  return {"driver": driver, "seconds": seconds, "eval": summary["eval"],
          "final_step": summary["final_step"],
          "stages": [{k: s[k] for k in ("image_size", "steps",
                                         "images_per_sec", "retrace_seconds",
                                         "top1")}
                     for s in summary["stages"]]}


def main(argv):
  del argv
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for driver in DRIVERS:
      name = os.path.splitext(driver)[0]  # main, main_tf2
      results.append(run_driver(driver, os.path.join(FLAGS.out_dir or tmp,
                                                     name)))
  base, fit = results
  print("\n| driver | top-1 | top-5 | wall (s) | images/s per stage |")
  print("|---|---:|---:|---:|---|")
  for r in results:
    rates = ", ".join(f"{s['images_per_sec']:.0f}" for s in r["stages"])
    print(f"| {r['driver']} | {r['eval']['top1']:.4f} | "
          f"{r['eval']['top5']:.4f} | {r['seconds']:.0f} | {rates} |")
  ratios = {
      "top1_diff": fit["eval"]["top1"] - base["eval"]["top1"],
      "wall_ratio": fit["seconds"] / base["seconds"],
      "images_per_sec_ratio": [
          f["images_per_sec"] / b["images_per_sec"]
          for f, b in zip(fit["stages"], base["stages"])]}
  print(f"\nmain_tf2.py - main.py top-1: {ratios['top1_diff']:+.4f}; "
        f"wall time ratio {ratios['wall_ratio']:.2f}; images/s ratio per "
        "stage " + ", ".join(f"{r:.2f}" for r in
                             ratios["images_per_sec_ratio"]))
  bench_util.write_results(FLAGS.json_out, {
      "hparam_str": FLAGS.hparam_str, "results": results, "ratios": ratios})


if __name__ == "__main__":
  app.run(main)
