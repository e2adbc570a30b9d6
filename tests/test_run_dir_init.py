"""What the drivers leave in --model_dir when a run cannot start, and what
they say: a failed --init_checkpoint, a missing weights path, --mode=eval
of a directory that holds no run, leftovers of a killed save."""

import os
import pathlib
import re
import subprocess
import sys
import types

import keras
import pytest

from conftest import driver_env
from conftest import tiny_model
from effnetv2_tf import driver
from effnetv2_tf import errors
from effnetv2_tf.runs import checkpoints
from effnetv2_tf.training import reporter as reporter_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The smoke config's model is the tiny one (width 0.25, depth 0.34, 10
# classes): 2 steps of one stage at 16 px.
TINY = ("train.steps=2,progressive.num_stages=1,runtime.steps_per_loop=1,"
        "progressive.min_image_size=16,progressive.max_image_size=16,"
        "model.eval_size=16")


def _main(*args):
  return subprocess.run([sys.executable, str(ROOT / "main.py"), *args],
                        env=driver_env(), capture_output=True, text=True,
                        timeout=600, check=False)


def _values(**given):
  """The flags `driver._check_directories` reads, as a train run has them."""
  values = dict(mode="train", init_checkpoint=None, export_dir=None,
                overwrite_export=False, strategy="default")
  values.update(given)
  return types.SimpleNamespace(**values)


def test_first_few_names_a_few_and_counts_the_rest():
  assert errors.first_few(["a"]) == "a"
  assert errors.first_few(["a", "b", "c"]) == "a, b, c"
  assert errors.first_few(list("abcdefg")) == "a, b, c and 4 more"
  assert errors.first_few(list("abcdefg"), 5) == (
      "a, b, c, d, e and 2 more")


@pytest.mark.parametrize("classes, head_loaded", [(10, True), (5, False)])
def test_a_keras_weights_file_loads_its_head_where_it_fits(
    tmp_path, classes, head_loaded):
  # A file of the same class count is the whole model (what --mode=eval
  # --init_checkpoint=FILE.weights.h5 needs: it used to skip the head and
  # refuse); another class count keeps the new head, as a finetune wants.
  path = str(tmp_path / "b0.weights.h5")
  saved = tiny_model(num_classes=10)
  saved.save_weights(path)
  model = tiny_model(num_classes=classes)
  total = len(model.weights)
  loaded = checkpoints.init_from(model, path)
  assert loaded == (total if head_loaded else total - 2)  # kernel, bias
  head = [w.numpy() for w in model.get_layer("predictions").weights]
  theirs = [w.numpy() for w in saved.get_layer("predictions").weights]
  assert all((a.shape == b.shape and (a == b).all()) == head_loaded
             for a, b in zip(head, theirs))


def test_a_headless_keras_weights_file_fills_all_but_the_head(tmp_path):
  saved = tiny_model()
  path = str(tmp_path / "notop.weights.h5")
  keras.Model(saved.inputs,
              saved.get_layer("top_activation").output).save_weights(path)
  model = tiny_model()
  assert checkpoints.init_from(model, path) == len(model.weights) - 2
  assert (model.get_layer("stem_conv").weights[0].numpy() ==
          saved.get_layer("stem_conv").weights[0].numpy()).all()


def test_a_mismatched_checkpoint_summarises_its_skipped_layers(
    tmp_path, capsys):
  # An EfficientNetV2-S run's model into a B0: most layers differ.
  path = str(tmp_path / "s.keras")
  tiny_model("efficientnetv2-s").save(path)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match="first mismatch"):
    checkpoints.init_from(tiny_model("efficientnetv2-b0"), path)
  line, = [l for l in capsys.readouterr().out.splitlines()
           if l.startswith("init_checkpoint: loaded")]
  found = re.search(r"\(skipped (\d+) layers: (\w+), (\w+), (\w+) and "
                    r"(\d+) more\)$", line)
  assert found, line
  assert int(found[1]) == 3 + int(found[5]) and int(found[5]) > 20
  # Not the thousands of characters of every name.
  assert len(line[line.index("(skipped"):]) < 120


def test_a_missing_weights_path_does_not_exist(tmp_path):
  missing = tmp_path / "b0.weights.h5"
  for path in (missing, tmp_path / "run" / "ckpt-5"):
    with pytest.raises(errors.MissingInputError) as raised:
      checkpoints.init_from(tiny_model(), str(path))
    assert str(raised.value) == f"--init_checkpoint {path} does not exist."


