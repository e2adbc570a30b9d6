"""Faults: a training process killed with SIGKILL resumes where it stopped."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

ROOT = pathlib.Path(__file__).resolve().parents[1]
HPARAMS = ("model.width_coefficient=0.25,model.depth_coefficient=0.34,"
           "train.steps=12,train.batch_size=16,eval.batch_size=60,"
           "progressive.num_stages=2,progressive.min_image_size=16,"
           "progressive.max_image_size=24,model.eval_size=24,"
           "runtime.steps_per_loop=1,train.checkpoint_every=1,"
           "data.shuffle_buffer=64")


def _command(driver, model_dir):
  return [sys.executable, str(ROOT / driver), "--model=efficientnetv2-b0",
          "--dataset_cfg=digits", "--mode=train", f"--model_dir={model_dir}",
          f"--hparam_str={HPARAMS}"]


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["main.py", "main_tf2.py"])
def test_sigkill_then_rerun_finishes_the_planned_steps(tmp_path, driver):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  model_dir = tmp_path / "run"
  process = subprocess.Popen(_command(driver, model_dir), env=env,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  killed_after = None
  while time.time() < deadline and process.poll() is None:
    latest = tf.train.latest_checkpoint(str(model_dir))
    if latest and int(latest.rsplit("-", 1)[1]) >= 3:
      process.send_signal(signal.SIGKILL)  # mid stage 1: no clean-up at all
      process.wait()
      killed_after = int(latest.rsplit("-", 1)[1])
      break
    time.sleep(0.2)
  assert killed_after is not None and killed_after < 12, "not killed mid-run"
  rerun = subprocess.run(_command(driver, model_dir), env=env,
                         capture_output=True, text=True, timeout=600,
                         check=False)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  resumed = re.search(r"Restored \S+: step (\d+) of 12", rerun.stdout)
  assert resumed, rerun.stdout[-2000:]
  assert killed_after <= int(resumed.group(1)) < 12
  summary = json.loads((model_dir / "summary.json").read_text())
  assert summary["final_step"] == 12  # the planned count, none twice
  assert [s["stage"] for s in summary["stages"]] == [0, 1]
  assert tf.train.latest_checkpoint(str(model_dir)).endswith("-12")
