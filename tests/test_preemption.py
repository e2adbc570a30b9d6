"""SIGTERM (preemption) and SIGINT (Ctrl-C): save, one line, exit 143/130.

Real driver processes on the smoke config get signals mid-training, mid-save
(EFFNETV2_FAULT=delay_save), mid-evaluation (delay_eval) and before
training (delay_start); a rerun of the same command resumes at the saved
step and, for main.py with --deterministic, ends with the weights of an
uninterrupted run. Two workers stop together. Also: the signal plumbing
in-process and the checkpointer's wall-time rule with a fake clock.
"""

import itertools
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
from effnetv2_tf.training import preemption
from conftest import checkpoint_variables
from conftest import driver_env

from test_multi_worker import _free_ports

ROOT = pathlib.Path(__file__).resolve().parents[1]
# On the smoke config (configs/datasets.py): 2 stages of 20 steps.
HPARAMS = ("train.steps=40,runtime.steps_per_loop=1,train.checkpoint_every=8,"
           "train.log_every=1")
RESUME = "; rerun the same command to resume."
_RUNS = itertools.count()
_STARTED = []  # every Driver's process, killed after its test


@pytest.fixture(autouse=True)
def _no_process_left():
  yield
  while _STARTED:
    _STARTED.pop().kill()  # nothing when it has ended


class Driver:
  """One driver process, its stdout and stderr in files (polled)."""

  def __init__(self, tmp_path, driver, model_dir, hparams=HPARAMS,
               extra=(), fault=None, mode="train", env=None):
    name = f"{pathlib.Path(model_dir).name}-{next(_RUNS)}"
    self.out, self.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    env = driver_env(fault, **(env or {}))
    with open(self.out, "w") as out, open(self.err, "w") as err:
      self.process = subprocess.Popen(
          [sys.executable, str(ROOT / driver), "--model=efficientnetv2-b0",
           "--dataset_cfg=smoke", f"--mode={mode}",
           f"--model_dir={model_dir}", f"--hparam_str={hparams}", *extra],
          env=env, stdout=out, stderr=err)
    _STARTED.append(self.process)

  def wait_for(self, pattern, timeout=300):
    """Waits for a stdout line matching `pattern`; returns its match."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      for line in self.out.read_text().splitlines():
        match = re.search(pattern, line)
        if match:
          return match
      assert self.process.poll() is None, (
          f"exited ({self.process.returncode}) before {pattern!r}:\n"
          + self.out.read_text()[-2000:] + self.err.read_text()[-3000:])
      time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in {timeout} s")

  def send(self, signum):
    self.process.send_signal(signum)

  def stop_at(self, pattern, signum):
    """Sends `signum` once stdout has a line matching `pattern`; returns
    `finish()`."""
    self.wait_for(pattern)
    self.send(signum)
    return self.finish()

  def finish(self, timeout=300):
    """(exit status, stdout, stderr) once the process ends."""
    code = self.process.wait(timeout=timeout)
    return code, self.out.read_text(), self.err.read_text()


def _stopped(code, err, status):
  """The exit status is `status`, stderr holds no traceback; returns the
  one 'Interrupted ...' line."""
  assert "Traceback" not in err, err[-3000:]
  assert code == status, err[-3000:]
  lines = [l for l in err.splitlines() if l.startswith("Interrupted")]
  assert len(lines) == 1, err[-3000:]
  assert err.rstrip().endswith(lines[0])  # the last word
  return lines[0]


def _latest_step(model_dir):
  return int(tf.train.latest_checkpoint(str(model_dir)).rsplit("-", 1)[1])


def _finished(driver, steps):
  """A rerun's output: resumed at `steps` of 40 and ran to the end."""
  code, out, err = driver.finish()
  assert code == 0, err[-3000:]
  assert re.search(rf"Restored \S+: step {steps} of 40", out), out[-2000:]
  return out


# ----------------------------------------------------------------- units
def test_signals_stop_at_once_outside_and_wait_inside_deferred_blocks():
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  with preemption.watching("before training started."):
    with pytest.raises(preemption.Interrupted) as stop:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)  # the handler raises within
    assert stop.value.status == 143
    assert str(stop.value) == "Interrupted (SIGTERM) before training started."
  with preemption.watching("during training."):
    with pytest.raises(preemption.Interrupted) as stop:
      with preemption.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert preemption.requested() == signal.SIGINT  # no raise here
        os.kill(os.getpid(), signal.SIGTERM)  # a second one: ignored
        time.sleep(0.1)
        assert preemption.requested() == signal.SIGINT
      # Leaving the block with the signal not yet acted on stops the run.
    assert stop.value.status == 130
    assert str(stop.value) == "Interrupted (SIGINT) during training."
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before
  assert preemption.requested() is None


