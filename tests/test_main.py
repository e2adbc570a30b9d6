"""The interim main.py driver through its command line."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, str(ROOT / "main.py"), *args],
                        capture_output=True, text=True, env=env, timeout=300,
                        check=False)


def test_main_describes_a_model():
  result = _run("--model=efficientnetv2-b0")
  assert result.returncode == 0, result.stderr
  assert "parameters: 7,200,312" in result.stdout
  assert "Fused-MBConv" in result.stdout
  assert "forward pass at 224x224: logits (1, 1000), finite: True" in (
      result.stdout)


def test_main_rejects_unknown_model_in_one_line():
  result = _run("--model=efficientnetv3-s")
  assert result.returncode != 0
  assert "unknown model; valid models: efficientnetv2-s" in result.stderr
  assert "Traceback" not in result.stderr
