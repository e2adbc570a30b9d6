"""main.py and main_tf2.py through their command lines: a tiny progressive
run, export, resume, errors."""

import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

import effnetv2_tf
from conftest import finished
from conftest import tiny_model
from effnetv2_tf import cli
from effnetv2_tf import config as config_lib
from effnetv2_tf import tpu_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
# On the smoke config (configs/datasets.py): 6 steps, 2 stages, batch 16.
TINY = "train.steps=6,runtime.steps_per_loop=3"


DRIVERS = ["main.py", "main_tf2.py"]


def _start(*args, driver="main.py", python_path=()):
  """The driver's process, started; `finished` waits for it."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, [*python_path, ROOT])),
             TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.Popen([sys.executable, str(ROOT / driver), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)


def _run(*args, driver="main.py", python_path=()):
  return finished(_start(*args, driver=driver, python_path=python_path))


def _png_folder(root, counts):
  """root/<class>/<i>.png: `counts[class]` 8x8 images of each class."""
  for name, count in counts.items():
    (root / name).mkdir(parents=True)
    for i in range(count):
      image = np.full((8, 8, 3), 20 * i, np.uint8)
      (root / name / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())


# Each a main.py process; the quick suite keeps one, and test_sources
# checks the other two lines in process (marked slow: processes, ~5 s each).
@pytest.mark.parametrize("counts, message", [
    ({"cat": 12}, "folder: 1 class (cat); a classifier needs at least two"),
    pytest.param({"cat": 6, "dog": 6, "empty": 0}, "empty holds no image",
                 marks=pytest.mark.slow),
    # 8 images: none is the 10th, so nothing is held out for evaluation.
    pytest.param({"cat": 4, "dog": 4}, "the 'validation' split is empty",
                 marks=pytest.mark.slow),
])
def test_folder_problems_stop_before_training(tmp_path, counts, message):
  _png_folder(tmp_path / "images", counts)
  result = _run("--model=efficientnetv2-b0", "--dataset_cfg=folder",
                f"--data_dir={tmp_path / 'images'}",
                f"--model_dir={tmp_path / 'run'}")
  assert result.returncode == 1
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()  # nothing written, not even it


# --export_dir's processes are slow-marked: the quick suite has
# --model_dir's, and test_run_dir_init checks both flags' lines in process.
@pytest.mark.parametrize("flag", [
    "--model_dir", pytest.param("--export_dir", marks=pytest.mark.slow)])
def test_unusable_directories_are_one_line_up_front(tmp_path, flag):
  a_file = tmp_path / "a_file"
  a_file.write_text("kept")
  for path, message in ((a_file, "is a file, not a directory"),
                        (a_file / "run", "is not writable")):
    result = _run("--model=efficientnetv2-b0", "--dataset_cfg=smoke",
                  f"--model_dir={tmp_path / 'run'}", f"{flag}={path}")
    assert result.returncode == 1
    assert f"{flag} {path} {message}" in result.stderr
    assert "Traceback" not in result.stderr
  assert a_file.read_text() == "kept"
  assert not (tmp_path / "run").exists()  # nothing trained or made


@pytest.mark.parametrize("flag, what, driver", [
    ("--model_dir", "a checkpoint (written beside the previous one)",
     "main.py"),
    ("--export_dir", "the SavedModel", "main_tf2.py")])
def test_a_full_disk_is_one_line_up_front(tmp_path, flag, what, driver):
  # The drivers see 256 KiB free on the disk of nospace/ (a sitecustomize
  # in the subprocess); the smoke model's weights alone take more.
  hook = tmp_path / "hook"
  hook.mkdir()
  (hook / "sitecustomize.py").write_text(
      "import collections, shutil\n"
      "Usage = collections.namedtuple('Usage', 'total used free')\n"
      "shutil.disk_usage = lambda path: Usage(2**40, 2**40 - 2**18, 2**18 if "
      "'nospace' in str(path) else 2**39)\n")
  (tmp_path / "nospace").mkdir()
  paths = {"--model_dir": tmp_path / "run", "--export_dir": tmp_path / "export"}
  paths[flag] = tmp_path / "nospace" / flag[2:]
  paths["--model_dir"].mkdir()
  (paths["--model_dir"] / "kept.txt").write_text("kept")
  result = _run("--model=efficientnetv2-b0", "--dataset_cfg=smoke",
                f"--hparam_str={TINY}", *(f"{k}={v}" for k, v in paths.items()),
                python_path=[hook], driver=driver)
  assert result.returncode == 1
  assert result.stderr.startswith(
      f"{driver}: error: {flag} {paths[flag]}: 0.2 MiB free on its disk, but "
      f"{what} needs ")
  assert "free space or use another" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert [p.name for p in paths["--model_dir"].iterdir()] == ["kept.txt"]
  assert not paths["--export_dir"].exists()


def _digits_folder(root):
  """The 1797 scikit-learn digits as 32 px PNGs in root/<digit>/."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  for i, (image, label) in enumerate(zip(digits.images, digits.target)):
    pixels = np.round(image * 255 / 16).astype(np.uint8).repeat(4, 0)
    pixels = np.repeat(pixels.repeat(4, 1)[..., None], 3, -1)
    (root / str(label)).mkdir(parents=True, exist_ok=True)
    (root / str(label) / f"{i}.png").write_bytes(
        tf.io.encode_png(pixels).numpy())