def test_checkpointer_saves_after_the_configured_wall_time(tmp_path):
  now = [100.0]
  value = tf.Variable(0.0)
  saver = checkpointer_lib.Checkpointer(
      str(tmp_path), {"value": value}, keep=3, minutes=2,
      clock=lambda: now[0])
  assert not saver.due(0, 1)
  now[0] += 119.9
  assert not saver.due(1, 2)
  now[0] += 0.1  # 2 minutes since the checkpointer was made
  assert saver.due(2, 3)
  saver.save(3)
  assert not saver.due(3, 4)  # the clock restarts at each save
  now[0] += 120
  assert saver.due(4, 5)
  saver.save(3)  # step 3 is saved already: still restarts the clock
  assert not saver.due(5, 6)
  both = checkpointer_lib.Checkpointer(
      str(tmp_path), {}, keep=1, every=5, minutes=1, clock=lambda: now[0])
  assert both.due(4, 5) and not both.due(5, 6)  # steps, then time
  now[0] += 60
  assert both.due(5, 6)
  off = checkpointer_lib.Checkpointer(
      str(tmp_path), {}, keep=1, minutes=0, clock=lambda: now[0])
  now[0] += 1e9
  assert not off.due(0, 1)


# --------------------------------------------------------------- drivers
@pytest.mark.slow
def test_main_sigterm_then_sigint_mid_save_then_rerun_equals_whole(
    tmp_path):
  extra = ("--deterministic",)
  # Uninterrupted (beside the others), with a save at each device call's
  # end 0.06 s after the last save: time-based checkpoints, which change
  # no weight.
  whole = Driver(tmp_path, "main.py", tmp_path / "whole", extra=extra,
                 hparams=HPARAMS + ",train.checkpoint_minutes=0.001,"
                 "train.keep_checkpoints=100")
  model_dir = tmp_path / "run"
  first = Driver(tmp_path, "main.py", model_dir, extra=extra)
  code, out, err = first.stop_at(r"^step \d+/40 ", signal.SIGTERM)
  line = _stopped(code, err, 143)
  match = re.fullmatch(r"Interrupted \(SIGTERM\) at step (\d+) of 40: saved "
                       rf"(\S+)/ckpt-(\d+){re.escape(RESUME)}", line)
  assert match, line
  step = int(match.group(1))
  assert 1 <= step < 16 and match.group(2) == str(model_dir)
  assert int(match.group(3)) == step == _latest_step(model_dir)
  assert out.splitlines()[-1].startswith(f"step {step}/40 ")  # no step after

  # The save of step 16 sleeps 3 s between writing its files and naming
  # them; two Ctrl-Cs there wait for it, then the run stops.
  second = Driver(tmp_path, "main.py", model_dir, extra=extra,
                  fault="delay_save@16")
  second.wait_for(r"^EFFNETV2_FAULT: delay_save at step 16")
  second.send(signal.SIGINT)
  time.sleep(0.5)
  second.send(signal.SIGINT)
  code, out, err = second.finish()
  assert re.search(rf"Restored \S+: step {step} of 40", out), out[-2000:]
  assert _stopped(code, err, 130) == (
      f"Interrupted (SIGINT) at step 16 of 40: saved {model_dir}/ckpt-16"
      + RESUME)
  assert _latest_step(model_dir) == 16

  out = _finished(Driver(tmp_path, "main.py", model_dir, extra=extra), 16)
  assert "Restored the stage 1 input iterator" in out
  code, _, err = whole.finish()
  assert code == 0, err[-3000:]
  saved = len(list((tmp_path / "whole").glob("ckpt-*.index")))
  assert saved > 7, saved  # steps 8, 16, 20, 24, 32, 40 without the time
  expected = checkpoint_variables(str(tmp_path / "whole" / "ckpt-40"))
  resumed = checkpoint_variables(str(model_dir / "ckpt-40"))
  assert expected.keys() == resumed.keys() and len(expected) > 100
  differ = [k for k in expected
            if not np.array_equal(expected[k], resumed[k])]
  assert not differ, differ[:5]  # bit for bit: weights, EMA, optimizer, RNG


@pytest.mark.slow
def test_fit_sigint_mid_training_saves_and_the_rerun_finishes(tmp_path):
  model_dir = tmp_path / "run"
  first = Driver(tmp_path, "main_tf2.py", model_dir)
  code, _, err = first.stop_at(r"^step \d+/40 ", signal.SIGINT)
  line = _stopped(code, err, 130)
  match = re.fullmatch(r"Interrupted \(SIGINT\) at step (\d+) of 40: saved "
                       rf"{re.escape(str(model_dir))}/ckpt-(\d+)"
                       rf"{re.escape(RESUME)}", line)
  assert match, line
  step = int(match.group(1))
  assert 1 <= step < 40 and int(match.group(2)) == step
  assert _latest_step(model_dir) == step
  _finished(Driver(tmp_path, "main_tf2.py", model_dir), step)
  summary = json.loads((model_dir / "summary.json").read_text())
  assert summary["final_step"] == 40
  assert [h["step"] for h in summary["history"]] == list(range(1, 41))


