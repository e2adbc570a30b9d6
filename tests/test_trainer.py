"""Tests of the custom training loop: stages, retracing, resume, EMA eval,
finetune; the checkpointer and the reporter."""

import json
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf.data import make_tfrecords
from effnetv2_tf.models import ema as ema_lib
from effnetv2_tf.runs import checkpoints
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import checkpointer as checkpointer_lib
from effnetv2_tf.training import custom_loop
from effnetv2_tf.training import reporter as reporter_lib
from effnetv2_tf.training import run_log
from effnetv2_tf.training import step as step_lib
from effnetv2_tf.training import trainer as trainer_lib

from conftest import SAMPLES
from conftest import observe_dropout

TINY = "train.warmup_epochs=0"  # on the smoke config (configs/datasets.py)


def _trainer(model_dir, hparams="", reporter=None):
  config = config_lib.build_config(
      "efficientnetv2-b0", "smoke", ",".join(filter(None, [TINY, hparams])))
  return custom_loop.CustomLoopTrainer(config, str(model_dir),
                                       tf.distribute.get_strategy(),
                                       reporter=reporter)


DROPOUTS = "progressive.min_dropout=0.1,progressive.max_dropout=0.6"


@pytest.mark.slow
@pytest.mark.parametrize("retrace, traces", [("", 1), (
    "runtime.retrace_per_stage=true", 2)])
def test_stages_share_one_trace_and_each_its_dropout(tmp_path, monkeypatch,
                                                     retrace, traces):
  trainer = _trainer(tmp_path, ",".join(filter(None, [
      "train.steps=8,runtime.steps_per_loop=3", DROPOUTS, retrace])))
  assert [s.image_size for s in trainer.stages] == [16, 24]
  assert [s.steps for s in trainer.stages] == [4, 4]
  assert [s.dropout for s in trainer.stages] == pytest.approx([0.1, 0.6])
  rates = observe_dropout(monkeypatch, trainer)
  summary = trainer.train()
  assert trainer.step == 8
  # Without XLA one trace serves both sizes; retrace_per_stage (XLA's
  # way) traces once per stage, although each stage's last loop is
  # shorter.
  assert trainer.traces == traces
  # The head's 16 x 320 features: the dropped share is within 0.03
  # (5 standard deviations) of each stage's rate.
  assert rates == pytest.approx([0.1, 0.6], abs=0.03)
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert on_disk["preset"] == "paper" and on_disk["model"] == summary["model"]
  assert [s["image_size"] for s in on_disk["stages"]] == [16, 24]
  for key in ("randaug_magnitude", "mixup_alpha", "cutmix_alpha", "dropout",
              "steps", "images_per_sec", "retrace_seconds"):
    assert key in on_disk["stages"][0]
  assert on_disk["history"][-1]["step"] == 8
  assert trainer.checkpointer.latest.endswith("-8")


@pytest.mark.slow
def test_resume_mid_stage_continues_at_the_right_step(tmp_path, monkeypatch):
  trainer = _trainer(tmp_path, "train.steps=8,runtime.steps_per_loop=1,"
                     "train.checkpoint_every=1")
  original_log = custom_loop.CustomLoopTrainer.record_progress

  def killed_at_step_3(self, stage, *args):
    if self.step == 3:
      raise KeyboardInterrupt  # stands in for a kill
    original_log(self, stage, *args)

  monkeypatch.setattr(custom_loop.CustomLoopTrainer, "record_progress",
                      killed_at_step_3)
  with pytest.raises(KeyboardInterrupt):
    trainer.train()
  monkeypatch.setattr(custom_loop.CustomLoopTrainer, "record_progress",
                      original_log)
  resumed = _trainer(tmp_path, "train.steps=8,runtime.steps_per_loop=1,"
                     "train.checkpoint_every=1")
  assert resumed.restore().endswith("-2")
  assert resumed.step == 2
  resumed.train()
  assert resumed.step == 8
  assert resumed.traces == 1  # the rest of stage 1, then stage 2
  # Numbered from 1, as the log's "stage 1/2".
  assert [s["stage"] for s in resumed.summary["stages"]] == [1, 2]


