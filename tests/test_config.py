"""Tests of the experiment configs: recipe values, overrides and validation."""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from configs import base
from configs import datasets
from effnetv2_tf import config as config_lib
from effnetv2_tf.runs import run_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_base_recipe_matches_paper_section_5_1():
  config = config_lib.build_config("efficientnetv2-s", "imagenet")
  train = config.train
  assert (train.optimizer, train.rmsprop_rho, train.momentum,
          train.epsilon) == ("rmsprop", 0.9, 0.9, 1e-3)
  assert (train.lr_base, train.warmup_epochs, train.lr_decay_factor,
          train.lr_decay_epochs) == (0.016, 5.0, 0.97, 2.4)
  assert (train.weight_decay, train.label_smoothing, train.ema_decay,
          train.epochs, train.batch_size) == (1e-5, 0.1, 0.9999, 350, 4096)
  assert config.model.survival_prob == 0.8
  assert config.progressive.num_stages == 4
  assert config.progressive.preset == "paper"
  # Registry defaults fill the placeholders.
  assert (config.model.train_size, config.model.eval_size) == (300, 384)
  assert config.data.augname == "randaug"


def test_imagenet21k_and_finetune_configs():
  c21k = config_lib.build_config("efficientnetv2-m", "ImageNet21k")
  assert c21k.model.num_classes == 21843 and c21k.data.multi_label
  assert (c21k.train.epochs, c21k.train.lr_base, c21k.train.lr_schedule,
          c21k.train.warmup_epochs, c21k.train.label_smoothing) == (
              60, 0.008, "cosine", 1.0, 0.0)
  assert c21k.progressive.num_stages == 1
  assert c21k.progressive.max_image_size == 224
  for name in ("imagenetft", "cifar10ft", "cifar100ft", "flowersft", "carsft"):
    ft = config_lib.build_config("efficientnetv2-s", name)
    assert (ft.train.lr_base, ft.train.ema_decay, ft.train.epochs) == (
        0.0005, 0.9996, 15), name
  assert config_lib.build_config("efficientnetv2-s",
                                 "flowersft").data.tfds_name == (
                                     "oxford_flowers102")


def test_hparam_str_overrides_with_types():
  config = config_lib.build_config(
      "efficientnetv2-b0", "digits",
      "train.batch_size=32,train.lr_base=1,data.augname=autoaug,"
      "progressive.random_resize=true")
  assert config.train.batch_size == 32
  assert config.train.lr_base == 1.0 and isinstance(config.train.lr_base,
                                                    float)
  assert config.data.augname == "autoaug"
  assert config.progressive.random_resize is True


def test_scientific_notation_is_a_float():
  # YAML 1.1 (PyYAML) reads '1e-7' as a string; YAML 1.2 and users: a float.
  config = config_lib.build_config(
      "efficientnetv2-b0", "digits", "train.epsilon=1e-7,train.lr_base=2E-3")
  assert config.train.epsilon == 1e-7
  assert config.train.lr_base == 0.002
  assert config_lib.parse_hparam_str("data.augname=e5") == {
      "data.augname": "e5"}