@pytest.mark.slow
def test_folderft_finetunes_a_weights_file_on_a_folder(tmp_path):
  # A keras.applications-layout weights file with a 1000-class head (random
  # weights: no real ones can be fetched here) into a 10-class folder, at
  # 32 px and for 6 of folderft's 15 epochs (B0's 224 px and the whole
  # recipe do not fit the time).
  _digits_folder(tmp_path / "digits")
  (tmp_path / "digits" / "3" / "broken.png").write_bytes(b"not a png")
  weights = tmp_path / "b0.weights.h5"
  effnetv2_tf.create_model("efficientnetv2-b0").save_weights(str(weights))
  result = _run("--model=efficientnetv2-b0", "--dataset_cfg=folderft",
                f"--data_dir={tmp_path / 'digits'}",
                f"--init_checkpoint={weights}",
                f"--model_dir={tmp_path / 'run'}",
                "--hparam_str=model.eval_size=32,train.epochs=6")
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "loaded 359/361 weights" in out and "skipped predictions" in out
  assert "model.num_classes: 10" in out
  assert ("Unreadable images left out (1): "
          f"{tmp_path / 'digits' / '3' / 'broken.png'}") in out
  assert ("Data: folder, 10 classes, train 1618, validation 179 (every "
          "10th image held out") in out
  # 6 epochs of 25 steps at batch 64: no 10,000-step minimum.
  assert "150 steps (25/epoch) at batch 64, 1 stage," in out
  # folderft's controls from weights: the head alone for the first epoch
  # (25 steps), an evaluation every epoch, the best kept.
  assert ("steps 0-25: backbone frozen (batch norm in inference mode, no "
          "stochastic depth); only the head (predictions) trains") in out
  assert "step 25: backbone unfrozen; the whole network trains" in out
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert [e["step"] for e in summary["evals"]] == list(range(25, 151, 25))
  best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
  assert best["score"] == max(e["top1"] for e in summary["evals"])
  # Measured 0.70 top-1, still rising (0.978 after the whole 15 epochs);
  # chance is 0.1. The threshold leaves room for run-to-run spread (runs
  # are not seeded).
  assert summary["eval"]["top1"] > 0.4


def test_the_data_sets_the_class_count(tmp_path):
  values = types.SimpleNamespace(
      model="efficientnetv2-b0", dataset_cfg="folder", hparam_str="",
      config_file=None, data_dir=str(tmp_path), steps_per_loop=None,
      mixed_precision=False, deterministic=False, mode="train",
      init_checkpoint=None)
  model_dir = str(tmp_path / "run")
  draft = cli.draft_from_flags(values, model_dir)
  three = types.SimpleNamespace(num_classes=3)  # e.g. 3 class folders
  assert draft.config.model.num_classes != 3
  assert draft.lock(values, three).model.num_classes == 3
  values.hparam_str = "model.num_classes=5"  # given: a contradiction
  with pytest.raises(config_lib.ConfigError, match="model.num_classes=5, "
                     r"but the data \(folder\) has 3 classes"):
    cli.draft_from_flags(values, model_dir).lock(values, three)