@pytest.mark.slow
def test_eval_uses_ema_weights_and_restores_raw(tmp_path):
  trainer = _trainer(tmp_path, "train.steps=4,train.ema_decay=0.9")
  trainer.train()
  raw = [v.numpy() for v in trainer.model.trainable_weights]
  shadows = [s.numpy() for s in trainer.ema.shadows]
  assert not np.allclose(raw[0], shadows[0])
  with_ema = trainer.evaluate()
  without = trainer.evaluate(use_ema=False)
  assert with_ema["eval_examples"] == without["eval_examples"] == 360
  for before, after in zip(raw, trainer.model.trainable_weights):
    np.testing.assert_array_equal(before, after.numpy())
  with trainer.ema.swapped():
    np.testing.assert_array_equal(trainer.model.trainable_weights[0].numpy(),
                                  shadows[0])


@pytest.mark.slow
def test_checkpoints_at_the_configured_steps_and_progress_lines(
    tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(run_log, "PROGRESS_SECONDS", 1e9)  # steps only
  # Saves every 3 steps with 2-step device calls: calls are cut at 3, 9, 15,
  # so the saves fall on multiples of 3 (and on the stage ends, 10 and 20).
  trainer = _trainer(tmp_path, "train.steps=20,runtime.steps_per_loop=2,"
                     "train.checkpoint_every=3,train.log_every=5,"
                     "train.keep_checkpoints=10")
  trainer.train()
  assert [int(p.rsplit("-", 1)[1]) for p in
          trainer.checkpointer.checkpoints] == [3, 6, 9, 10, 12, 15, 18, 20]
  assert trainer.traces == 1  # calls of 1 and 2 steps, 2 sizes: one trace
  lines = [l for l in capsys.readouterr().out.splitlines()
           if l.startswith("step ")]
  # Lines every 2 steps (a tenth of 20, fewer than log_every's 5), each
  # stage's 1-step first call (1, 11) and its end (10, 20); not the
  # checkpoint-cut calls' ends 3, 9, 15.
  assert [int(l.split()[1].split("/")[0]) for l in lines] == [
      1, 2, 4, 6, 8, 10, 11, 12, 14, 16, 18, 20]
  assert sum("first call" in l for l in lines) == 2
  assert sum("includes tracing" in l for l in lines) == 1  # stage 1's
  assert lines[0].startswith("step 1/20 stage 1/2")  # a 1-step first call
  assert re.search(r"images/s, ETA \d+:\d\d, elapsed \d+:\d\d$", lines[-1])


def test_clock_format():
  assert [run_log.clock(s) for s in (0, 59.6, 61, 3600 + 62)] == [
      "0:00", "1:00", "1:01", "1:01:02"]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path,
                                                         monkeypatch):
  trainer = _trainer(tmp_path, "train.steps=4,runtime.steps_per_loop=2,"
                     "train.checkpoint_every=2")
  trainer.train()
  latest = trainer.checkpointer.latest
  bad = _trainer(tmp_path, "train.steps=8,runtime.steps_per_loop=2,"
                 "train.checkpoint_every=2")
  bad.restore()
  monkeypatch.setattr(step_lib, "cross_entropy",
                      lambda labels, logits: tf.fill(
                          [tf.shape(labels)[0]], np.nan))
  # Stage 2's first call is its one-step call, 5.
  with pytest.raises(trainer_lib.TrainingError, match=r"step 5 \(stage 2\)"):
    bad.train()
  assert bad.checkpointer.latest == latest


