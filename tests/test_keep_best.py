"""Keep-best checkpoints (train.keep_best; the reference's --archive_ckpt,
efficientnetv2/main.py L404-405, utils.py:archive_ckpt): best/ holds the
checkpoint of the best evaluation so far, --checkpoint=best reads it."""

import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf import driver
from effnetv2_tf import errors
from effnetv2_tf.models import ema as ema_lib
from effnetv2_tf.runs import checkpoints
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import checkpointer as checkpointer_lib

from conftest import ROOT
from conftest import driver_env

METRIC = "eval/acc_top1"


def _objects():
  """A tiny model, its optimizer and EMA: what a run checkpoints."""
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  optimizer = keras.optimizers.SGD(0.1)
  optimizer.build(model.trainable_variables)
  return dict(model=model, optimizer=optimizer,
              ema=ema_lib.ExponentialMovingAverage(model, 0.9))


def _checkpointer(model_dir, objects, task_id=None):
  return checkpointer_lib.Checkpointer(str(model_dir), objects, keep=2,
                                       task_id=task_id)


def _at_step(objects, step):
  """The objects as at `step`: the kernel holds `step` everywhere."""
  objects["model"].layers[0].kernel.assign(np.full((3, 2), float(step)))
  objects["optimizer"].iterations.assign(step)


def _restored_kernel(prefix):
  """The kernel and step a fresh model restores from `prefix`."""
  objects = _objects()
  tf.train.Checkpoint(**objects).restore(prefix).expect_partial()
  return (objects["model"].layers[0].kernel.numpy(),
          int(objects["optimizer"].iterations.numpy()))


def _keep_sequence(model_dir, scores, objects=None, **kwargs):
  """keep_best over (step, score) pairs; the returned booleans."""
  objects = objects or _objects()
  keeper = _checkpointer(model_dir, objects, **kwargs)
  kept = []
  for step, score in scores:
    _at_step(objects, step)
    kept.append(keeper.keep_best(step, score, METRIC))
  return keeper, kept


def test_keeps_only_the_best_of_a_sequence(tmp_path):
  # A tie (step 4) keeps the later, as the reference (utils.py L245:
  # only a lower score is refused); NaN never wins; step 5 is the best.
  scores = [(1, 0.30), (2, 0.50), (3, 0.45), (4, 0.50), (5, 0.70),
            (6, float("nan")), (7, 0.69)]
  keeper, kept = _keep_sequence(tmp_path, scores)
  assert kept == [True, True, False, True, True, False, False]
  assert sorted(os.listdir(tmp_path / "best")) == [
      "best.json", "checkpoint", "ckpt-5.data-00000-of-00001",
      "ckpt-5.index"]
  assert json.loads((tmp_path / "best" / "best.json").read_text()) == {
      "step": 5, "metric": METRIC, "score": 0.70, "checkpoint": "ckpt-5"}
  assert keeper.best == {"step": 5, "metric": METRIC, "score": 0.70,
                         "checkpoint": "ckpt-5"}
  kernel, step = _restored_kernel(str(tmp_path / "best" / "ckpt-5"))
  np.testing.assert_array_equal(kernel, np.full((3, 2), 5.0))
  assert step == 5
  # best/ is a checkpoint directory of its own (--init_checkpoint=RUN/best).
  assert tf.train.latest_checkpoint(str(tmp_path / "best")) == str(
      tmp_path / "best" / "ckpt-5")
  # Nothing in the run directory itself: the run's checkpoints are apart.
  assert sorted(os.listdir(tmp_path)) == ["best"]


def test_the_best_survives_a_new_checkpointer(tmp_path):
  _keep_sequence(tmp_path, [(3, 0.6)])
  again, kept = _keep_sequence(tmp_path, [(8, 0.5), (9, 0.6), (10, 0.8)])
  assert kept == [False, True, True]
  assert again.best["step"] == 10
  assert sorted(os.listdir(tmp_path / "best")) == [
      "best.json", "checkpoint", "ckpt-10.data-00000-of-00001",
      "ckpt-10.index"]


def test_no_best_before_an_evaluation(tmp_path):
  assert _checkpointer(tmp_path, _objects()).best is None
  assert not (tmp_path / "best").exists()  # reading writes nothing


def test_other_workers_save_into_their_scratch(tmp_path):
  _keep_sequence(tmp_path, [(2, 0.4)])
  before = sorted(os.listdir(tmp_path / "best"))
  # The chief's record decides for every worker: 0.3 is no better.
  worker, kept = _keep_sequence(tmp_path, [(3, 0.3), (4, 0.5)], task_id=1)
  assert kept == [False, True]
  assert sorted(os.listdir(tmp_path / "best")) == before
  assert (tmp_path / "worker_tmp_1" / "best" / "ckpt-4.index").exists()
  worker.remove_scratch()
  assert sorted(os.listdir(tmp_path)) == ["best"]


