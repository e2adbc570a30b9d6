"""`import effnetv2_tf` only imports: no process started, no environment
variable, file descriptor or logging setting changed, TensorFlow not
loaded until a public name is used. Programs start up through
`effnetv2_tf.startup.start()` instead."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import effnetv2_tf
from effnetv2_tf import tpu_env

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs BEFORE, records the process's state, runs STATEMENT, records it
# again and prints both. A fork (a filter process) counts even when its
# child has already been reaped; a child still running is listed.
_PROBE = """
import glob, json, logging, os, sys
forks = []
os.register_at_fork(before=lambda: forks.append(1))

def state():
  children = []
  for path in glob.glob("/proc/self/task/*/children"):
    with open(path) as f:
      children += f.read().split()
  fd2 = os.fstat(2)
  absl_logging = sys.modules.get("absl.logging")
  return {
      "environ": dict(os.environ),
      "forks": len(forks),
      "children": sorted(children),
      "fd2": [os.readlink("/proc/self/fd/2"), fd2.st_dev, fd2.st_ino],
      "root_handlers": [[type(h).__name__, id(h), h.level]
                        for h in logging.root.handlers],
      "root_level": logging.root.level,
      "absl_verbosity": absl_logging and absl_logging.get_verbosity(),
      "tensorflow": "tensorflow" in sys.modules,
  }

%s
before = state()
%s
print(json.dumps([before, state()]))
"""


def _env(**changes):
  """The test environment as a library user sets it: TPU_LOAD_LIBRARY=0
  on the TPU build without a TPU (README), nothing else of ours."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  if tpu_env.skips_libtpu(env, False, tpu_env.tpu_build_installed(),
                          tpu_env.tpu_chip_count()):
    env[tpu_env.LOAD_VARIABLE] = "0"
  for name, value in changes.items():
    if value is None:
      env.pop(name, None)
    else:
      env[name] = value
  return env


def _probe(before, statement, env):
  """(state before, state after) of a fresh process running `statement`."""
  result = subprocess.run(
      [sys.executable, "-c", _PROBE % (before, statement)], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("level, argv", [
    ("2", ["-c"]),  # a script's level: the old start-up forked a filter
    (None, ["-m"]),  # as `python -m` sees it: the old one set the level
])
def test_import_alone_changes_nothing_and_loads_no_tensorflow(level, argv):
  before, after = _probe(f"sys.argv[:] = {argv!r}", "import effnetv2_tf",
                         _env(TF_CPP_MIN_LOG_LEVEL=level))
  assert after == before
  assert not after["tensorflow"]
  assert after["forks"] == 0 and after["children"] == []


def test_import_and_use_after_tensorflow_and_keras_changes_nothing():
  # What a notebook does: TensorFlow and Keras first, then the package.
  statement = ("import effnetv2_tf\n"
               "assert 'efficientnetv2-b0' in effnetv2_tf.list_models()\n"
               "effnetv2_tf.create_model('efficientnetv2-b0', num_classes=10,"
               " width_coefficient=0.25, depth_coefficient=0.34)")
  before, after = _probe("import tensorflow, keras", statement, _env())
  assert before["tensorflow"]
  assert after["environ"] == before["environ"]  # no new or changed variable
  assert after["forks"] == 0 and after["children"] == []
  assert after["fd2"] == before["fd2"]
  assert after["root_handlers"] == before["root_handlers"]
  assert after["root_level"] == before["root_level"]
  assert after["absl_verbosity"] == before["absl_verbosity"]


def test_the_probe_sees_what_start_up_does():
  # The control: a program's start-up, here as on the TPU build without a
  # TPU, sets two variables and forks its filter; fd 2 comes back.
  statement = ("from effnetv2_tf import startup, tpu_env\n"
               "tpu_env.tpu_build_installed = lambda: True\n"
               "tpu_env.tpu_chip_count = lambda: 0\n"
               "startup.start()")
  before, after = _probe("", statement, _env(TF_CPP_MIN_LOG_LEVEL=None,
                                             TPU_LOAD_LIBRARY=None))
  added = set(after["environ"]) - set(before["environ"])
  assert added == {"TF_CPP_MIN_LOG_LEVEL", "TPU_LOAD_LIBRARY"}
  assert after["environ"]["TF_CPP_MIN_LOG_LEVEL"] == "2"
  assert after["environ"]["TPU_LOAD_LIBRARY"] == "0"
  assert after["forks"] == 1 and after["children"] == []  # reaped
  assert after["fd2"] == before["fd2"]
  assert after["tensorflow"]


def test_public_names_load_on_use():
  assert set(effnetv2_tf.__all__) <= set(dir(effnetv2_tf))
  assert effnetv2_tf.create_model.__module__ == "effnetv2_tf.models.model"
  assert issubclass(effnetv2_tf.UserError, Exception)
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    effnetv2_tf.nope  # pylint: disable=pointless-statement
