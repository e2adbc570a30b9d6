"""Tests of the up-front plan checks: the batch against the training split
and, on the CPU, against the machine's memory (issue 37 item 1)."""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf.data import sources
from effnetv2_tf.training import plan

ROOT = pathlib.Path(__file__).resolve().parents[1]
GIB = 1024  # MiB
STRATEGY = tf.distribute.get_strategy()  # the CPU's one device


def _png_folder(root, classes=2, per_class=64):
  """root/<class>/<i>.png: 8x8 images, `classes` x `per_class` of them."""
  for c in range(classes):
    (root / f"class{c}").mkdir(parents=True)
    for i in range(per_class):
      image = np.full((8, 8, 3), 3 * i, np.uint8)
      (root / f"class{c}" / f"{i}.png").write_bytes(
          tf.io.encode_png(image).numpy())


@pytest.fixture(name="machine")
def _machine(monkeypatch):
  """Sets the machine's memory (MiB) the checks see."""
  def set_memory(mib):
    monkeypatch.setattr(plan, "machine_mib", lambda: mib)
  set_memory(24 * GIB)
  return set_memory


def _fake_source(train_images):
  return sources.Source(name="fake", num_classes=2,
                        split_sizes={"train": train_images,
                                     "validation": 10})


def test_the_issue_a_128_image_folder_with_the_folder_defaults(
    tmp_path, machine):
  # Issue 37: --dataset_cfg=folder keeps ImageNet's batch 4096.
  _png_folder(tmp_path / "images")
  source = sources.folder_source(str(tmp_path / "images"))
  # 2 classes of 64: every 10th of each held out (6), 2 * 58 train.
  assert source.split_sizes["train"] == 116
  config = config_lib.build_config(dataset_cfg="folder")  # main.py's model
  machine(2 ** 20 * GIB)  # memory no limit: the split alone decides
  with pytest.raises(config_lib.ConfigError) as raised:
    plan.check_fits(config, source, STRATEGY)
  assert str(raised.value) == (
      "train.batch_size 4096 is larger than the training split (116 images "
      f"of folder {tmp_path / 'images'}): set "
      "--hparam_str=train.batch_size=64")
  # On 24 GiB the value named also fits the memory, and passes.
  machine(24 * GIB)
  with pytest.raises(config_lib.ConfigError) as raised:
    plan.check_fits(config, source, STRATEGY)
  named = int(str(raised.value).rsplit("=", 1)[1])
  assert 1 <= named <= 116 and named & (named - 1) == 0
  fitting = config_lib.build_config(
      dataset_cfg="folder", hparam_str=f"train.batch_size={named}")
  plan.check_fits(fitting, source, STRATEGY)


def test_the_readme_folderft_command_fits_a_small_folder(tmp_path, machine):
  # README: main.py --model=efficientnetv2-b0 --dataset_cfg=folderft on a
  # folder of 128 images, batch 64 at 224 px; an 8 GiB laptop holds it.
  _png_folder(tmp_path / "images")
  source = sources.folder_source(str(tmp_path / "images"))
  config = config_lib.build_config("efficientnetv2-b0", "folderft")
  assert (config.train.batch_size, plan.largest_image_size(config)) == (
      64, 224)
  machine(8 * GIB)
  plan.check_fits(config, source, STRATEGY)


@pytest.mark.parametrize("model, dataset_cfg", [
    ("efficientnetv2-b0", "digits"),   # scripts/run_main_job.sh
    ("efficientnetv2-s", "smoke"),     # the tests' runs, main.py's model
    ("efficientnetv2-b0", "smoke")])
def test_the_projects_own_runs_fit_a_small_machine(machine, model,
                                                   dataset_cfg):
  machine(4 * GIB)
  config = config_lib.build_config(model, dataset_cfg)
  plan.check_fits(config, _fake_source(1437), STRATEGY)  # digits' split


def test_a_batch_equal_to_the_split_and_unknown_sizes_pass(machine):
  config = config_lib.build_config("efficientnetv2-b0", "digits",
                                   "train.batch_size=100")
  plan.check_fits(config, _fake_source(100), STRATEGY)
  unknown = sources.Source(name="tfds", num_classes=2, split_sizes={})
  plan.check_fits(config, unknown, STRATEGY)
  with pytest.raises(config_lib.ConfigError, match=(
      r"^train.batch_size 100 is larger than the training split \(99 "
      r"images of fake\): set --hparam_str=train.batch_size=64$")):
    plan.check_fits(config, _fake_source(99), STRATEGY)


def test_the_memory_line_names_the_need_and_a_batch_that_fits(machine):
  # B0 on a folder: batch 4096, stages up to 192 px, a split that holds it.
  config = config_lib.build_config("efficientnetv2-b0", "folder")
  with pytest.raises(config_lib.ConfigError) as raised:
    plan.check_fits(config, _fake_source(100_000), STRATEGY)
  # By hand: 1194.5 + 1.3141e-3 * 4096 * 192^2 = 199,619 MiB (195 GiB), an
  # image 1.3141e-3 * 192^2 = 48.4 MiB; 0.8 * 24 GiB less the fixed part
  # holds 381 images: 256, a power of two.
  assert str(raised.value) == (
      "train.batch_size 4096 at 192 px needs about 195 GiB here (about 48 "
      "MiB an image on CPU, benchmarks/results/memory.json); this machine "
      "has 24 GiB: set --hparam_str=train.batch_size=256 or smaller")
  fitting = config_lib.build_config("efficientnetv2-b0", "folder",
                                    "train.batch_size=256")
  plan.check_fits(fitting, _fake_source(100_000), STRATEGY)
  # Two workers: each host holds half the batch (2 * 381 images: 512).
  plan.check_memory(config, 512, 2, 24 * GIB)
  with pytest.raises(config_lib.ConfigError, match="batch_size=512 or"):
    plan.check_memory(config, 1024, 2, 24 * GIB)