def test_a_failed_write_is_one_line_and_keeps_the_record(tmp_path):
  (tmp_path / "best").write_text("a file where best/ goes")
  keeper = _checkpointer(tmp_path, _objects())
  with pytest.raises(checkpointer_lib.CheckpointError) as raised:
    keeper.keep_best(4, 0.5, METRIC)
  message = str(raised.value)
  assert message.startswith(
      f"Could not write the best checkpoint of step 4 to {tmp_path}/best: ")
  assert message.endswith("and rerun the same command to resume from it.")
  assert "\n" not in message
  assert keeper.best is None


def test_stale_temp_of_a_best_save_is_removed(tmp_path):
  (tmp_path / "best" / "ckpt-3_temp").mkdir(parents=True)
  (tmp_path / "ckpt-4_temp").mkdir()
  assert checkpointer_lib.remove_stale_temp(str(tmp_path)) == [
      "best/ckpt-3_temp", "ckpt-4_temp"]
  assert sorted(os.listdir(tmp_path)) == ["best"]


def test_checkpoint_of_names_latest_best_or_a_prefix(tmp_path):
  objects = _objects()
  run = _checkpointer(tmp_path, objects)
  for step, score in ((1, 0.9), (2, 0.1)):
    _at_step(objects, step)
    run.save(step)
    run.keep_best(step, score, METRIC)
  assert run_dir.checkpoint_of(str(tmp_path), None) == f"{tmp_path}/ckpt-2"
  assert run_dir.checkpoint_of(str(tmp_path), "latest") == (
      f"{tmp_path}/ckpt-2")
  assert run_dir.checkpoint_of(str(tmp_path), "best") == (
      f"{tmp_path}/best/ckpt-1")
  assert run_dir.checkpoint_of(None, f"{tmp_path}/ckpt-1") == (
      f"{tmp_path}/ckpt-1")
  # Its run (config.json, labels.txt) is the folder above best/.
  assert run_dir.run_of_checkpoint(f"{tmp_path}/best/ckpt-1") == str(
      tmp_path)
  assert run_dir.run_of_checkpoint(f"{tmp_path}/ckpt-2") == str(tmp_path)


def test_a_run_without_best_is_one_line(tmp_path):
  with pytest.raises(errors.MissingInputError) as raised:
    run_dir.checkpoint_of(str(tmp_path), "best")
  assert str(raised.value) == (
      f"--checkpoint=best: {tmp_path} has no best/ checkpoint (train with "
      "train.keep_best=true and an eval cadence or --mode=train_and_eval).")
  with pytest.raises(errors.MissingInputError, match="needs --model_dir"):
    run_dir.checkpoint_of(None, "best")


@pytest.mark.parametrize("given, message", [
    (dict(mode="train"), "--checkpoint=best picks the checkpoint --mode=eval "
     "evaluates; --mode=train resumes from the latest one: drop it."),
    (dict(mode="eval", init_checkpoint="elsewhere"),
     "--checkpoint=best and --init_checkpoint both name the weights to "
     "evaluate; give one."),
])
def test_checkpoint_flag_misuse_is_one_line(tmp_path, given, message):
  values = types.SimpleNamespace(**{"checkpoint": "best",
                                    "init_checkpoint": None, **given})
  with pytest.raises(errors.ConfigError) as raised:
    driver._eval_checkpoint(values, str(tmp_path))  # pylint: disable=protected-access
  assert str(raised.value) == message


def _smoke_run(model_dir):
  """A smoke-config run directory: step 1 (best, score 0.9) and step 2
  (latest, 0.1) with EMA weights apart; the two EMA weight lists."""
  config = config_lib.build_config("efficientnetv2-b0", "smoke")
  config_lib.save_config(config, str(model_dir))
  model = run_dir.model_from_config(config.model, 10)
  optimizer = keras.optimizers.SGD(0.1)
  optimizer.build(model.trainable_variables)
  ema = ema_lib.ExponentialMovingAverage(model, 0.9)
  run = _checkpointer(model_dir, dict(model=model, optimizer=optimizer,
                                      ema=ema))
  emas = []
  for step, score in ((1, 0.9), (2, 0.1)):
    optimizer.iterations.assign(step)
    for shadow in ema.shadows:
      shadow.assign(shadow * 0.5 + 0.01 * step)
    emas.append([shadow.numpy() for shadow in ema.shadows])
    run.save(step)
    run.keep_best(step, score, METRIC)
  return emas


def _ema_of(model):
  """The EMA shadows' values of a loaded run model, in `ema.shadows`'
  order (a new EMA of it copies its weights)."""
  return [s.numpy() for s in ema_lib.ExponentialMovingAverage(model,
                                                              0.0).shadows]


