"""Faults: kills (outside and inside a checkpoint save) and a full disk.

Faults inside a save come from `effnetv2_tf.training.faults` (EFFNETV2_FAULT), so
they hit the exact moment under test on every run.
"""

import errno
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf.training import checkpointer as checkpointer_lib
from effnetv2_tf.training import faults
from conftest import checkpoint_variables
from conftest import driver_env
from conftest import finished

ROOT = pathlib.Path(__file__).resolve().parents[1]
# On the smoke config (configs/datasets.py): 2 stages, batch 16.
HPARAMS = ("train.steps=12,train.batch_size=16,runtime.steps_per_loop=1,"
           "train.checkpoint_every=1")


# Long enough, at a rate high enough, for the loss to fall clearly.
LEARNING_HPARAMS = HPARAMS.replace("train.steps=12", "train.steps=40").replace(
    "train.batch_size=16", "train.batch_size=32").replace(
        "train.checkpoint_every=1", "train.checkpoint_every=2") + (
            ",train.warmup_epochs=0,train.lr_base=0.02,"
            "train.lr_schedule=constant,train.weight_decay=0,"
            "progressive.max_mixup=0,train.label_smoothing=0")


def _command(driver, model_dir, hparams=HPARAMS, extra=()):
  return [sys.executable, str(ROOT / driver), "--model=efficientnetv2-b0",
          "--dataset_cfg=smoke", "--mode=train", f"--model_dir={model_dir}",
          f"--hparam_str={hparams}", *extra]


def _run(driver, model_dir, fault=None, **kwargs):
  return subprocess.run(_command(driver, model_dir, **kwargs),
                        env=driver_env(fault), capture_output=True, text=True,
                        timeout=600, check=False)


def _beside(driver, model_dir, **kwargs):
  """`_run`'s process started beside the caller's next ones; call the
  returned function for its CompletedProcess."""
  process = subprocess.Popen(_command(driver, model_dir, **kwargs),
                             env=driver_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)

  return lambda: finished(process)


def _latest_step(model_dir):
  return int(tf.train.latest_checkpoint(str(model_dir)).rsplit("-", 1)[1])


def _losses(model_dir):
  summary = json.loads((model_dir / "summary.json").read_text())
  assert summary["final_step"] == summary["total_steps"]
  return [(h["step"], h["loss"]) for h in summary["history"]]