@pytest.mark.slow
def test_finetune_skips_the_head_and_loads_ema(tmp_path):
  source_dir = tmp_path / "source"
  trainer = _trainer(source_dir, "train.steps=2,train.ema_decay=0.5")
  trainer.train()
  config_lib.save_config(trainer.config, str(source_dir))
  target = run_dir.model_from_config(trainer.config.model, 5, 0.1)
  loaded = checkpoints.init_from(target, str(source_dir))
  assert loaded == len(target.weights) - 2  # all but predictions kernel/bias
  ema_by_path = dict(zip(
      [v.path for v in ema_lib.ema_variables(trainer.model)],
      [s.numpy() for s in trainer.ema.shadows]))
  stem = target.get_layer("stem_conv").kernel
  np.testing.assert_array_equal(stem.numpy(), ema_by_path[stem.path])
  other = run_dir.model_from_config(config_lib.build_config(
      "efficientnetv2-b1", "digits").model, 10, 0.1)
  with pytest.raises(ValueError, match="only .* weights match"):
    checkpoints.init_from(other, str(source_dir))


def test_topk_hits_multi_label():
  # Reference main.py L279-283: acc_top1/acc_top5 score tf.argmax of the
  # multi-hot target (its lowest-index label); L263-270: precision@1 counts
  # the arg-max when it is any of the labels. By hand, per example:
  #   1: labels {0, 1}, arg-max 1, top-5 {1, 0, 2, 3, 4}: acc_top1 miss
  #      (1 != 0), acc_top5 hit, precision@1 hit;
  #   2: labels {5}, arg-max 0, top-5 {0..4}: all three miss;
  #   3: labels {2, 4}, arg-max 2: all three hit.
  labels = tf.constant([[0.5, 0.5, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1.0],
                        [0, 0, 0.5, 0, 0.5, 0]])
  logits = tf.constant([[2.0, 9, 1, 0.5, 0.2, -1], [9.0, 8, 7, 6, 5, 0],
                        [0.0, 1, 9, 2, 3, 4]])
  hits = step_lib.topk_hits(labels, logits, tf.constant([1.0, 1.0, 1.0]))
  np.testing.assert_array_equal(hits.numpy(), [1, 2, 2, 3])
  masked = step_lib.topk_hits(labels, logits, tf.constant([1.0, 0.0, 0.0]))
  np.testing.assert_array_equal(masked.numpy(), [0, 1, 1, 1])


def test_topk_hits_one_hot_counts_precision_as_top1():
  # One label per example: the lowest-index label is the label, so
  # acc_top1 and precision@1 count the same hits (main.py L263-283).
  labels = tf.one_hot([3, 0, 6], 7)
  logits = tf.constant([[0.0, 1, 2, 9, 3, 4, 5], [0.0, 9, 8, 7, 6, 5, 4],
                        [9.0, 8, 7, 6, 5, 4, 3]])
  hits = step_lib.topk_hits(labels, logits, tf.ones([3]))
  # 1: arg-max 3 hit; 2: label 0 is last but one (rank 7), a miss in top-5;
  # 3: label 6 is ranked 7th, a miss.
  np.testing.assert_array_equal(hits.numpy(), [1, 1, 1, 3])


@pytest.mark.slow
def test_imagenet_tfrecords_through_four_paper_stages(tmp_path):
  files = sorted(SAMPLES.glob("*.JPEG"))[:24]
  if len(files) < 24:
    pytest.skip(f"shared samples missing under {SAMPLES}")
  (tmp_path / "images").mkdir()
  for f in files:
    shutil.copy(f, tmp_path / "images" / f.name)
  make_tfrecords.convert(str(tmp_path / "images"), str(tmp_path / "records"),
                         num_shards=2, layout="flat")
  config = config_lib.build_config(
      "efficientnetv2-s", "imagenet",
      "model.width_coefficient=0.25,model.depth_coefficient=0.2,"
      "model.num_classes=24,train.steps=4,train.batch_size=4,"
      "data.minival_files=0,"  # 2 shards: no 20 to hold out for minival
      "runtime.steps_per_loop=1,progressive.min_image_size=32,"
      "progressive.max_image_size=64",
      data_dir=str(tmp_path / "records"))
  trainer = custom_loop.CustomLoopTrainer(config, str(tmp_path / "run"),
                                          tf.distribute.get_strategy())
  assert trainer.source.num_examples("train") == 24
  summary = trainer.train()
  assert trainer.step == 4 and trainer.traces == 1
  assert [s["image_size"] for s in summary["stages"]] == [32, 42, 53, 64]
  assert [s["randaug_magnitude"] for s in summary["stages"]] == pytest.approx(
      [5, 25 / 3, 35 / 3, 15])


