"""Tests of main_tf2.py's Model.fit training: stages, epochs, EMA, resume."""

import json
import math
import re

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf.data import pipeline
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import custom_loop
from effnetv2_tf.training import fit_loop
from effnetv2_tf.training import progressive
from effnetv2_tf.training import trainer as trainer_lib

from conftest import observe_dropout

TINY = "train.warmup_epochs=0"  # on the smoke config (configs/datasets.py)


def _fit_trainer(model_dir, hparams="", cls=fit_loop.FitTrainer):
  config = config_lib.build_config(
      "efficientnetv2-b0", "smoke", ",".join(filter(None, [TINY, hparams])))
  return cls(config, str(model_dir), tf.distribute.get_strategy())


def test_plan_rounds_stages_to_whole_epochs():
  config = config_lib.build_config("efficientnetv2-b0", "smoke", TINY)
  # 550 steps of 22-step epochs in 2 stages: 275 -> 264 (12 epochs), rest.
  stages = progressive.plan_stages(config, 550, epoch_steps=22)
  assert [s.steps for s in stages] == [264, 286]
  assert stages[1].start_step % 22 == 0
  # When M divides the epochs both drivers plan the same stages.
  assert progressive.plan_stages(config, 528, epoch_steps=22) == (
      progressive.plan_stages(config, 528))
  with pytest.raises(ValueError, match="whole 22-step epochs"):
    progressive.plan_stages(config, 40, epoch_steps=22)


@pytest.mark.slow
def test_fit_runs_two_stages_with_continuing_epochs(tmp_path, monkeypatch,
                                                   capsys):
  # 20 steps: a progress line every 2 (a tenth of the run), so fit runs
  # 2-step executions (steps_per_loop).
  trainer = _fit_trainer(tmp_path, "train.steps=20,runtime.steps_per_loop=2,"
                         "progressive.min_dropout=0.1,"
                         "progressive.max_dropout=0.6")
  assert trainer.epoch_steps == 10  # a stage of a tiny run is one epoch
  rates = observe_dropout(monkeypatch, trainer)
  summary = trainer.train()
  assert trainer.step == 20
  assert trainer.traces == 1  # one trace serves both stage sizes
  assert trainer.fit_model.history.epoch == [1]  # stage 2 ran epoch 1
  # Each stage's rate in its last step (16 x 320 features; 5 std. dev.).
  assert rates == pytest.approx([0.1, 0.6], abs=0.03)
  # main.py's progress lines: each stage's first call, then ETA and time.
  lines = [l for l in capsys.readouterr().out.splitlines()
           if l.startswith("step ")]
  assert lines[0].startswith("step 2/20 stage 1/2 loss ")
  assert "(first call: includes tracing), elapsed" in lines[0]
  assert sum("first call" in l for l in lines) == 2
  assert re.search(r"step 20/20 stage 2/2 loss \S+ lr \S+ [\d.]+ images/s, "
                   r"ETA 0:00, elapsed \d+:\d\d$", lines[-1])
  assert [s["image_size"] for s in summary["stages"]] == [16, 24]
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert on_disk["history"][-1]["step"] == 20
  assert all(math.isfinite(h["loss"]) for h in on_disk["history"])
  assert trainer.checkpointer.latest.endswith("-20")
  # One TensorBoard writer, the custom loop's: model_dir/train, a point per
  # 2-step execution, no rate for a stage's first (tracing) one.
  trainer.log.writer.flush()
  event_files = sorted(tmp_path.rglob("*tfevents*"))
  assert [f.parent for f in event_files] == [tmp_path / "train"]
  steps = {}
  for event in tf.compat.v1.train.summary_iterator(str(event_files[0])):
    for value in event.summary.value:
      steps.setdefault(value.tag, []).append(event.step)
  assert steps["loss"] == list(range(2, 21, 2))
  assert steps["images_per_sec"] == [4, 6, 8, 10, 14, 16, 18, 20]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
  """main.py stops after stage 1, main_tf2.py goes on (the same checkpoint
  format); EMA decay 0.9, so the EMA weights stand apart from the raw ones.
  One run for both tests below: (FitTrainer, what the run showed)."""
  model_dir = tmp_path_factory.mktemp("fit_resume")
  hparams = "train.steps=8,train.ema_decay=0.9"
  loop = _fit_trainer(model_dir, hparams, cls=custom_loop.CustomLoopTrainer)
  loop.train_stage(loop.stages[0])
  trainer = _fit_trainer(model_dir, hparams)
  shown = {"loop_latest": loop.checkpointer.latest,
           "restored": trainer.restore(), "restored_step": trainer.step}
  trainer.train()
  shown.update(step=trainer.step, traces=trainer.traces,
               epochs=trainer.fit_model.history.epoch)
  return trainer, shown


@pytest.mark.slow
def test_fit_resumes_a_custom_loop_checkpoint_in_the_right_stage(resumed):
  _, shown = resumed
  assert shown["loop_latest"].endswith("-4")
  assert shown["restored"].endswith("-4") and shown["restored_step"] == 4
  assert shown["step"] == 8
  assert shown["traces"] == 1  # only stage 2 ran
  assert shown["epochs"] == [1]


@pytest.mark.slow
def test_fit_eval_reads_the_ema_weights(resumed):
  trainer, _ = resumed
  raw = [v.numpy() for v in trainer.model.trainable_weights]
  shadows = [s.numpy() for s in trainer.ema.shadows]
  assert not np.allclose(raw[0], shadows[0])
  # The eval top-1 is the accuracy of the EMA weights, computed here with
  # Keras' predict over the same eval batches; the raw weights score apart.
  result = trainer.evaluate()
  config = trainer.config
  batches = list(pipeline.build_eval_dataset(
      trainer.source, 60, config.model.eval_size,
      run_dir.preprocessing_of(config)).as_numpy_iterator())

  def top1():
    hits = [np.sum((np.argmax(trainer.model.predict(b["images"], verbose=0),
                              -1) == np.argmax(b["labels"], -1)) * b["mask"])
            for b in batches]
    return np.sum(hits) / np.sum([b["mask"].sum() for b in batches])

  with trainer.ema.swapped():
    assert result["top1"] == pytest.approx(top1(), abs=1e-6)
  for before, after in zip(raw, trainer.model.trainable_weights):
    np.testing.assert_array_equal(before, after.numpy())


def test_nan_guard_names_step_and_stage(tmp_path):
  trainer = _fit_trainer(tmp_path, "train.steps=8")
  guard = fit_loop.NanGuard(trainer, trainer.stages[1])
  guard.on_train_batch_begin(0)
  with pytest.raises(trainer_lib.TrainingError, match=r"stage 2"):
    guard.on_train_batch_end(0, {"loss": float("nan")})
  guard.on_train_batch_end(0, {"loss": 1.0})  # finite: no error