def test_micro_batches_and_recompute_shrink_the_need(machine):
  # The same B0 folder run, batch 4096 at 192 px (about 48.4 MiB an image,
  # 381 images fit 24 GiB: above). 8 micro-batches of 512 do not fit
  # (1194.5 + 48.4 * 512 = 25,975 MiB); 16 of 256 do (13,587 MiB); 8 of 512
  # with recompute, RECOMPUTE_SHARE 0.5 of the activations, do too
  # (1194.5 + 24.2 * 512 = 13,587 MiB).
  def config(hparams):
    return config_lib.build_config("efficientnetv2-b0", "folder", hparams)

  with pytest.raises(config_lib.ConfigError, match="needs about 25 GiB"):
    plan.check_memory(config("train.grad_accum_steps=8"), 4096, 1, 24 * GIB)
  plan.check_memory(config("train.grad_accum_steps=16"), 4096, 1, 24 * GIB)
  plan.check_memory(config("train.grad_accum_steps=8,train.recompute=true"),
                    4096, 1, 24 * GIB)
  # The suggested batch counts every micro-batch: 16 x 256.
  assert plan.fitting_batch(config("train.grad_accum_steps=16"),
                            24 * GIB) == 4096


def test_the_recompute_share_covers_the_benchmark():
  rows = json.loads((ROOT / plan.RECOMPUTE_FILE).read_text())["results"]
  assert max(r["memory_ratio"] for r in rows) <= plan.RECOMPUTE_SHARE


def test_accelerators_leave_host_memory_alone(machine, monkeypatch):
  config = config_lib.build_config("efficientnetv2-b0", "folder")
  monkeypatch.setattr(plan, "_on_accelerator", lambda strategy: True)
  plan.check_fits(config, _fake_source(100_000), STRATEGY)


def test_the_estimate_against_the_benchmark():
  # The benchmark's model at its batch: 1194.5 + 1.3141e-3 * 32 * 192^2
  # = 2744.7 MiB by hand; main.py measured 2700 MiB there.
  config = config_lib.build_config(plan.BENCHMARK_MODEL, "digits")
  assert plan.estimate_mib(config, 32, 192) == pytest.approx(2744.7, abs=0.1)
  measured = {r["size"]: r["main_py_mib"] for r in _benchmark()["results"]}
  for size, mib in measured.items():
    assert plan.estimate_mib(config, 32, size) == pytest.approx(mib, rel=0.04)


def test_activations_are_counted_from_the_block_strings():
  # A fused block (e1, stride 1) and an MBConv block (e4, stride 2) at
  # width 1: stem 32 ch at 1/4 of the pixels (8), fused output 16 at 1/4
  # (4), expand 64 at 1/4 (16), depthwise 64 at 1/16 (4), project 32 at
  # 1/16 (2), head 1280 at 1/16 (80): 114 per input pixel.
  two_blocks = {"name": "efficientnetv2-b0",
                "blocks": "r1_k3_s1_e1_i32_o16_c1 r1_k3_s2_e4_i16_o32"}
  assert plan.activations_per_pixel(two_blocks) == pytest.approx(114)
  # Larger models keep more: B0 < B3 < S < M < L < XL.
  counts = [plan.activations_per_pixel({"name": f"efficientnetv2-{v}"})
            for v in ("b0", "b3", "s", "m", "l", "xl")]
  assert counts == sorted(counts) and counts[0] < counts[-1] / 5


def _benchmark():
  return json.loads((ROOT / plan.BENCHMARK_FILE).read_text())


def test_the_constants_are_the_benchmarks_fit():
  data = _benchmark()
  assert data["model"] == plan.BENCHMARK_MODEL
  rows = data["results"]
  x = np.array([r["batch"] * r["size"] ** 2 for r in rows], float)
  y = np.array([r["main_py_mib"] for r in rows])
  fixed, slope = np.linalg.lstsq(np.stack([np.ones_like(x), x], 1), y,
                                 rcond=None)[0]
  assert plan.FIXED_MIB == pytest.approx(fixed, rel=0.02)
  assert plan.MIB_PER_IMAGE_PIXEL == pytest.approx(slope, rel=0.02)


# Slow: a main.py process; the quick suite checks the same line in process
# (test_the_issue_a_128_image_folder_with_the_folder_defaults) and
# test_main's folder tests stop main.py before training the same way.
@pytest.mark.slow
def test_main_py_on_a_small_folder_says_so_before_training(tmp_path):
  _png_folder(tmp_path / "images")
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  start = time.monotonic()
  result = subprocess.run(
      [sys.executable, str(ROOT / "main.py"), "--dataset_cfg=folder",
       f"--data_dir={tmp_path / 'images'}",
       f"--model_dir={tmp_path / 'run'}"],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.startswith(
      "main.py: error: train.batch_size 4096 is larger than the training "
      f"split (116 images of folder {tmp_path / 'images'}): set "
      "--hparam_str=train.batch_size=")
  assert len(result.stderr.strip().splitlines()) == 1
  assert "Steps:" not in result.stdout  # no trainer was built
  assert not (tmp_path / "run" / "config.json").exists()
  assert time.monotonic() - start < 60
