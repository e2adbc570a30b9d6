"""quiet_start: TensorFlow's start-up lines below the log level are dropped,
everything else (a crash's last words included) passes."""

import os
import pathlib
import subprocess
import sys

import pytest

from effnetv2_tf import quiet_start

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUIET_START = ROOT / "effnetv2_tf" / "quiet_start.py"
BANNER = ("WARNING: All log messages before absl::InitializeLog() is called "
          "are written to STDERR")
# Lines as TensorFlow 2.21's import prints them (copied from a terminal).
INFO = ("I0000 00:00:1796237450.668119    5305 port.cc:153] oneDNN custom "
        "operations are on.")
WARNING = "W0000 00:00:1796237450.668119    5305 cpu_info.cc:1] a warning"
ERROR = "E1202 18:39:10.262554 140500401220480 loader.cc:7] an error"


@pytest.mark.parametrize("level, kept", [
    (0, [BANNER, INFO, WARNING, ERROR, "text"]),
    (1, [WARNING, ERROR, "text"]),
    (2, [ERROR, "text"]),
    (3, ["text"]),
])
def test_lines_below_the_level_are_dropped(level, kept):
  lines = [BANNER, INFO, WARNING, ERROR, "text"]
  assert [line for line in lines if quiet_start.keep(line, level)] == kept
  assert quiet_start.BANNER == BANNER


# A process that prints TensorFlow-like start-up lines inside
# filtered_import() and then aborts, as libtpu does on a bad install.
_ABORTING = f"""
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("q", {str(QUIET_START)!r})
q = importlib.util.module_from_spec(spec)
spec.loader.exec_module(q)
with q.filtered_import():
  for line in {[BANNER, INFO, ERROR, "F0000 00:00:1.0 1 tpu.cc:9] abort"]!r}:
    os.write(2, (line + "\\n").encode())
  sys.stderr.write("python text\\n")
  sys.stderr.flush()
  if os.environ.get("ABORT") == "1":
    os.abort()
sys.stderr.write("after\\n")
"""


@pytest.mark.parametrize("abort", [False, True])
def test_filtered_import_keeps_a_crashs_last_words(abort):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", ABORT=str(int(abort)))
  env.pop("EFFNETV2_TF_SHOW_TF_START", None)
  result = subprocess.run([sys.executable, "-c", _ABORTING], env=env,
                          capture_output=True, text=True, timeout=60,
                          check=False)
  expected = [ERROR, "F0000 00:00:1.0 1 tpu.cc:9] abort", "python text"]
  assert result.stderr.splitlines() == expected + ([] if abort
                                                   else ["after"])
  assert (result.returncode != 0) == abort
  shown = subprocess.run(
      [sys.executable, "-c", _ABORTING], capture_output=True, text=True,
      env=dict(env, EFFNETV2_TF_SHOW_TF_START="1"), timeout=60, check=False)
  assert shown.stderr.splitlines()[:2] == [BANNER, INFO]


@pytest.mark.slow
def test_drivers_print_no_start_up_lines():
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # main.py's default: 2
  result = subprocess.run(
      [sys.executable, str(ROOT / "main.py"), "--model=nope"], env=env,
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1
  assert result.stderr.startswith("FATAL Flags parsing error: flag "
                                  "--model=nope"), result.stderr
  # The control: at level 0 TensorFlow prints them.
  result = subprocess.run(
      [sys.executable, str(ROOT / "main.py"), "--model=nope"], timeout=300,
      env=dict(env, TF_CPP_MIN_LOG_LEVEL="0"), capture_output=True,
      text=True, check=False)
  assert result.stderr.startswith(BANNER)


@pytest.mark.slow
def test_tools_print_no_start_up_lines():
  # A `python -m` tool starts up as the drivers do (effnetv2_tf.startup).
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the tools' default: 2
  command = [sys.executable, "-m", "effnetv2_tf.data.check_tfrecords",
             "--help"]
  result = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert "python -m effnetv2_tf.data.check_tfrecords" in result.stdout
  assert BANNER not in result.stderr, result.stderr
  assert "oneDNN" not in result.stderr, result.stderr
  # The control: at level 0 TensorFlow prints them.
  result = subprocess.run(command, env=dict(env, TF_CPP_MIN_LOG_LEVEL="0"),
                          capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.stderr.startswith(BANNER)
