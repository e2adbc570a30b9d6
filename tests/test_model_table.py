"""Tests of the analytic FLOPs counter and the `effnetv2_tf.model_table` CLI."""

import json
import os
import pathlib
import subprocess
import sys

from absl import app
from absl import flags
from absl.testing import flagsaver
import keras
import pytest

import effnetv2_tf
from effnetv2_tf import model_table
from effnetv2_tf.models.flops import count_flops

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _flops_at_eval_size(name):
  size = effnetv2_tf.get_model_spec(name).eval_size
  model = effnetv2_tf.create_model(name, input_shape=(size, size, 3))
  flops = count_flops(model)
  keras.backend.clear_session()
  return flops


def _relative_error(name):
  return abs(_flops_at_eval_size(name) / 1e9 / model_table.PAPER_FLOPS[name][0]
             - 1.0)


def test_count_flops_tiny_model_by_hand():
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, strides=2, padding="same",
                          use_bias=False)(inputs)
  x = keras.layers.BatchNormalization()(x)
  x = keras.layers.Activation("swish")(x)
  x = keras.layers.DepthwiseConv2D(3)(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(10)(x)
  model = keras.Model(inputs, outputs)
  conv = 4 * 4 * 3 * 3 * 3 * 4  # 8x8 -> 4x4 (stride 2, same), 3 -> 4 ch.
  depthwise = 2 * 2 * 3 * 3 * 4  # 4x4 -> 2x2 (valid), 4 channels
  dense = 4 * 10
  assert conv + depthwise + dense == 1912
  assert count_flops(model) == 1912


def test_count_flops_grouped_conv_and_bias_not_counted():
  inputs = keras.Input((6, 6, 4))
  outputs = keras.layers.Conv2D(8, 1, groups=2, use_bias=True)(inputs)
  assert count_flops(keras.Model(inputs, outputs)) == 6 * 6 * 2 * 8


def test_count_flops_unknown_input_size_raises():
  model = effnetv2_tf.create_model("efficientnetv2-b0", input_shape=None)
  with pytest.raises(ValueError, match="fixed input size"):
    count_flops(model)


def test_paper_table_sizes_match_registry_eval_sizes():
  for name, (_, size) in model_table.PAPER_FLOPS.items():
    assert effnetv2_tf.get_model_spec(name).eval_size == size, name


@pytest.mark.parametrize("name", [
    "efficientnetv2-b0", "efficientnetv2-b1", "efficientnetv2-b2",
    "efficientnetv2-b3", "efficientnetv2-s"])
def test_v2_flops_match_paper(name):
  assert _relative_error(name) < 0.03


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnetv2-m", "efficientnetv2-l"])
def test_large_v2_flops_match_paper(name):
  assert _relative_error(name) < 0.03


def test_v1_b0_flops_match_paper():
  assert _relative_error("efficientnet-b0") < 0.05


def test_format_table_with_and_without_paper_value():
  rows = [
      {"name": "a", "params": 1234567, "flops": 2_000_000_000,
       "eval_size": 224, "paper_gflops": 2.5, "rel_diff": -0.2},
      {"name": "b", "params": 10, "flops": 10, "eval_size": 256,
       "paper_gflops": None, "rel_diff": None},
  ]
  lines = model_table.format_table(rows).splitlines()
  assert lines[2].split() == ["a", "1,234,567", "2.000", "224", "2.50",
                              "-20.0%"]
  assert lines[3].split() == ["b", "10", "0.000", "256", "-", "-"]


def _run_cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  return subprocess.run(
      [sys.executable, "-m", "effnetv2_tf.model_table", *args], cwd=REPO_ROOT,
      env=env, capture_output=True, text=True, timeout=300, check=False)


def test_cli_prints_b0_row_and_writes_json(tmp_path):
  json_path = tmp_path / "model_table.json"
  result = _run_cli("--models=efficientnetv2-b0", f"--json_out={json_path}")
  assert result.returncode == 0, result.stderr
  row_lines = [line for line in result.stdout.splitlines()
               if line.startswith("efficientnetv2-b0")]
  assert len(row_lines) == 1, result.stdout
  assert "7,200,312" in row_lines[0]
  rows = json.loads(json_path.read_text())
  assert [r["name"] for r in rows] == ["efficientnetv2-b0"]
  assert rows[0]["params"] == 7_200_312
  assert rows[0]["eval_size"] == 224
  assert abs(rows[0]["rel_diff"]) < 0.03


def test_main_rejects_unknown_model_before_building():
  # In-process: a subprocess would spend ~10 s importing TensorFlow.
  flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(models=["efficientnetv2-b0", "efficientnetv2-zz"]):
    with pytest.raises(app.UsageError, match="Unknown model"):
      model_table.main(["model_table"])