def test_dropout_raised_from_zero_reaches_the_layer():
  model = run_dir.model_from_config(
      config_lib.build_config("efficientnetv2-b0", "smoke", TINY).model, 10,
      0.0)
  step_lib.set_dropout(model, 0.5)
  layer = model.get_layer("top_dropout")
  dropped = tf.function(lambda x: layer(x, training=True))(tf.ones([4000]))
  assert 0.45 < float(tf.reduce_mean(tf.cast(dropped == 0, tf.float32))) < 0.55


def test_a_bound_dropout_rate_changes_without_a_retrace():
  model = run_dir.model_from_config(
      config_lib.build_config("efficientnetv2-b0", "smoke", TINY).model, 10,
      0.0)
  step_lib.schedule_dropout(model)
  layer = model.get_layer("top_dropout")
  drop = tf.function(lambda x: layer(x, training=True))
  ones = tf.ones([20000])
  for rate in (0.0, 0.3, 0.8):
    step_lib.set_dropout(model, rate)
    out = drop(ones).numpy()
    # Kept values are scaled by 1 / (1 - rate), so the mean stays 1.
    assert np.mean(out == 0) == pytest.approx(rate, abs=0.02)
    assert np.unique(out[out > 0]) == pytest.approx([1 / (1 - rate)])
  assert drop.experimental_get_tracing_count() == 1
  # Inference ignores it; the layer has no weights (reference counts).
  assert np.all(layer(ones, training=False).numpy() == 1)
  assert not layer.weights


@pytest.fixture
def bfloat16_policy():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  yield
  keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_bfloat16_training_on_cpu_lowers_the_loss(tmp_path, bfloat16_policy,
                                                  monkeypatch):
  del bfloat16_policy
  monkeypatch.setattr(run_log, "PROGRESS_SECONDS", 1e9)  # calls cut by steps
  # The digits learning rate (0.004 at batch 64, scaled to batch 16) barely
  # moves the loss in a few dozen steps (CI saw 3.634 -> 3.640 over 24);
  # 10x that lowers it by about 0.8 in 48 steps (three runs: 0.74-0.87).
  trainer = _trainer(tmp_path, "train.steps=48,runtime.steps_per_loop=12,"
                     "train.lr_base=0.04,progressive.num_stages=1,"
                     "data.crop_area_min=1.0")
  model = trainer.model
  assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
  assert model.get_layer("stem_conv").kernel.dtype == "float32"
  assert model.get_layer("stem_bn").moving_mean.dtype == "float32"
  assert model.outputs[0].dtype == "float32"  # logits
  trainer.train()
  history = trainer.summary["history"]
  losses = [h["loss"] for h in history]
  # One entry per device call: the 1-step first call, then calls cut at
  # the multiples of 12 (steps_per_loop) and of 5 (progress lines every
  # tenth of the run).
  assert [h["step"] for h in history] == [
      1, 5, 10, 12, 15, 20, 24, 25, 30, 35, 36, 40, 45, 48]
  assert all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.3


def test_multi_label_eval_reports_the_reference_names(tmp_path, capsys):
  # On multi-label data evaluate adds precision@1 beside acc_top1/acc_top5
  # (main.py L262-283). The smoke digits are one-hot, so the two top-1
  # scores must agree (property of one label per example).
  trainer = _trainer(tmp_path, "train.steps=2")
  trainer.source.multi_label = True
  result = trainer.evaluate(use_ema=False)
  assert result["precision@1"] == result["top1"]
  assert 0 <= result["top1"] <= result["top5"] <= 1
  line = capsys.readouterr().out.splitlines()[-1]
  assert re.search(r"acc_top1 [\d.]+ acc_top5 [\d.]+ \(lowest-index label\) "
                   r"precision@1 [\d.]+ \(any label\)", line), line