def test_fault_spec_errors_name_the_variable(monkeypatch):
  monkeypatch.setenv(faults.ENV, "explode@3")
  with pytest.raises(ValueError, match="EFFNETV2_FAULT='explode@3'"):
    with faults.checkpoint_save(3):
      pass
  monkeypatch.setenv(faults.ENV, "kill_after_save@3")
  with faults.checkpoint_save(2) as options:  # another step: no fault
    assert options is None


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["main.py", "main_tf2.py"])
def test_sigkill_then_rerun_finishes_the_planned_steps(tmp_path, driver):
  model_dir = tmp_path / "run"
  process = subprocess.Popen(_command(driver, model_dir), env=driver_env(),
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
  rerun = _run(driver, model_dir)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  resumed = re.search(r"Restored \S+: step (\d+) of 12", rerun.stdout)
  assert resumed, rerun.stdout[-2000:]
  assert killed_after <= int(resumed.group(1)) < 12
  summary = json.loads((model_dir / "summary.json").read_text())
  assert summary["final_step"] == 12  # the planned count, none twice
  assert [s["stage"] for s in summary["stages"]] == [1, 2]
  assert tf.train.latest_checkpoint(str(model_dir)).endswith("-12")


@pytest.mark.slow
def test_deterministic_resume_after_kill_in_save_equals_uninterrupted(
    tmp_path):
  extra = ("--deterministic",)
  whole = _beside("main.py", tmp_path / "whole", extra=extra)
  killed_dir = tmp_path / "killed"
  killed = _run("main.py", killed_dir, fault="kill_in_save@5", extra=extra)
  whole = whole()
  assert whole.returncode == 0, whole.stderr[-3000:]
  assert killed.returncode == -signal.SIGKILL
  # Killed inside the save of step 5: its files are there, but the state
  # file still names step 4, which reads back whole.
  assert (killed_dir / "ckpt-5.index").exists()
  assert _latest_step(killed_dir) == 4
  assert checkpoint_variables(str(killed_dir / "ckpt-4"))
  rerun = _run("main.py", killed_dir, extra=extra)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "Restored the stage 1 input iterator" in rerun.stdout
  expected = checkpoint_variables(str(tmp_path / "whole" / "ckpt-12"))
  resumed = checkpoint_variables(str(killed_dir / "ckpt-12"))
  assert expected.keys() == resumed.keys() and len(expected) > 100
  differ = [k for k in expected if not np.array_equal(expected[k],
                                                      resumed[k])]
  assert not differ, differ[:5]  # bit for bit: weights, EMA, optimizer, RNG


@pytest.mark.slow
def test_fit_resume_continues_the_loss(tmp_path):
  """main_tf2.py restarts a resumed stage's data order; the loss goes on."""
  extra = ("--deterministic",)
  whole = _beside("main_tf2.py", tmp_path / "whole", extra=extra,
                  hparams=LEARNING_HPARAMS)
  killed_dir = tmp_path / "killed"
  killed = _run("main_tf2.py", killed_dir, fault="kill_after_save@14",
                extra=extra, hparams=LEARNING_HPARAMS)
  whole = whole()
  assert whole.returncode == 0, whole.stderr[-3000:]
  assert killed.returncode == -signal.SIGKILL
  assert _latest_step(killed_dir) == 14
  rerun = _run("main_tf2.py", killed_dir, extra=extra,
               hparams=LEARNING_HPARAMS)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "Restored " in rerun.stdout and "step 14 of 40" in rerun.stdout
  history = _losses(killed_dir)
  expected, resumed = dict(_losses(tmp_path / "whole")), dict(history)
  # summary.json is saved with every checkpoint: steps 1-14 from the killed
  # run, 15-40 from the rerun, each once.
  assert [step for step, _ in history] == list(range(1, 41))
  # Logged losses are fit's running means over an epoch; stage 2 (steps
  # 21-40) is one whole epoch in both runs. Measured: 3.09 uninterrupted,
  # 2.99 resumed, from 4.08 at step 1.
  assert abs(resumed[40] - expected[40]) < 0.1 * expected[40]
  assert resumed[40] < expected[1] - 0.5


@pytest.mark.slow
def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path):
  model_dir = tmp_path / "run"
  result = _run("main.py", model_dir, fault="disk_full@4")
  assert result.returncode == 1
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith("main.py: error: Could not write the checkpoint "
                            "of step 4"), result.stderr[-2000:]
  assert "ckpt-3) is kept" in message
  assert _latest_step(model_dir) == 3
  assert checkpoint_variables(str(model_dir / "ckpt-3"))
  assert not list(model_dir.glob("ckpt-4*"))  # the partial save is removed


def _saved_once(model_dir):
  """A Checkpointer of one variable in `model_dir` that saved step 1."""
  saver = checkpointer_lib.Checkpointer(
      str(model_dir), {"v": tf.Variable([1.0, 2.0])}, keep=2)
  saver.save(1)
  return saver


def test_a_full_disk_says_free_disk_space(tmp_path, monkeypatch):
  saver = _saved_once(tmp_path)
  monkeypatch.setenv(faults.ENV, "disk_full@2")  # EFBIG inside TensorFlow
  with pytest.raises(checkpointer_lib.CheckpointError) as raised:
    saver.save(2)
  assert str(raised.value).endswith(
      f"The latest checkpoint ({tmp_path}/ckpt-1) is kept; free disk space "
      "and rerun the same command to resume from it.")
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_run_dir_says_not_writable(tmp_path):
  saver = _saved_once(tmp_path)
  tmp_path.chmod(0o555)
  try:
    with pytest.raises(checkpointer_lib.CheckpointError) as raised:
      saver.save(2)
  finally:
    tmp_path.chmod(0o755)
  assert f"make {tmp_path} writable and rerun" in str(raised.value)
  assert "disk space" not in str(raised.value)


@pytest.mark.parametrize("error", [
    # What TensorFlow's file system raises for EACCES, and Python's own.
    tf.errors.PermissionDeniedError(None, None, "ckpt-2_temp; Permission "
                                    "denied"),
    OSError(errno.EROFS, os.strerror(errno.EROFS)),
])
def test_a_denied_write_says_not_writable(tmp_path, monkeypatch, error):
  saver = _saved_once(tmp_path)

  def denied(**_):
    raise error

  monkeypatch.setattr(saver._manager, "save", denied)  # pylint: disable=protected-access
  with pytest.raises(checkpointer_lib.CheckpointError) as raised:
    saver.save(2)
  assert str(raised.value).endswith(
      f"is kept; make {tmp_path} writable and rerun the same command to "
      "resume from it.")
