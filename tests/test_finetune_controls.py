"""The finetuning controls in both loops (training/finetune.py): a frozen
backbone's phase, then the whole network; an evaluation cadence; keep-best
offered every evaluation; resume in either phase; bad values one line.

One whole run per driver (module fixtures) on a two-block smoke model: 20
steps in one stage (as the finetune configs), the first 7 with the backbone
frozen, an evaluation every 5 steps; the other tests read or resume them.
"""

import json
import shutil
import signal
import types

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf import errors
from effnetv2_tf.models import ema as ema_lib
from effnetv2_tf.training import custom_loop
from effnetv2_tf.training import finetune
from effnetv2_tf.training import fit_loop
from effnetv2_tf.training import preemption
from effnetv2_tf.training import reporter as reporter_lib

from conftest import checkpoint_variables

# A fused block with a residual (stochastic depth) and an MBConv block with
# squeeze-excitation: every kind of layer, traced in seconds.
TINY = ("train.warmup_epochs=0,model.depth_coefficient=1.0,model.blocks="
        "r1_k3_s1_e1_i16_o16_c1 r1_k3_s2_e4_i16_o24_se0.25")
RUN = ("train.steps=20,progressive.num_stages=1,runtime.steps_per_loop=2,"
       "train.freeze_steps=7,train.eval_every_steps=5,"
       "runtime.deterministic=true")
FREEZE = 7
HEAD = "predictions/"  # the classifier's weights (models/model.py)
DRIVERS = {"loop": custom_loop.CustomLoopTrainer, "fit": fit_loop.FitTrainer}


def _trainer(cls, model_dir, hparams=RUN, reporter=None):
  config = config_lib.build_config(
      "efficientnetv2-b0", "smoke", ",".join(filter(None, [TINY, hparams])))
  return cls(config, str(model_dir), tf.distribute.get_strategy(),
             reporter=reporter or reporter_lib.Recorder())


def _state(trainer):
  """(model weights, optimizer variables, EMA shadows), by path."""
  model = trainer.model
  return ({v.path: v.numpy() for v in model.weights},
          {v.path: v.numpy() for v in trainer.optimizer.variables},
          {v.path: s.numpy() for v, s in zip(ema_lib.ema_variables(model),
                                             trainer.ema.shadows)})


def _watch(trainer):
  """{step: `_state`} after each device call (fit: execution), from now."""
  seen = {trainer.step: _state(trainer)}
  point = trainer.checkpoint_point

  def watched(start_step=None):
    seen[trainer.step] = _state(trainer)
    point(start_step)

  trainer.checkpoint_point = watched
  return seen


def _differ(a, b, backbone=True):
  """Paths of the backbone's (else the head's) weights that differ."""
  return sorted(p for p in a if p.startswith(HEAD) != backbone
                and not np.array_equal(a[p], b[p]))


def _whole_run(cls, model_dir):
  """An uninterrupted run with evaluations (the --mode=train_and_eval
  loop), its keep-best calls recorded."""
  trainer = _trainer(cls, model_dir, RUN + ",train.keep_best=true")
  kept = []
  keep_best = trainer.checkpointer.keep_best

  def recorded(step, score, metric):
    kept.append((step, score, metric))
    return keep_best(step, score, metric)

  trainer.checkpointer.keep_best = recorded
  seen = _watch(trainer)
  trainer.train(eval_every_stage=True)
  return types.SimpleNamespace(dir=model_dir, trainer=trainer, seen=seen,
                               kept=kept, lines=trainer.reporter.lines)


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
  return _whole_run(DRIVERS["loop"], tmp_path_factory.mktemp("loop"))


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
  return _whole_run(DRIVERS["fit"], tmp_path_factory.mktemp("fit"))


def _run_of(request, driver):
  return request.getfixturevalue(f"{driver}_run")


