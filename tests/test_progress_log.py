"""Progress lines (run_log.progress_due) and summary.json's stage numbers:
the same rule for main.py's custom loop and main_tf2.py's Model.fit."""

import json
import pathlib
import shutil

import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf import plot
from effnetv2_tf.training import custom_loop
from effnetv2_tf.training import fit_loop
from effnetv2_tf.training import reporter as reporter_lib
from effnetv2_tf.training import run_log

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_progress_every_is_log_every_or_a_tenth_of_the_run():
  assert run_log.progress_every(100, 30) == 3  # the 30-step finetune
  assert run_log.progress_every(100, 109_200) == 100  # ImageNet: log_every
  assert run_log.progress_every(100, 35) == 4  # ceil(3.5)
  assert run_log.progress_every(100, 5) == 1


def test_a_line_every_30_seconds_between_step_marks():
  # One-step calls of 12 s each, a mark every 10 steps, a 25-step stage: a
  # line after the first call, whenever the next call would end more than
  # 30 s after the last line (24 s since it, + 12), at the marks 10 and 20
  # and at the end: no gap over 30 s.
  printed, last = [], 0.0
  for step in range(1, 26):
    now = 12.0 * step
    if run_log.progress_due(step - 1, step, 10, 25, step == 1, now - last,
                            12.0):
      printed.append(step)
      last = now
  assert printed == [1, 3, 5, 7, 9, 10, 12, 14, 16, 18, 20, 22, 24, 25]
  assert max(b - a for a, b in zip(printed, printed[1:])) * 12.0 <= 30.0


def test_a_call_that_reaches_a_mark_prints():
  calls = [(0, 1), (1, 4), (4, 8), (8, 12), (12, 16), (16, 20)]
  printed = [end for start, end in calls
             if run_log.progress_due(start, end, 10, 20, start == 0, 0.0)]
  assert printed == [1, 12, 20]  # first call, past 10, the end


def test_a_call_lasts_about_30_seconds_at_most():
  clock = run_log.StageClock(global_batch=16)
  assert clock.steps_within(30.0) is None  # no call yet
  clock.first_call = (20.0, 1)  # a first call that traced: 20 s
  assert clock.steps_within(30.0) == 1
  clock.timed_seconds, clock.timed_steps = 10.0, 4  # 2.5 s a step
  assert clock.steps_within(30.0) == 12
  assert clock.steps_within(1.0) == 1  # a step slower than that: one


def _printed_steps(cls, tmp_path):
  recorder = reporter_lib.Recorder()
  config = config_lib.build_config(
      "efficientnetv2-b0", "smoke", "train.warmup_epochs=0,train.steps=40,"
      "runtime.steps_per_loop=8")
  trainer = cls(config, str(tmp_path), tf.distribute.get_strategy(),
                reporter=recorder)
  trainer.train()
  return [(int(l.split()[1].split("/")[0]), "first call" in l)
          for l in recorder.lines if l.startswith("step ")]


@pytest.mark.slow
def test_both_drivers_print_the_same_steps(tmp_path, monkeypatch):
  monkeypatch.setattr(run_log, "PROGRESS_SECONDS", 1e9)  # steps only
  # 40 steps, 2 stages of 20, log_every 100: a line every 4 steps (a tenth).
  # main.py's first call of a stage is one step (1, 21); fit's first
  # execution is gcd(steps_per_loop 8, epoch 20, stage 20, 4) = 4 steps.
  marks = [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
  loop = _printed_steps(custom_loop.CustomLoopTrainer, tmp_path / "loop")
  fit = _printed_steps(fit_loop.FitTrainer, tmp_path / "fit")
  assert [s for s, _ in loop] == sorted(marks + [1, 21])
  assert [s for s, first in loop if first] == [1, 21]
  assert [s for s, _ in fit] == marks
  assert [s for s, first in fit if first] == [4, 24]
  # The same lines but main.py's 1-step first calls (fit's first execution
  # ends on a mark).
  assert [s for s, first in loop if not first] == [s for s, _ in fit]


def test_a_summary_numbered_from_0_reads_from_1(tmp_path):
  # tests/data/run_before_issue32: stages written as 0 and 1.
  old = tmp_path / "run"
  shutil.copytree(ROOT / "tests" / "data" / "run_before_issue32", old)
  before = json.loads((old / "summary.json").read_text())
  assert [s["stage"] for s in before["stages"]] == [0, 1]
  log = run_log.RunLog(str(old), True, {})
  assert [s["stage"] for s in log.summary["stages"]] == [1, 2]
  # A rerun of stage 2 replaces its entry rather than adding a third.
  log.record_stage(dict(before["stages"][1], stage=2, steps=99))
  on_disk = json.loads((old / "summary.json").read_text())
  assert [(s["stage"], s["steps"]) for s in on_disk["stages"]] == [
      (1, before["stages"][0]["steps"]), (2, 99)]
  # Its plots still draw, the learning rate from the logged history.
  fig = plot.plot_learning_curve(log.summary)
  lines = {l.get_label(): l for ax in fig.axes for l in ax.get_lines()}
  assert list(lines["learning rate"].get_xdata()) == [
      h["step"] for h in on_disk["history"]]
  assert fig.axes[0].get_title().endswith(": 2 stages, paper preset")
