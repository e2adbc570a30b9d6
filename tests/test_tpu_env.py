"""The TPU build stays on the CPU where there is no TPU (TPU_LOAD_LIBRARY=0)."""

import contextlib
import os
import types

import pytest

from effnetv2_tf import quiet_start
from effnetv2_tf import startup
from effnetv2_tf import tpu_env


def _device(root, name, vendor):
  path = root / name
  path.mkdir()
  (path / "vendor").write_text(vendor + "\n")


def test_counts_google_pci_devices_only(tmp_path):
  _device(tmp_path, "0000:00:04.0", "0x1ae0")  # a TPU chip
  _device(tmp_path, "0000:00:05.0", "0x1ae0")
  _device(tmp_path, "0000:00:01.0", "0x10de")  # an NVIDIA GPU
  _device(tmp_path, "0000:00:02.0", "0x8086")
  assert tpu_env.tpu_chip_count(str(tmp_path)) == 2
  assert tpu_env.tpu_chip_count(str(tmp_path / "missing")) == 0


@pytest.mark.parametrize("environ, imported, tpu_build, chips, skip", [
    ({}, False, True, 0, True),     # TPU build on a CPU machine
    ({}, False, True, 4, False),    # a Cloud TPU VM: load libtpu
    ({}, False, False, 0, False),   # the CPU or GPU build: nothing to do
    ({}, True, True, 0, False),     # too late: TensorFlow already loaded
    ({"TPU_LOAD_LIBRARY": "1"}, False, True, 0, False),  # the user's choice
])
def test_skips_libtpu_only_for_the_tpu_build_without_chips(
    environ, imported, tpu_build, chips, skip):
  assert tpu_env.skips_libtpu(environ, imported, tpu_build, chips) is skip


def test_start_configures_before_tensorflow_loads(monkeypatch):
  # A program's start-up: the level, then tpu_env, then the quiet import.
  calls = []
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  monkeypatch.setattr(tpu_env, "configure", lambda: calls.append(
      ("configure", os.environ.get("TF_CPP_MIN_LOG_LEVEL"))))

  @contextlib.contextmanager
  def filtered_import():
    calls.append(("enter",))
    yield
    calls.append(("exit",))

  monkeypatch.setattr(quiet_start, "filtered_import", filtered_import)
  monkeypatch.setattr(startup, "importlib", types.SimpleNamespace(
      import_module=lambda name: calls.append(("import", name))))
  startup.start()
  assert calls == [("configure", "2"), ("enter",), ("import", "tensorflow"),
                   ("exit",)]