@pytest.mark.parametrize("hparams, message", [
    ("train.batchsize=3", "Unknown config key 'train.batchsize'"),
    ("trian.batch_size=3", "Unknown config key 'trian'"),
    ("train.batch_size=abc", "Wrong type for config key 'train.batch_size'"),
    ("train.batch_size=0", r"train.batch_size: 0; valid: >= 1\."),
    ("train.ema_decay=1.0", r"train.ema_decay: 1.0; valid: in \[0, 1\)"),
    ("train.lr_schedule=linear", "valid: 'exponential'"),
    ("model.train_size=-5", "model.train_size"),
    ("progressive.max_mixup=-1", "progressive.max_mixup"),
    ("train.checkpoint_every=-1",
     r"train.checkpoint_every: -1; valid: >= 1, or null \(once per stage\)"),
    ("train.warmup_epochs=-1", r"train.warmup_epochs: -1.0; valid: >= 0\."),
    ("train", "expected key=value"),
])
def test_bad_overrides_name_the_key(hparams, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.build_config("efficientnetv2-b0", "digits", hparams)


@pytest.mark.parametrize("hparams, message", [
    ("train.batch_size=abc", "'train.batch_size': 'abc' is a string; give "
     "an integer."),
    ("train.batch_size=1.5", "'train.batch_size': 1.5 is a decimal number; "
     "give an integer."),
    # YAML's true is a bool, which ml_collections takes for an int.
    ("train.batch_size=true", "'train.batch_size': true is a boolean; give "
     "an integer."),
    # A key with a default has no null (a placeholder has: the default).
    ("train.batch_size=null", "'train.batch_size': null; give an integer."),
    ("train.epochs=[1, 2]", "'train.epochs': [1, 2] is a list; give a "
     "number."),
    ("runtime.deterministic=1", "'runtime.deterministic': 1 is an integer; "
     "give true or false."),
    ("model.train_size=abc", "'model.train_size': 'abc' is a string; give "
     "an integer."),  # a placeholder
    ("data.augname=5", "'data.augname': 5 is an integer; give a string."),
])
def test_a_wrong_type_is_our_one_line(hparams, message):
  # Issue 37 item 7: the key, the value and the type to give, in our words.
  with pytest.raises(config_lib.ConfigError) as raised:
    config_lib.build_config("efficientnetv2-b0", "digits", hparams)
  assert str(raised.value) == f"Wrong type for config key {message}"
  for ml_collections_words in ("Could not override", "original type",
                               "casted", "<class"):
    assert ml_collections_words not in str(raised.value)


def test_placeholders_may_be_null_and_ints_are_numbers():
  config = config_lib.build_config(
      "efficientnetv2-b0", "digits",
      "train.steps=null,data.augname=null,train.epochs=5")
  assert config.train.steps is None and config.train.epochs == 5.0
  # null: the placeholder's fill, B0's AutoAugment (not digits' "").
  assert config.data.augname == "autoaug"


@pytest.mark.parametrize("dataset_cfg", ["imagenet", "folderft"])
def test_a_bad_size_is_named_as_given(dataset_cfg):
  # Issue 37 item 7: folderft derives train_size from eval_size
  # (train_size_ratio 1.0); the error names the key the user gave.
  with pytest.raises(config_lib.ConfigError,
                     match=r"^Bad value for model.eval_size: 0; valid: >= 8"):
    config_lib.build_config("efficientnetv2-b0", dataset_cfg,
                            "model.eval_size=0")


def test_unknown_names():
  with pytest.raises(config_lib.ConfigError, match="valid: carsft"):
    config_lib.build_config("efficientnetv2-b0", "mnist")
  with pytest.raises(config_lib.ConfigError, match="Unknown model"):
    config_lib.build_config("efficientnetv2-q", "digits")


def test_config_file_yaml_and_json(tmp_path):
  yaml_file = tmp_path / "c.yaml"
  yaml_file.write_text(
      "train:\n  batch_size: 16\nprogressive:\n  max_cutmix: 0.5\n")
  config = config_lib.build_config("efficientnetv2-b0", "digits",
                                   config_file=str(yaml_file))
  assert (config.train.batch_size, config.progressive.max_cutmix) == (16, 0.5)
  json_file = tmp_path / "c.json"
  json_file.write_text(json.dumps({"train": {"bogus": 1}}))
  with pytest.raises(config_lib.ConfigError, match="'train.bogus'"):
    config_lib.build_config("efficientnetv2-b0", "digits",
                            config_file=str(json_file))
  # --hparam_str wins over the file.
  config = config_lib.build_config("efficientnetv2-b0", "digits",
                                   "train.batch_size=8",
                                   config_file=str(yaml_file))
  assert config.train.batch_size == 8


def test_config_is_locked():
  config = config_lib.build_config("efficientnetv2-b0", "digits")
  with pytest.raises((AttributeError, TypeError, ValueError)):
    config.train.batch_size = 3


def test_save_config_refuses_other_model(tmp_path):
  config = config_lib.build_config("efficientnetv2-b0", "digits")
  path = config_lib.save_config(config, str(tmp_path))
  assert json.loads(open(path).read())["model"]["name"] == "efficientnetv2-b0"
  config_lib.save_config(config, str(tmp_path))  # same model: fine
  other = config_lib.build_config("efficientnetv2-b1", "digits")
  with pytest.raises(config_lib.ConfigError, match="holds a run of "
                     "efficientnetv2-b0"):
    config_lib.save_config(other, str(tmp_path))


def test_a_runs_config_json_is_the_base_of_its_rerun():
  # A smoke run at 48 px eval, trained with two overrides.
  trained = config_lib.build_config(
      "efficientnetv2-b0", "smoke", "model.eval_size=48,train.steps=6")
  saved = json.loads(trained.to_json())
  # Rebuilt from config.json alone (no model, dataset or keys repeated),
  # every value is the run's, though the defaults say otherwise.
  again = config_lib.build_config(None, None, run_config=saved)
  assert json.loads(again.to_json()) == saved
  assert again.model.eval_size == 48 and again.model.name == (
      "efficientnetv2-b0")
  assert config_lib.changed_values(saved, again) == []
  # What is given now overrides it, and says so.
  evaluated = config_lib.build_config(
      "efficientnetv2-b0", "smoke", "eval.batch_size=30", run_config=saved)
  assert evaluated.model.eval_size == 48
  assert config_lib.changed_values(saved, evaluated) == [
      ("eval.batch_size", 60, 30)]
  with pytest.raises(config_lib.ConfigError,
                     match="holds a run of efficientnetv2-b0, not "
                     "efficientnetv2-b1"):
    config_lib.build_config("efficientnetv2-b1", None, run_config=saved)
  with pytest.raises(config_lib.ConfigError, match="run on 'digits', not "
                     "'imagenet'"):
    config_lib.build_config(None, "imagenet", run_config=saved)
  # digits reads the same data as smoke, with another recipe.
  with pytest.raises(config_lib.ConfigError, match="holds a run of "
                     "--dataset_cfg=smoke, not digits; drop the flag"):
    config_lib.build_config(None, "digits", run_config=saved)


def test_config_json_names_its_data_from_any_directory(tmp_path,
                                                       monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = config_lib.build_config("efficientnetv2-b0", "folderft",
                                   data_dir="photos")
  assert config.data.data_dir == str(tmp_path / "photos")
  assert config_lib.build_config(
      "efficientnetv2-b0", "imagenet",
      data_dir="gs://bucket/imagenet").data.data_dir == "gs://bucket/imagenet"


def test_every_dataset_config_builds():
  for name in datasets.DATASET_CONFIGS:
    config_lib.build_config("efficientnetv2-b0", name)


def test_help_lists_every_config_key_with_its_default(driver_help):
  # `python main.py --help`, its wrapping undone.
  text = re.sub(r"-\s+", "-", " ".join(driver_help("main.py").split()))
  for key, value in config_lib.flatten(base.get_config().to_dict()):
    shown = f"{key} = {value!r}" if value is not None else f"{key} = "
    assert shown in text, key
  # A few by hand: the paper's recipe (section 5.1) and the reference's
  # hparams.py (survival_prob 0.8, lr_base 0.016, ema_decay 0.9999).
  for line in ("model.survival_prob = 0.8 (in (0, 1])",
               "train.lr_base = 0.016", "train.ema_decay = 0.9999",
               "train.optimizer = 'rmsprop' (rmsprop | momentum | sgd | adam | adamw)",
               "data.crop_padding = the row's (>= 0)"):
    assert line in text


def test_config_json_carries_its_format_and_reads_back(tmp_path):
  config = config_lib.build_config("efficientnetv2-b0", "smoke")
  config_lib.save_config(config, str(tmp_path))
  written = json.loads((tmp_path / "config.json").read_text())
  assert written["format_version"] == run_dir.CONFIG_FORMAT
  assert run_dir.read_config(str(tmp_path)) == json.loads(config.to_json())


def test_an_older_format_is_upgraded_with_one_line(monkeypatch, capsys):
  monkeypatch.setattr(run_dir, "RENAMED_KEYS", {
      2: {**run_dir.RENAMED_KEYS[2], "data.buffer": "data.shuffle_buffer"}})
  old = {"model": {"name": "efficientnetv2-b0"},
         "data": {"name": "digits", "buffer": 64}}  # format 1: no version
  tree = run_dir.upgrade_config(old, "x/config.json")
  data = tree["data"]
  assert (data["dataset"], data["shuffle_buffer"], data["dataset_cfg"]) == (
      "digits", 64, "digits")
  assert "name" not in data and "buffer" not in data
  # Preprocessing fields it lacks: B0's row, the reference's legacy
  # pipeline (preprocess_legacy.py: bicubic resize, crop offset ceil).
  assert (data["preprocessing"], data["resize_method"],
          data["crop_offset"]) == ("legacy", "bicubic", "ceil")
  assert "buffer" in old["data"]  # the caller's dict is left alone
  assert capsys.readouterr().out == (
      "x/config.json (format 1): renamed data.name -> data.dataset, "
      "data.buffer -> data.shuffle_buffer\n")
  run_dir.upgrade_config(old, "x/config.json")
  assert capsys.readouterr().out == ""  # once per file
  current = {"format_version": 2, "data": {"dataset": "digits",
                                           "dataset_cfg": "smoke"}}
  assert run_dir.upgrade_config(current, "y/config.json") == {
      "data": {"dataset": "digits", "dataset_cfg": "smoke"}}


def test_a_newer_format_or_an_unknown_key_is_one_line():
  with pytest.raises(run_dir.RunDirError, match="format 9 is newer"):
    run_dir.upgrade_config({"format_version": 9}, "x/config.json")
  run = json.loads(config_lib.build_config("efficientnetv2-b0",
                                           "smoke").to_json())
  run["train"]["warmup_epoch"] = 1.0
  with pytest.raises(config_lib.ConfigError,
                     match="config.json: Unknown config key "
                     "'train.warmup_epoch'"):
    config_lib.build_config(dataset_cfg=None, run_config=run)


def _main(*args):
  result = subprocess.run(
      [sys.executable, "main.py", "--model=efficientnetv2-b0", *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


@pytest.mark.slow
def test_a_run_written_before_issue_32_evaluates_and_resumes(tmp_path):
  # tests/data/run_before_issue32: `main.py --dataset_cfg=smoke` at commit
  # da5f550 (train.steps=4, width and depth 0.1), config.json format 1.
  old = tmp_path / "run"
  shutil.copytree(ROOT / "tests" / "data" / "run_before_issue32", old)
  recorded = json.loads((old / "summary.json").read_text())["eval"]["top1"]
  out = _main("--mode=eval", f"--model_dir={old}")
  assert "(format 1): renamed data.name -> data.dataset" in out
  # The old code's own eval of these weights, reproduced.
  assert f"top-1 {recorded:.4f}" in out
  out = _main("--mode=train", f"--model_dir={old}",
              "--hparam_str=train.steps=6")
  assert "step 4 of 6" in out and "step 6/6" in out
  assert json.loads((old / "config.json").read_text())[
      "format_version"] == run_dir.CONFIG_FORMAT


def test_a_malformed_hparam_str_value_is_one_line_with_its_column():
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.build_config("efficientnetv2-b0", "digits",
                            "train.lr_base=0.1,train.batch_size=[8")
  # By hand: '[' is column 18 of the item, its end column 20.
  assert str(err.value) == (
      "Bad --hparam_str item 'train.batch_size=[8', the value of "
      "train.batch_size, column 20: expected ',' or ']', but got the end of "
      "the value (while parsing a flow sequence from column 18).")
  with pytest.raises(config_lib.ConfigError,
                     match=r"^Bad --hparam_str item \"data.augname='x\", the "
                     r"value of data.augname, column 16: found unexpected end "
                     r"of stream \(while scanning a quoted scalar from column "
                     r"14\)\.$"):
    config_lib.parse_hparam_str("data.augname='x")  # ' at 14, the end 16
  # Commas split items only outside brackets and braces, nested or not; an
  # unclosed one keeps the rest in its item.
  assert config_lib.parse_hparam_str("a=[[1, 2], [3]],b={c: 1, d: 2},e=4") == {
      "a": [[1, 2], [3]], "b": {"c": 1, "d": 2}, "e": 4}
  with pytest.raises(config_lib.ConfigError,
                     match=r"item 'a=\[1, b=2', the value of a, column 10:"):
    config_lib.parse_hparam_str("a=[1, b=2")


def test_an_unreadable_config_file_is_one_line_with_its_place(tmp_path):
  def error_of(name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(config_lib.ConfigError) as err:
      config_lib.build_config("efficientnetv2-b0", "digits",
                              config_file=str(path))
    return str(err.value)

  # By hand: line 3 is 'lr_base: 1' under the unclosed '[' of line 2.
  assert error_of("bad.yaml", b"train:\n  batch_size: [8\n  lr_base: 1\n") == (
      f"--config_file {tmp_path}/bad.yaml line 3, column 10: expected ',' or "
      "']', but got ':' (while parsing a flow sequence from line 2, column "
      "15).")
  assert error_of("end.yaml", b"train: {batch_size: 8\n") == (
      f"--config_file {tmp_path}/end.yaml line 2, column 1: expected ',' or "
      "'}', but got the end of the file (while parsing a flow mapping from "
      "line 1, column 8).")
  assert error_of("bad.json", b'{"train": {"batch_size": [8}}') == (
      f"--config_file {tmp_path}/bad.json line 1, column 28: Expecting ',' "
      "delimiter.")  # JSON's error for a .json file: at the '}'"
  assert error_of("latin1.yaml", "data:\n  augname: caf\xe9\n".encode(
      "latin-1")) == (
          f"--config_file {tmp_path}/latin1.yaml is not UTF-8 text (byte 0xe9 "
          "at offset 20); give a YAML or JSON file.")
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.build_config("efficientnetv2-b0", "digits",
                            config_file=str(tmp_path))
  assert str(err.value) == (f"--config_file {tmp_path} is a directory, not "
                            "a YAML or JSON file.")
  # JSON indented with tabs, which YAML refuses, is read as JSON.
  tabs = tmp_path / "tabs.json"
  tabs.write_text(json.dumps({"train": {"batch_size": 16}}, indent="\t"))
  assert config_lib.build_config(
      "efficientnetv2-b0", "digits",
      config_file=str(tabs)).train.batch_size == 16


@pytest.mark.parametrize("driver, flag, content", [
    ("main.py", "--hparam_str=train.batch_size=[8", None),
    ("main_tf2.py", "--config_file", b"train:\n  batch_size: [8\n"),
])
def test_a_config_parse_error_ends_a_driver_with_one_line(tmp_path, driver,
                                                           flag, content):
  if content is not None:
    (tmp_path / "c.yaml").write_bytes(content)
    flag = f"{flag}={tmp_path}/c.yaml"
  result = subprocess.run(
      [sys.executable, driver, "--model=efficientnetv2-b0",
       "--dataset_cfg=smoke", f"--model_dir={tmp_path}/run", flag],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1
  assert result.stderr.startswith(f"{driver}: error: ")
  assert len(result.stderr.splitlines()) == 1, result.stderr[-2000:]
  assert "expected ',' or ']', but got the end of " in result.stderr