@pytest.mark.slow
def test_a_failed_init_checkpoint_leaves_no_run_so_the_retry_starts(
    tmp_path):
  # The case: weights of another model, then the right --model.
  weights = tmp_path / "s.keras"
  tiny_model("efficientnetv2-s").save(str(weights))
  model_dir = tmp_path / "run"
  common = ["--dataset_cfg=smoke", "--mode=train", f"--model_dir={model_dir}",
            f"--init_checkpoint={weights}", f"--hparam_str={TINY}"]
  wrong = _main("--model=efficientnetv2-b0", *common)
  assert wrong.returncode == 1
  assert "weights match this model by name and shape" in wrong.stderr
  assert "Traceback" not in wrong.stderr
  assert not model_dir.exists()  # no config.json, labels, lock or folder
  right = _main("--model=efficientnetv2-s", *common)
  assert right.returncode == 0, right.stderr[-3000:]
  assert re.search(r"init_checkpoint: loaded (\d+)/\1 weights", right.stdout)
  assert (model_dir / "config.json").exists()
  assert (model_dir / "ckpt-2.index").exists()


def test_eval_of_a_directory_without_a_run_says_so_first(tmp_path):
  typo = tmp_path / "rnu"
  with pytest.raises(errors.MissingInputError) as raised:
    with driver._check_directories(_values(mode="eval"), str(typo),
                                   reporter_lib.Recorder()):
      pass
  assert str(raised.value).startswith(
      f"--mode=eval: no run in {typo} (no config.json, no checkpoint)")
  assert not typo.exists()
  # --init_checkpoint evaluates given weights without a run.
  with driver._check_directories(
      _values(mode="eval", init_checkpoint="b0.weights.h5"), str(typo),
      reporter_lib.Recorder()) as reads_only:
    assert not reads_only


def test_eval_of_a_mistyped_model_dir_blames_it_not_the_data(tmp_path):
  # ImageNet without --data_dir: the data is never looked at.
  typo = tmp_path / "rnu"
  result = _main("--model=efficientnetv2-b0", "--dataset_cfg=imagenet",
                 "--mode=eval", f"--model_dir={typo}")
  assert result.returncode == 1
  assert (f"main.py: error: --mode=eval: no run in {typo} (no config.json, "
          "no checkpoint)") in result.stderr
  assert "--data_dir" not in result.stderr
  assert "Traceback" not in result.stderr
  assert not typo.exists()


@pytest.mark.parametrize("flag", ["--model_dir", "--export_dir"])
def test_unusable_directories_are_named_before_anything_is_made(tmp_path,
                                                                 flag):
  # In process, the lines test_main's driver processes check.
  a_file = tmp_path / "a_file"
  a_file.write_text("kept")
  for path, message in ((a_file, "is a file, not a directory"),
                        (a_file / "run", "is not writable")):
    paths = {"--model_dir": str(tmp_path / "run"), "--export_dir": None,
             flag: str(path)}
    with pytest.raises(errors.UserError,
                       match=f"^{re.escape(f'{flag} {path} {message}')}"):
      with driver._check_directories(  # pylint: disable=protected-access
          _values(export_dir=paths["--export_dir"]), paths["--model_dir"],
          reporter_lib.Recorder()):
        pass
  assert a_file.read_text() == "kept"
  assert sorted(os.listdir(tmp_path)) == ["a_file"]  # nothing made


def test_the_lock_holder_removes_a_killed_saves_leftovers(tmp_path):
  model_dir = tmp_path / "run"
  # What TensorFlow leaves when a save is killed before it merges the
  # shards: <prefix>_temp/ (another file system: <prefix>_temp_<id>/).
  for leftover in ("ckpt-5_temp", "ckpt-6_temp", "ckpt-7_temp_1f2e",
                   "ckpt-8_temp"):
    (model_dir / leftover).mkdir(parents=True)
    (model_dir / leftover / "part-00000-of-00001.index").write_bytes(b"x")
  kept = ["ckpt-4.index", "ckpt-4.data-00000-of-00001", "checkpoint",
          "config.json", "my_temp"]
  for name in kept:
    (model_dir / name).write_text("kept")
  report = reporter_lib.Recorder()
  with driver._check_directories(_values(), str(model_dir), report):
    assert sorted(os.listdir(model_dir)) == sorted(kept + [".lock"])
  assert report.lines == [
      f"Removed 4 unfinished checkpoint save(s) of an earlier run from "
      f"{model_dir}: ckpt-5_temp, ckpt-6_temp, ckpt-7_temp_1f2e and 1 more"]
  report = reporter_lib.Recorder()
  with driver._check_directories(_values(), str(model_dir), report):
    pass
  assert report.lines == []  # nothing left to remove: no line