@pytest.mark.parametrize("driver", DRIVERS)
def test_help_lists_the_flags_and_every_config_key(driver, driver_help):
  help_text = " ".join(driver_help(driver).split())  # absl wraps lines
  assert "--dataset_cfg: Dataset config" in help_text and "folderft" in (
      help_text)
  # Each key with its default (test_config checks every one for main.py).
  assert "train.batch_size = 4096 (>= 1)" in help_text
  assert "progressive.max_cutmix = the preset's (>= 0)" in help_text


# main_tf2.py's process is slow-marked: the quick suite has main.py's, and
# test_config and test_models check the line in process.
@pytest.mark.parametrize("driver", [
    "main.py", pytest.param("main_tf2.py", marks=pytest.mark.slow)])
def test_rejects_unknown_model_in_one_line(driver):
  result = _run("--model=efficientnetv3-s", driver=driver)
  assert result.returncode != 0
  assert "Unknown model 'efficientnetv3-s'" in result.stderr
  assert "efficientnetv2-s" in result.stderr  # lists the valid ones
  assert "Traceback" not in result.stderr


# Marked slow (a main.py process each, ~5 s): the lines the quick suite
# checks in process, test_config's (unknown dataset config, config key) and
# test_distribute's (no TPU).
@pytest.mark.parametrize("args, message", [
    pytest.param(["--dataset_cfg=mnist"],
                 "Unknown dataset config 'mnist'; valid: carsft",
                 marks=pytest.mark.slow),
    pytest.param(["--hparam_str=train.batchsize=2"],
                 "Unknown config key 'train.batchsize'",
                 marks=pytest.mark.slow),
    (["--dataset_cfg=imagenet", "--data_dir=/nonexistent"],
     "no files match /nonexistent/train-*"),
    (["--dataset_cfg=folder"], "--data_dir (data.data_dir) is required"),
    pytest.param(["--dataset_cfg=digits", "--use_tpu",
                  "--tpu=grpc://127.0.0.1:1"], "no TPU reachable",
                 marks=pytest.mark.slow),
    pytest.param(["--dataset_cfg=digits", "--use_tpu"],
                 "no TPU chip on this machine",
                 marks=[pytest.mark.slow, pytest.mark.skipif(
                     tpu_env.tpu_chip_count() > 0, reason="a TPU is here")]),
    (["--dataset_cfg=digits", "--strategy=mirrored", "--deterministic"],
     "checkpoints cannot save"),
    pytest.param(
        ["--dataset_cfg=digits", "--hparam_str=progressive.min_image_size=0"],
        "Bad value for progressive.min_image_size: 0",
        marks=pytest.mark.slow),
    pytest.param(
        ["--dataset_cfg=digits", "--init_checkpoint=/nonexistent/run"],
        "--init_checkpoint /nonexistent/run does not exist",
        marks=pytest.mark.slow),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
  result = _run("--model=efficientnetv2-b0", f"--model_dir={tmp_path}", *args)
  assert result.returncode == 1
  assert message in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_incompatible_init_checkpoint_names_the_first_mismatch(tmp_path):
  weights = tmp_path / "other.weights.h5"
  tiny_model().save_weights(str(weights))  # a narrower B0
  result = _run("--model=efficientnetv2-b0", "--dataset_cfg=digits",
                f"--model_dir={tmp_path / 'run'}",
                f"--init_checkpoint={weights}")
  assert result.returncode == 1
  assert "stem_conv" in result.stderr  # the first layer that does not fit
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_main_tf2_reports_config_errors_in_one_line(tmp_path):
  result = _run("--model=efficientnetv2-b0", f"--model_dir={tmp_path}",
                "--hparam_str=train.batchsize=2", driver="main_tf2.py")
  assert result.returncode == 1
  assert "main_tf2.py: error: Unknown config key 'train.batchsize'" in (
      result.stderr)
  assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("driver", DRIVERS)
def test_digits_progressive_run_eval_export_and_resume(tmp_path, driver):
  model_dir, export_dir = tmp_path / "run", tmp_path / "export"
  args = ["--model=efficientnetv2-b0", "--dataset_cfg=smoke",
          f"--model_dir={model_dir}", f"--hparam_str={TINY}"]
  result = _run(*args, f"--export_dir={export_dir}", driver=driver)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "stage 1/2 (paper preset)" in result.stdout
  assert "image size 24" in result.stdout
  config = json.loads((model_dir / "config.json").read_text())
  assert config["model"]["name"] == "efficientnetv2-b0"
  summary = json.loads((model_dir / "summary.json").read_text())
  assert summary["final_step"] == 6
  assert [s["image_size"] for s in summary["stages"]] == [16, 24]
  assert all("top1" in s for s in summary["stages"])
  assert 0.0 <= summary["eval"]["top1"] <= summary["eval"]["top5"] <= 1.0

  served = tf.saved_model.load(str(export_dir))
  image = np.random.default_rng(0).integers(0, 255, (2, 37, 29, 3))
  out = served.signatures["serving_uint8"](images=tf.constant(image,
                                                              tf.uint8))
  assert out["probabilities"].shape == (2, 10)
  np.testing.assert_allclose(out["probabilities"].numpy().sum(1), 1.0,
                             rtol=1e-5)
  assert out["top5_classes"].shape == (2, 5)
  assert (export_dir / "labels.txt").read_text().startswith("0\t0\n")

  # The same command again resumes at the end: no step is trained twice.
  again = _run(*args, "--mode=train", driver=driver)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "stage 1/2" not in again.stdout
  assert json.loads((model_dir / "summary.json").read_text())[
      "final_step"] == 6
  # Three evaluations of the finished run, side by side (each only reads
  # it; their start-ups overlap).
  before = {p: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
  alone = _start(f"--model_dir={model_dir}", "--mode=eval", driver=driver)
  evaluated = _start("--model=efficientnetv2-b0", "--dataset_cfg=smoke",
                     f"--model_dir={tmp_path / 'eval'}",
                     f"--hparam_str={TINY}", "--mode=eval",
                     f"--init_checkpoint={model_dir}", driver=driver)
  # The drivers differ only in their trainer (driver.py runs both): what
  # their shared cli.py and config.py read (eval2's config.json; other's
  # model, refused before any trainer) main.py's processes check for both.
  eval2 = driver == "main.py" and _start(
      f"--model_dir={tmp_path / 'eval2'}", "--mode=eval",
      f"--init_checkpoint={model_dir}", driver=driver)
  # --mode=eval of the run directory alone reads its config.json: model,
  # dataset (smoke's 24 px eval, not imagenet's) and step count, without
  # the training command's flags and keys; and it writes nothing there.
  alone = finished(alone)
  assert alone.returncode == 0, alone.stderr[-3000:]
  assert f"Config: {model_dir}/config.json" in alone.stdout
  assert "step 6 of 6" in alone.stdout
  assert f"top-1 {summary['eval']['top1']:.4f}" in alone.stdout
  # Eval of a given checkpoint (EMA weights) from another model_dir
  # reproduces the run's own final eval.
  evaluated = finished(evaluated)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert json.loads((tmp_path / "eval" / "summary.json").read_text())[
      "eval"]["top1"] == pytest.approx(summary["eval"]["top1"], abs=1e-6)
  if not eval2:
    assert {p: p.read_bytes() for p in model_dir.rglob("*")
            if p.is_file()} == before
    return
  # ... and without the training flags: the checkpoint's config.json.
  evaluated = finished(eval2)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert f"Config: {model_dir}/config.json" in evaluated.stdout
  assert json.loads((tmp_path / "eval2" / "summary.json").read_text())[
      "eval"]["top1"] == pytest.approx(summary["eval"]["top1"], abs=1e-6)
  assert {p: p.read_bytes() for p in model_dir.rglob("*")
          if p.is_file()} == before  # none of the three wrote there
  other = _run("--model=efficientnetv2-b1", "--dataset_cfg=smoke",
               f"--model_dir={model_dir}", f"--hparam_str={TINY}",
               driver=driver)
  assert other.returncode == 1
  assert "holds a run of efficientnetv2-b0" in other.stderr