@pytest.mark.slow
@pytest.mark.parametrize("driver", DRIVERS)
def test_frozen_phase_trains_the_head_alone_then_everything(request, driver):
  run = _run_of(request, driver)
  weights0, slots0, _ = run.seen[0]
  frozen = sorted(s for s in run.seen if 0 < s <= FREEZE)
  assert frozen[-1] == FREEZE  # a device call (execution) ends at the switch
  for step in frozen:
    weights, slots, ema = run.seen[step]
    # Backbone weights and BN moving statistics as they were; the head
    # trains; the frozen backbone's EMA equals its weights.
    assert not _differ(weights0, weights), step
    assert _differ(weights0, weights, backbone=False) == [
        "predictions/bias", "predictions/kernel"]
    assert all(np.array_equal(ema[p], weights[p]) for p in ema
               if not p.startswith(HEAD))
  # The backbone's optimizer slots are their initial zeros at the switch.
  weights, slots, _ = run.seen[FREEZE]
  backbone_slots = [p for p in slots if "predictions" not in p
                    and not p.endswith(("iteration", "learning_rate"))]
  assert len(backbone_slots) > 20
  assert all(not slots[p].any() for p in backbone_slots)
  assert any(slots[p].any() for p in slots if "predictions" in p)
  # After it, the whole network: kernels, BN parameters and statistics.
  after = run.seen[20][0]
  changed = _differ(weights0, after)
  for path in ("stem_conv/kernel", "stem_bn/gamma", "stem_bn/moving_mean",
               "block2a_se_reduce/kernel", "top_bn/moving_variance"):
    assert path in changed
  assert any(run.seen[20][1][p].any() for p in backbone_slots)
  # One trace for the frozen step, one at the switch (without a frozen
  # phase one: test_trainer).
  assert run.trainer.traces == 2
  lines = run.lines
  frozen_line = lines.index(
      "steps 0-7: backbone frozen (batch norm in inference mode, no "
      "stochastic depth); only the head (predictions) trains")
  switch = lines.index(
      "step 7: backbone unfrozen; the whole network trains from here")
  assert lines[frozen_line - 1].startswith("stage 1/1")
  assert lines[switch - 1].startswith("step 7/20 stage 1/1")
  assert "(first call: includes tracing)" in lines[switch + 1]


@pytest.mark.slow
@pytest.mark.parametrize("driver", DRIVERS)
def test_the_cadence_evaluates_every_5_steps_and_at_stage_ends(request,
                                                               driver):
  run = _run_of(request, driver)
  # Every 5 steps, 20 (also the stage end) once.
  expected = [5, 10, 15, 20]
  assert [int(l.split()[3]) for l in run.lines
          if l.startswith("eval at step")] == expected
  summary = json.loads((run.dir / "summary.json").read_text())
  assert [e["step"] for e in summary["evals"]] == expected
  assert [e["stage"] for e in summary["evals"]] == [1, 1, 1, 1]
  assert summary["stages"][0]["top1"] == summary["evals"][-1]["top1"]
  # TensorBoard's eval/acc_top1 at the same steps.
  run.trainer.log.writer.flush()
  steps = [event.step for path in (run.dir / "train").glob("*tfevents*")
           for event in tf.compat.v1.train.summary_iterator(str(path))
           for value in event.summary.value
           if value.tag == "eval/acc_top1"]
  assert steps == expected
  # keep-best is offered each of them, scored by the eval top-1.
  assert run.kept == [(e["step"], e["top1"], "eval/acc_top1")
                      for e in summary["evals"]]


def _resumed(cls, whole, step, model_dir):
  """A run resumed from `whole`'s checkpoint of `step` (a kill there),
  trained to its end without evaluations (--mode=train)."""
  trainer = _trainer(cls, model_dir)
  assert trainer.restore(str(whole.dir / f"ckpt-{step}"))
  assert trainer.step == step
  seen = _watch(trainer)
  trainer.train()
  assert trainer.step == 20
  return trainer, seen


@pytest.mark.slow
@pytest.mark.parametrize("step", [5, 15])  # mid-frozen, mid-unfrozen
def test_loop_resume_in_either_phase_equals_the_uninterrupted_run(
    loop_run, tmp_path, step):
  # --deterministic's input position is in the checkpoint: bit for bit
  # (as test_faults' kill-and-resume of main.py).
  trainer, _ = _resumed(DRIVERS["loop"], loop_run, step, tmp_path)
  assert trainer.traces == (2 if step < FREEZE else 1)
  expected = checkpoint_variables(str(loop_run.dir / "ckpt-20"))
  resumed = checkpoint_variables(str(tmp_path / "ckpt-20"))
  assert expected.keys() == resumed.keys() and len(expected) > 100
  differ = [k for k in expected
            if not np.array_equal(expected[k], resumed[k])]
  assert not differ, differ[:5]


@pytest.mark.slow
@pytest.mark.parametrize("step", [5, 15])  # mid-frozen, mid-unfrozen
def test_fit_resume_takes_the_phase_of_the_restored_step(fit_run, tmp_path,
                                                         step):
  # fit restarts a resumed stage's data order (test_faults): the weights
  # go their own way, the phases follow the restored step.
  trainer, seen = _resumed(DRIVERS["fit"], fit_run, step, tmp_path)
  weights0 = fit_run.seen[0][0]
  lines = trainer.reporter.lines
  if step < FREEZE:
    assert max(s for s in seen if s <= FREEZE) == FREEZE
    assert all(not _differ(weights0, seen[s][0])
               for s in seen if s <= FREEZE)
    assert trainer.traces == 2
    assert "steps 5-7: backbone frozen" in lines[1]
    assert "step 7: backbone unfrozen; the whole network trains from here" \
        in lines
  else:
    assert trainer.traces == 1
    assert not any("backbone" in l for l in lines)
  assert "stem_conv/kernel" in _differ(seen[step][0], seen[20][0])