@pytest.mark.slow
def test_a_recorder_keeps_every_line_and_nothing_is_printed(tmp_path,
                                                           capsys):
  log = tmp_path / "train.log"
  with open(log, "w") as stream:
    recorder = reporter_lib.Recorder(stream)
    trainer = _trainer(tmp_path / "run", "train.steps=2,"
                       "progressive.num_stages=1", reporter=recorder)
    trainer.train()
    trainer.evaluate()
    # A batch with unreadable images: its line says so, and a hint once.
    trainer.record_progress(trainer.stages[0], 1.0, None, 3)
    trainer.record_progress(trainer.stages[0], 1.0, None, 4)
  assert capsys.readouterr().out == ""
  lines = recorder.lines
  assert log.read_text().splitlines() == lines
  # The stage, the 1-step first call, the stage end, the eval, then the
  # two progress lines with their skipped counts and the one hint.
  assert len(lines) == 7, lines
  assert lines[0].startswith("stage 1/1: steps 0-2 (2), image size 24,")
  assert lines[1].startswith("step 1/2 stage 1/1 loss ")
  assert lines[2].startswith("step 2/2 stage 1/1 loss ")
  assert lines[3].startswith("eval at step 2 (24 px, 360 images, ")
  assert lines[4].endswith(", skipped 3")
  assert lines[5] == "skipped 3 unreadable image(s) (tf.data logs each error)"
  assert lines[6].endswith(", skipped 4")


def test_the_default_reporter_prints_flushed_lines(capsys):
  reporter_lib.Printer().line("stage 1/2")
  assert capsys.readouterr().out == "stage 1/2\n"


def test_checkpointer_saves_a_step_once_keeps_the_latest_and_restores(
    tmp_path):
  value = tf.Variable(0.0)
  written = []
  saver = checkpointer_lib.Checkpointer(str(tmp_path), {"value": value},
                                        keep=2)
  assert saver.restore() is None and saver.latest is None
  for step in (1, 2, 3, 3):  # step 3 twice: saved once
    value.assign(float(step))
    saver.save(step, then=lambda: written.append(saver.latest))
  assert written == [str(tmp_path / f"ckpt-{n}") for n in (1, 2, 3)]
  assert saver.checkpoints == [str(tmp_path / "ckpt-2"),
                               str(tmp_path / "ckpt-3")]
  assert not list(tmp_path.glob("ckpt-1.*"))  # only 2 kept
  value.assign(0.0)
  assert saver.restore() == str(tmp_path / "ckpt-3")
  assert value.numpy() == 3.0 and saver.restored_path.endswith("ckpt-3")
  saver.restore(str(tmp_path / "ckpt-2"))
  assert value.numpy() == 2.0


def test_checkpointer_saves_every_n_steps():
  every_3 = checkpointer_lib.Checkpointer("unused", {}, keep=1, every=3)
  # Calls ending at 2, 4 (crosses 3), 6 (reaches 6), 7, then one of 3..9.
  assert [every_3.due(a, b) for a, b in (
      (0, 2), (2, 4), (4, 6), (6, 7), (3, 9))] == [
          False, True, True, False, True]
  never = checkpointer_lib.Checkpointer("unused", {}, keep=1, every=0)
  assert not any(never.due(0, step) for step in range(1, 20))


def test_a_workers_checkpoints_go_to_its_scratch_directory(tmp_path):
  value = tf.Variable(1.0)
  worker = checkpointer_lib.Checkpointer(str(tmp_path), {"value": value},
                                         keep=1, task_id=2)
  worker.save(5)
  assert worker.latest == str(tmp_path / "worker_tmp_2" / "ckpt-5")
  assert tf.train.latest_checkpoint(str(tmp_path)) is None
  worker.remove_scratch()
  assert not (tmp_path / "worker_tmp_2").exists()
  chief = checkpointer_lib.Checkpointer(str(tmp_path), {"value": value},
                                        keep=1)
  chief.save(5)
  chief.remove_scratch()  # the run's own directory stays
  assert chief.latest == str(tmp_path / "ckpt-5")