@pytest.mark.slow
def test_signals_during_evaluations_and_before_training(tmp_path):
  model_dir = tmp_path / "run"
  hparams = "train.steps=12,runtime.steps_per_loop=1"
  # Stage 1 (steps 1-6) ends with its checkpoint, then its evaluation,
  # which waits 3 s before its first batch.
  first = Driver(tmp_path, "main.py", model_dir, hparams=hparams,
                 mode="train_and_eval", fault="delay_eval@6")
  code, out, err = first.stop_at(r"^EFFNETV2_FAULT: delay_eval at step 6",
                                 signal.SIGTERM)
  assert _stopped(code, err, 143) == (
      "Interrupted (SIGTERM) during the evaluation of stage 1 at step 6 of "
      f"12: its checkpoint {model_dir}/ckpt-6 is saved" + RESUME)
  assert not re.search("^eval at step", out, re.M)
  assert _latest_step(model_dir) == 6
  rerun = Driver(tmp_path, "main.py", model_dir, hparams=hparams,
                 mode="train_and_eval")
  code, out, err = rerun.finish()
  assert code == 0, err[-3000:]
  assert re.search(r"Restored \S+: step 6 of 12", out), out[-2000:]
  summary = json.loads((model_dir / "summary.json").read_text())
  # Stage 1 is recorded without its evaluation; stage 2 and the run with.
  assert "top1" not in summary["stages"][0] and "top1" in summary["stages"][1]
  assert summary["eval"]["top1"] == summary["stages"][1]["top1"]

  # --mode=eval (main_tf2.py reads main.py's run) writes nothing.
  written = (model_dir / "summary.json").read_text()
  evaluation = Driver(tmp_path, "main_tf2.py", model_dir, hparams="",
                      mode="eval", fault="delay_eval@12")
  code, out, err = evaluation.stop_at(
      r"^EFFNETV2_FAULT: delay_eval at step 12", signal.SIGINT)
  assert _stopped(code, err, 130) == (
      "Interrupted (SIGINT) during the evaluation at step 12: no result was "
      "written; rerun the same command to evaluate.")
  assert (model_dir / "summary.json").read_text() == written

  # Before the model is built: at once, nothing written.
  fresh = tmp_path / "fresh"
  early = Driver(tmp_path, "main_tf2.py", fresh, hparams=hparams,
                 fault="delay_start@0")
  code, out, err = early.stop_at(
      r"^EFFNETV2_FAULT: delay_start at step 0", signal.SIGTERM)
  assert "Steps:" not in out  # printed once the model is built
  assert _stopped(code, err, 143) == (
      "Interrupted (SIGTERM) before training started; rerun the same "
      "command to start it.")
  assert tf.train.latest_checkpoint(str(fresh)) is None


def _catches(pid, signum):
  """Whether process `pid` has a handler for `signum` (/proc SigCgt)."""
  status = pathlib.Path(f"/proc/{pid}/status").read_text()
  caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16)
  return bool(caught >> (signum - 1) & 1)


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(),
                    reason="reads the signal mask from /proc")
def test_a_signal_while_tensorflow_imports_is_one_line(tmp_path):
  run = Driver(tmp_path, "main.py", tmp_path / "run")
  deadline = time.time() + 60
  while not _catches(run.process.pid, signal.SIGTERM):  # startup's handler
    assert time.time() < deadline and run.process.poll() is None
    time.sleep(0.01)
  run.send(signal.SIGTERM)  # TensorFlow's import takes seconds
  code, _, err = run.finish()
  assert _stopped(code, err, 143) == (
      "Interrupted (SIGTERM) while main.py started; nothing was written.")
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_workers_stop_and_save_at_the_same_step(tmp_path):
  """MultiWorkerMirroredStrategy: the one signalled worker stops both."""
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  model_dir = tmp_path / "run"
  workers = [Driver(
      tmp_path, "main.py", model_dir, extra=("--strategy=multi_worker",),
      hparams=HPARAMS + ",train.checkpoint_minutes=0.001",
      env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {
          "type": "worker", "index": index}})}) for index in (0, 1)]
  workers[1].wait_for(r"^step \d+/40 ")
  workers[1].send(signal.SIGTERM)  # the non-chief
  results = [worker.finish() for worker in workers]
  lines = [_stopped(code, err, 143) for code, _, err in results]
  step = _latest_step(model_dir)
  saved = f" at step {step} of 40: saved {model_dir}/ckpt-{step}" + RESUME
  assert lines == ["Interrupted (SIGTERM on another worker)" + saved,
                   "Interrupted (SIGTERM)" + saved]
  # Step 1 ended well over 0.06 s after the start: a time-based save,
  # which both workers joined.
  assert (model_dir / "ckpt-1.index").exists()
