"""effnetv2_tf.plot: the schedule and learning-curve pictures of a run."""

import json
import pathlib
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest

from effnetv2_tf import plot

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _summary():
  stage = dict(cutmix_alpha=0.0, images_per_sec=1.0, retrace_seconds=0.0)
  return {
      "model": "efficientnetv2-b0", "dataset": "digits", "preset": "paper",
      "stages": [
          dict(stage, stage=1, image_size=16, steps=10, randaug_magnitude=0.0,
               mixup_alpha=0.0, dropout=0.1, top1=0.5),
          dict(stage, stage=2, image_size=24, steps=20, randaug_magnitude=5.0,
               mixup_alpha=0.2, dropout=0.3, top1=0.75)],
      "history": [{"step": s, "loss": 3.0 - 0.05 * s,
                   "learning_rate": 0.001 * s} for s in range(1, 31)],
  }


def _lines(fig):
  return {line.get_label(): list(zip(*line.get_data()))
          for ax in fig.axes for line in ax.get_lines()}


def test_stage_bounds_follow_the_step_counts():
  assert plot.stage_bounds(_summary()) == [(0, 10), (10, 30)]


def test_schedule_draws_each_stage_value_over_its_steps():
  fig = plot.plot_schedule(_summary())
  size_line = fig.axes[0].get_lines()[0]
  assert list(zip(*size_line.get_data())) == [(0, 16), (10, 16), (10, 24),
                                              (30, 24)]
  lines = _lines(fig)
  assert lines["dropout rate"] == [(0, 0.1), (10, 0.1), (10, 0.3), (30, 0.3)]
  assert lines["mixup alpha"] == [(0, 0.0), (10, 0.0), (10, 0.2), (30, 0.2)]
  assert lines["RandAugment magnitude"][-1] == (30, 5.0)
  assert "CutMix alpha" not in lines  # zero in every stage: not drawn
  plt.close(fig)


def test_schedule_has_no_randaugment_axis_when_magnitude_is_zero():
  summary = _summary()
  for stage in summary["stages"]:
    stage["randaug_magnitude"] = 0.0
  fig = plot.plot_schedule(summary)
  assert len(fig.axes) == 2  # size and alpha/rate; no empty twin axis
  assert "RandAugment magnitude" not in _lines(fig)
  plt.close(fig)


def test_learning_curve_has_the_loss_history_and_stage_end_evals():
  summary = _summary()
  fig = plot.plot_learning_curve(summary)
  lines = _lines(fig)
  assert lines["training loss"] == [(h["step"], h["loss"])
                                    for h in summary["history"]]
  assert lines["eval top-1"] == [(10, 0.5), (30, 0.75)]
  assert lines["learning rate"][-1] == (30, 0.03)
  labels = [t.get_text() for t in fig.axes[0].texts]
  assert labels == ["16 px", "24 px"]
  plt.close(fig)


def _finetune(warmup_steps):
  """A one-stage, 30-step run logged at steps 1 and 30 (log_every 100)."""
  stage = dict(stage=1, image_size=24, steps=30, randaug_magnitude=0.0,
               mixup_alpha=0.0, cutmix_alpha=0.0, dropout=0.2,
               images_per_sec=1.0, retrace_seconds=0.0)
  return {
      "model": "efficientnetv2-b0", "dataset": "digits", "preset": "paper",
      "num_stages": 1, "total_steps": 30, "stages": [stage],
      "history": [{"step": 1, "loss": 2.0, "learning_rate": 0.001},
                  {"step": 30, "loss": 1.0, "learning_rate": 0.004}],
      "learning_rate_schedule": dict(
          base_lr=0.004, total_steps=30, warmup_steps=warmup_steps,
          schedule="constant", decay_steps=1, decay_factor=0.97)}


def test_the_learning_rate_is_drawn_at_every_step_of_its_schedule():
  # 4 warmup steps of a 30-step run logged at steps 1 and 30 only: the rate
  # rises 0.001 a step from 0 and first reaches its peak at step 4.
  fig = plot.plot_learning_curve(_finetune(4))
  steps, rates = zip(*_lines(fig)["learning rate"])
  assert list(steps) == list(range(31))
  assert rates[:5] == pytest.approx([0.0, 0.001, 0.002, 0.003, 0.004])
  assert steps[rates.index(max(rates))] == 4
  assert rates[-1] == pytest.approx(0.004)
  plt.close(fig)


def test_a_one_stage_run_is_titled_one_stage_without_a_preset():
  fig = plot.plot_schedule(_finetune(4))
  assert fig.axes[0].get_title() == (
      "Training schedule: efficientnetv2-b0 on digits (1 stage)")
  plt.close(fig)
  fig = plot.plot_learning_curve(_finetune(4))
  assert fig.axes[0].get_title() == "efficientnetv2-b0 on digits: 1 stage"
  plt.close(fig)
  fig = plot.plot_schedule(_summary())
  assert fig.axes[0].get_title() == (
      "Progressive learning: efficientnetv2-b0 on digits (2 stages, paper "
      "preset)")
  plt.close(fig)
  assert plot.stages_text(dict(_summary(), preset="random_resize",
                               num_stages=7)) == "7 random-resize stages"


def test_write_plots_writes_two_pngs(tmp_path):
  (tmp_path / "summary.json").write_text(json.dumps(_summary()))
  paths = plot.write_plots(str(tmp_path), str(tmp_path / "out"))
  assert [pathlib.Path(p).name for p in paths] == ["schedule.png",
                                                   "learning_curve.png"]
  for path in paths:
    assert pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_finished_stage_is_an_error(tmp_path):
  (tmp_path / "summary.json").write_text(json.dumps(
      dict(_summary(), stages=[])))
  with pytest.raises(ValueError, match="no finished stage"):
    plot.write_plots(str(tmp_path))


def test_cli_without_a_run_is_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "effnetv2_tf.plot",
       f"--model_dir={tmp_path / 'nothing'}"], cwd=ROOT, capture_output=True,
      text=True, timeout=120, check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f"plot: error: --model_dir {tmp_path / 'nothing'}: no summary.json "
      "(run training there first).")