@pytest.mark.slow
def test_a_signal_in_a_cadence_evaluation_stops_saved_and_reevaluates(
    loop_run, tmp_path):
  cls = DRIVERS["loop"]
  # As if killed after the save of step 10: its summary.json (evaluated
  # at 5 and 10) goes on from there; the later evaluations run again.
  shutil.copy(loop_run.dir / "summary.json", tmp_path)
  trainer = _trainer(cls, tmp_path)
  trainer.restore(str(loop_run.dir / "ckpt-10"))
  assert [e["step"] for e in trainer.summary["evals"]] == [5, 10]
  make_eval_step = trainer.make_eval_step

  def signalled():  # a SIGTERM arrives as the evaluation starts
    trainer._agreed = lambda due: (signal.SIGTERM, False, due)
    return make_eval_step()

  trainer.make_eval_step = signalled
  with pytest.raises(preemption.Interrupted) as stop:
    trainer.train(eval_every_stage=True)
  assert str(stop.value) == (
      "Interrupted (SIGTERM) during the evaluation at step 15 of 20: its "
      f"checkpoint {tmp_path}/ckpt-15 is saved; rerun the same command to "
      "resume (it evaluates step 15 first).")
  assert trainer.checkpointer.latest == f"{tmp_path}/ckpt-15"
  rerun = _trainer(cls, tmp_path)
  assert rerun.restore().endswith("ckpt-15")
  evaluated = []

  def evaluate():
    evaluated.append(rerun.step)
    raise KeyboardInterrupt  # enough: the first thing it did

  rerun.evaluate = evaluate
  with pytest.raises(KeyboardInterrupt):
    rerun.train(eval_every_stage=True)
  assert evaluated == [15] and rerun.step == 15


# ------------------------------------------------------------------ values
def _config(hparams):
  return config_lib.build_config("efficientnetv2-b0", "smoke",
                                 ",".join(filter(None, [TINY, hparams])))


def test_steps_from_epochs_and_the_controls_between_calls():
  # 0.1 epoch of 30 steps is 3 (not 4: 0.1 * 30 = 3.0000000000000004).
  assert finetune.epochs_to_steps(0.1, 30) == 3
  assert finetune.epochs_to_steps(1.5, 89) == 134  # 133.5 rounded up
  config = _config("train.freeze_epochs=0.5,train.eval_every_epochs=1.0")
  controls = finetune.controls(config, steps_per_epoch=30, total_steps=100)
  assert controls == finetune.Controls(freeze_steps=15, eval_every=30)
  assert [controls.frozen_at(s) for s in (0, 14, 15)] == [True, True, False]
  assert [s for s in range(100) if controls.eval_due(s)] == [30, 60, 90]
  # A call from step 10 ends at the switch (15), then at 30, 60, ...
  assert [controls.cut(s) for s in (10, 15, 44)] == [5, 15, 16]
  assert controls.cut(44, evaluates=False) is None
  # fit: executions from step 10 of a stage to 50 divide 5, 30 and 10.
  assert controls.execution_divisors(10, 50) == [5, 30, 10]
  assert finetune.controls(_config(""), 30, 100) == finetune.Controls()


@pytest.mark.parametrize("hparams, message", [
    ("train.freeze_steps=5,train.freeze_epochs=1.0",
     "Bad value for train.freeze_steps: 5; valid: this or "
     "train.freeze_epochs, not both; set train.freeze_epochs=null."),
    ("train.eval_every_steps=0",
     "Bad value for train.eval_every_steps: 0; valid: >= 1, or null."),
    ("train.eval_every_epochs=0.0",
     "Bad value for train.eval_every_epochs: 0.0; valid: > 0, or null."),
    ("train.freeze_epochs=-1.0",
     "Bad value for train.freeze_epochs: -1.0; valid: >= 0, or null."),
    ("train.eval_every_steps=5,train.eval_every_epochs=1.0",
     "Bad value for train.eval_every_steps: 5; valid: this or "
     "train.eval_every_epochs, not both; set train.eval_every_epochs=null."),
])
def test_bad_values_are_one_line(hparams, message):
  with pytest.raises(errors.ConfigError) as raised:
    _config(hparams)
  assert str(raised.value) == message