def test_a_best_checkpoint_loads_with_its_runs_config(tmp_path):
  best_ema, latest_ema = _smoke_run(tmp_path)
  model, config, prefix = checkpoints.load_run_model(
      run_dir.best_prefix(str(tmp_path)), "--checkpoint=best")
  assert prefix == f"{tmp_path}/best/ckpt-1"
  assert config["model"]["name"] == "efficientnetv2-b0"
  for got, want in zip(_ema_of(model), best_ema):
    np.testing.assert_array_equal(got, want)
  assert any(not np.array_equal(a, b) for a, b in zip(best_ema, latest_ema))


@pytest.mark.slow
def test_export_cli_exports_the_best_checkpoint(tmp_path):
  best_ema, _ = _smoke_run(tmp_path / "run")

  def export_cli(model_dir, *args):
    return subprocess.run(
        [sys.executable, "-m", "effnetv2_tf.export",
         f"--model_dir={model_dir}", f"--export_dir={tmp_path}/out",
         "--checkpoint=best", *args], capture_output=True, text=True,
        env=driver_env(), timeout=300, check=False)

  (tmp_path / "nobest").mkdir()
  missing = export_cli(tmp_path / "nobest")
  assert missing.returncode == 1
  assert missing.stderr == (
      f"export: error: --checkpoint=best: {tmp_path}/nobest has no best/ "
      "checkpoint (train with train.keep_best=true and an eval cadence or "
      "--mode=train_and_eval).\n")
  result = export_cli(tmp_path / "run")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[0] == (
      f"Exporting efficientnetv2-b0 ({tmp_path}/run/best/ckpt-1, EMA "
      "weights) at 24 px")
  served = tf.saved_model.load(f"{tmp_path}/out")
  images = np.random.default_rng(3).normal(size=(2, 24, 24, 3))
  config = config_lib.build_config("efficientnetv2-b0", "smoke")
  model = run_dir.model_from_config(config.model, 10)
  ema = ema_lib.ExponentialMovingAverage(model, 0.0)
  for shadow, value in zip(ema.shadows, best_ema):
    shadow.assign(value)
  ema.copy_to_model()
  got = served.signatures["preprocessed"](
      images=tf.constant(images, tf.float32))["probabilities"].numpy()
  want = tf.nn.softmax(model(images.astype(np.float32), training=False))
  np.testing.assert_allclose(got, want, atol=1e-5)


def _main(*args):
  return subprocess.run([sys.executable, str(ROOT / "main.py"), *args],
                        capture_output=True, text=True, env=driver_env(),
                        timeout=600, check=False)


@pytest.mark.slow
def test_eval_of_checkpoint_best_restores_and_exports_the_best(tmp_path):
  from effnetv2_tf.training import custom_loop  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  config = config_lib.build_config(
      "efficientnetv2-b0", "smoke",
      "train.warmup_epochs=0,train.steps=6,runtime.steps_per_loop=3")
  trainer = custom_loop.CustomLoopTrainer(config, str(run),
                                          tf.distribute.get_strategy())
  config_lib.save_config(trainer.config, str(run))
  trainer.train()  # saves ckpt-3 and ckpt-6 at the two stage ends
  evals = {}
  for step, score in ((3, 0.9), (6, 0.1)):  # scores as a trainer gives
    trainer.restore(f"{run}/ckpt-{step}")
    evals[step] = trainer.evaluate()["top1"]
    trainer.checkpointer.keep_best(step, score, METRIC)
    if step == 3:
      with trainer.ema_model() as model:
        images = np.random.default_rng(5).normal(size=(2, 24, 24, 3))
        want = tf.nn.softmax(model(images.astype(np.float32),
                                   training=False)).numpy()

  before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
  result = _main(f"--model_dir={run}", "--mode=eval", "--checkpoint=best",
                 f"--export_dir={tmp_path}/export")
  assert result.returncode == 0, result.stderr[-3000:]
  assert (f"Restored {run}/best/ckpt-3: step 3 of 6 (the best {METRIC} "
          "0.9000)") in result.stdout
  assert f"top-1 {evals[3]:.4f}" in result.stdout
  assert (f"Exported SavedModel (EMA weights of {run}/best/ckpt-3) to "
          f"{tmp_path}/export") in result.stdout
  got = tf.saved_model.load(f"{tmp_path}/export").signatures["preprocessed"](
      images=tf.constant(images, tf.float32))["probabilities"].numpy()
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Eval reads the run and writes nothing there.
  assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

  nobest = _main(f"--model_dir={run}", "--mode=train", "--checkpoint=best")
  assert nobest.returncode == 1
  assert nobest.stderr.endswith("--mode=train resumes from the latest one: "
                                "drop it.\n")
  (run / "best" / "best.json").unlink()
  missing = _main(f"--model_dir={run}", "--mode=eval", "--checkpoint=best")
  assert missing.returncode == 1
  assert missing.stderr == (
      f"main.py: error: --checkpoint=best: {run} has no best/ checkpoint "
      "(train with train.keep_best=true and an eval cadence or "
      "--mode=train_and_eval).\n")
