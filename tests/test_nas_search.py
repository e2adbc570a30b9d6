"""The architecture search through its CLI: resume after a kill, two
workers on one study, bad flags; a proxy of 2 steps at 16 px."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import optuna
import pytest

from configs import nas as nas_configs
from effnetv2_tf import config as config_lib
from effnetv2_tf.nas import search
from effnetv2_tf.nas import space as space_lib
from effnetv2_tf.nas import trial as trial_lib
from effnetv2_tf.runs import run_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROXY = ("--proxy_steps=2", "--proxy_image_size=16")


def _command(out_dir, trials, *extra):
  return [sys.executable, "-m", "effnetv2_tf.nas", f"--trials={trials}",
          f"--out_dir={out_dir}", *PROXY, *extra]


def _env():
  return dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")


def _complete(out_dir):
  study = optuna.load_study(study_name=search.STUDY_NAME,
                            storage=search.storage_url(str(out_dir)))
  return search.completed(study)


def test_proxy_config_is_the_candidate_at_the_proxy_size():
  config = nas_configs.get_config("digits")
  config.proxy.steps = 5
  blocks = ("r1_k5_s1_e4_i32_o16_c1", "r1_k3_s2_e1_i16_o32_se0.25",
            "r1_k3_s2_e4_i32_o48_c1", "r1_k3_s2_e4_i48_o96_se0.25",
            "r2_k3_s1_e4_i96_o112_se0.25", "r1_k5_s2_e1_i112_o192_c1")
  run = trial_lib.proxy_config(config, blocks)
  assert run.model.blocks.split() == list(blocks)
  assert run.model.depth_coefficient == 1.0  # layer counts as sampled
  assert (run.model.train_size, run.model.eval_size) == (32, 32)
  assert run.progressive.num_stages == 1 and run.train.steps == 5
  # The search never sees the 360 eval digits: accuracy is on minival.
  assert run.data.eval_split == "minival" and run.data.minival_every == 4


@pytest.mark.slow
def test_a_trial_writes_its_lines_to_its_log_and_leaves_stdout_alone(
    tmp_path, monkeypatch, capsys):
  config = nas_configs.get_config("digits")
  config.proxy.update(steps=2, image_size=16, timing_steps=1)
  stdout, seen = sys.stdout, []
  step_time = trial_lib.step_time

  def step_time_seeing_stdout(trainer, steps):
    seen.append(sys.stdout)  # what a print inside the trial would reach
    return step_time(trainer, steps)

  monkeypatch.setattr(trial_lib, "step_time", step_time_seeing_stdout)
  measured = trial_lib.run(config, space_lib.backbone_blocks(config.space),
                           str(tmp_path / "trial"))
  assert seen == [stdout]  # not redirected
  assert capsys.readouterr().out == ""
  lines = (tmp_path / "trial" / "train.log").read_text().splitlines()
  assert lines[0].startswith("stage 1/1: steps 0-2 (2), image size 16,")
  assert lines[-2].startswith("step 2/2 stage 1/1 loss ")
  # Every 4th of the 1,437 training digits is minival: 360.
  assert lines[-1].startswith("eval at step 2 (16 px, 360 images, ")
  assert 0 <= measured.accuracy <= 1 and measured.step_time > 0


@pytest.mark.slow
def test_a_killed_search_resumes_without_repeating_a_trial(tmp_path):
  out_dir = tmp_path / "nas"
  first = subprocess.Popen(_command(out_dir, 3), env=_env(), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  deadline = time.time() + 300
  while time.time() < deadline and first.poll() is None:
    if (out_dir / "study.db").exists() and _complete(out_dir):
      break
    time.sleep(1)
  assert first.poll() is None, first.communicate()[1][-2000:]
  first.send_signal(signal.SIGKILL)
  first.wait(60)
  before = {t.number: t.params for t in _complete(out_dir)}
  assert 1 <= len(before) < 3
  again = subprocess.run(_command(out_dir, 3), env=_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         check=False)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"resuming: {len(before)} of 3 trials finished" in again.stdout
  assert "backbone efficientnetv2-b0: training" not in again.stdout
  after = _complete(out_dir)
  assert len(after) == 3
  assert {t.number: t.params for t in after if t.number in before} == before
  params = [tuple(sorted(t.params.items())) for t in after]
  assert len(set(params)) == 3  # three distinct candidates
  rows = (out_dir / "results.csv").read_text().splitlines()
  assert rows[0].startswith("trial,accuracy,step_time,params,reward")
  assert len(rows) == 1 + 1 + 3  # header, backbone, trials
  assert (out_dir / "results.png").stat().st_size > 0
  # The winner is a config file main.py trains (here: built from it).
  config = config_lib.build_config(dataset_cfg="digits",
                                   config_file=str(out_dir / "best.json"))
  best = next(r for r in rows[1:] if r.split(",")[5] == "True")
  assert config.model.blocks == best.split('"')[1]
  model = run_dir.model_from_config(config.model, 10)
  assert model.name == "efficientnetv2-b0"
  assert model.count_params() == int(best.split(",")[3])  # the trial's
  assert again.stdout.splitlines()[-1].endswith(
      f"train the winner: python main.py --config_file={out_dir}/best.json "
      "--dataset_cfg=digits")


@pytest.mark.slow
def test_two_workers_share_one_search(tmp_path):
  out_dir = tmp_path / "nas"
  workers = [subprocess.Popen(_command(out_dir, 4, f"--seed={seed}"),
                              env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for seed in (0, 0)]  # the same seed: duplicates are pruned
  outputs = [w.communicate(timeout=600) for w in workers]
  for worker, (_, err) in zip(workers, outputs):
    assert worker.returncode == 0, err[-3000:]
  done = _complete(out_dir)
  # Each worker stops once 4 are finished; one may finish a last one.
  assert 4 <= len(done) <= 5
  assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)
  # Both trained: each printed trials of its own.
  assert all("trial " in out for out, _ in outputs)
  assert sum("backbone efficientnetv2-b0: training" in out
             for out, _ in outputs) == 1


@pytest.mark.parametrize("args, message", [
    (("--proxy_image_size=4",), "--proxy_image_size=4: the proxy image size "
     "must be at least 8 pixels."),
    (("--dataset_cfg=nope",), "Unknown dataset config"),
])
def test_bad_flags_are_one_line(tmp_path, args, message):
  result = subprocess.run(
      [sys.executable, "-m", "effnetv2_tf.nas", f"--out_dir={tmp_path}",
       *args], env=_env(), cwd=ROOT, capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 1
  assert message in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "study.db").exists()  # nothing started