@pytest.mark.parametrize("hparams, message", [
    ("train.freeze_steps=21",
     "train.freeze_steps=21: the frozen phase (21 steps) is longer than the "
     "run (20 steps); make it shorter, or 0 for none."),
    # The smoke data's 1437 images are 89 steps of 16 per epoch.
    ("train.freeze_epochs=0.25",
     "train.freeze_epochs=0.25: the frozen phase (23 steps) is longer than "
     "the run (20 steps); make it shorter, or 0 for none."),
    ("train.eval_every_steps=30",
     "train.eval_every_steps=30: one evaluation every 30 steps never comes "
     "in a run of 20 steps; make it at most 20, or null (stage ends only)."),
])
def test_controls_past_the_run_stop_the_trainer_before_the_model(
    tmp_path, monkeypatch, hparams, message):
  def no_model(*args):
    raise AssertionError("built the model")

  monkeypatch.setattr(custom_loop.CustomLoopTrainer,
                      "_build_model_and_optimizer", no_model)
  with pytest.raises(errors.ConfigError) as raised:
    _trainer(DRIVERS["loop"], tmp_path, "train.steps=20," + hparams)
  assert str(raised.value) == message


def test_a_frozen_start_needs_weights_and_a_cadence_train_and_eval():
  frozen = _config("train.freeze_epochs=1.0")
  with pytest.raises(errors.ConfigError) as raised:
    finetune.check_start(frozen, "train_and_eval", has_weights=False)
  assert str(raised.value) == (
      "train.freeze_epochs=1: a frozen backbone needs trained weights, and "
      "this run starts from random ones; give --init_checkpoint, or set "
      "train.freeze_epochs=null.")
  finetune.check_start(frozen, "train", has_weights=True)
  finetune.check_start(frozen, "eval", has_weights=False)
  finetune.check_start(_config("train.freeze_steps=0"), "train",
                       has_weights=False)  # 0: no frozen phase
  cadence = _config("train.eval_every_steps=50")
  with pytest.raises(errors.ConfigError) as raised:
    finetune.check_start(cadence, "train", has_weights=True)
  assert str(raised.value) == (
      "train.eval_every_steps=50: --mode=train does not evaluate; use "
      "--mode=train_and_eval, or set train.eval_every_steps=null.")
  finetune.check_start(cadence, "train_and_eval", has_weights=False)


def test_folderft_drops_the_controls_a_command_cannot_run():
  # folderft freezes for an epoch and evaluates every epoch when it starts
  # from weights with --mode=train_and_eval; without weights the frozen
  # phase, with --mode=train the cadence, go off with a line each.
  def draft():
    return config_lib.draft_config("efficientnetv2-b0", "folderft")

  config = draft()
  assert finetune.drop_unusable(config, "train_and_eval", True, set()) == []
  assert (config.train.freeze_epochs, config.train.eval_every_epochs,
          config.train.keep_best) == (1.0, 1.0, True)
  config = draft()
  assert finetune.drop_unusable(config, "train", False, set()) == [
      "train.freeze_epochs: off, as a frozen backbone needs trained "
      "weights, and this run starts from random ones (the folderft config "
      "says 1)",
      "train.eval_every_epochs: off, as --mode=train does not evaluate (the "
      "folderft config says 1)"]
  assert config.train.freeze_epochs is None
  assert config.train.eval_every_epochs is None
  finetune.check_start(config, "train", has_weights=False)  # now runs
  # A key the command gives stays, and check_start refuses it.
  config = draft()
  config.train.freeze_epochs = 2.0
  assert finetune.drop_unusable(config, "train_and_eval", False,
                                {"train.freeze_epochs"}) == []
  with pytest.raises(errors.ConfigError, match="freeze_epochs=2:"):
    finetune.check_start(config, "train_and_eval", has_weights=False)


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_adamw_with_layer_decay_trains_in_both_drivers(tmp_path, driver):
  # TINY has N = 2 blocks: the stem is layer 0 (rate 0.5 ** 3), block1a
  # layer 1 (0.5 ** 2), block2a layer 2 (0.5), the head layer 3 (1). Adam's
  # first step moves a weight by lr * g / |g| (bias-corrected moments), so
  # the largest move of each kernel is its layer's rate (the decoupled
  # decay adds lr * 1e-5 * |w|, far below the tolerance).
  trainer = _trainer(DRIVERS[driver], tmp_path, (
      "train.steps=1,progressive.num_stages=1,runtime.steps_per_loop=1,"
      "train.optimizer=adamw,train.layer_decay=0.5"))
  kernels = ("stem_conv/kernel", "block1a_project_conv/kernel",
             "block2a_expand_conv/kernel", "predictions/kernel")
  before = {v.path: v.numpy() for v in trainer.model.weights}
  trainer.train()
  moved = [np.abs(trainer.model.get_layer(k.split("/")[0]).kernel.numpy()
                  - before[k]).max() for k in kernels]
  np.testing.assert_allclose(np.array(moved) / moved[-1],
                             [0.5 ** 3, 0.5 ** 2, 0.5, 1.0], rtol=1e-3)
