"""Keeps the TPU build of TensorFlow on the CPU where the machine has no TPU.

`tensorflow-tpu` loads libtpu when TensorFlow is imported. On a machine
without TPU chips that goes wrong: libtpu 0.0.45 and later abort the process
(TensorFlow 2.20 calls TPU entry points they no longer have), and the libtpu
pinned in setup.py asks the GCE metadata server for the TPU's configuration,
retrying for minutes. `TPU_LOAD_LIBRARY=0` (read by TensorFlow's TPU loader)
skips libtpu, and TensorFlow then runs on the CPU. `configure()` sets it
when the TPU build is installed, the machine has no TPU chip and the user
has not set it; it must run before `import tensorflow`, so a program's
start-up calls it first (`effnetv2_tf/startup.py`); a library user sets
the variable or calls `configure()` first. This module imports no
TensorFlow.

TPU chips are PCI devices of Google's vendor id (0x1ae0), the same test
libtpu and JAX use to decide whether they run on a Cloud TPU VM; it reads
/sys and reaches no network.
"""

import glob
import importlib.metadata
import os
import sys

GOOGLE_PCI_VENDOR = "0x1ae0"
LOAD_VARIABLE = "TPU_LOAD_LIBRARY"


def tpu_chip_count(pci_root="/sys/bus/pci/devices"):
  """TPU chips attached to this machine (0 on a CPU or GPU machine)."""
  count = 0
  for path in glob.glob(os.path.join(pci_root, "*", "vendor")):
    try:
      with open(path) as f:
        count += f.read().strip() == GOOGLE_PCI_VENDOR
    except OSError:
      continue
  return count


def tpu_build_installed():
  try:
    importlib.metadata.distribution("tensorflow-tpu")
  except importlib.metadata.PackageNotFoundError:
    return False
  return True


def skips_libtpu(environ, tensorflow_imported, tpu_build, chips):
  """Whether `configure` sets TPU_LOAD_LIBRARY=0: the TPU build, no TPU
  chip, TensorFlow not imported yet, the variable not set by the user."""
  return (LOAD_VARIABLE not in environ and not tensorflow_imported
          and tpu_build and chips == 0)


def configure():
  """Sets TPU_LOAD_LIBRARY=0 for the TPU build on a machine without TPUs;
  returns whether it did."""
  # The CPU and GPU builds stop at the package look-up: no walk over /sys.
  skip = tpu_build_installed() and skips_libtpu(
      os.environ, "tensorflow" in sys.modules, True, tpu_chip_count())
  if skip:
    os.environ[LOAD_VARIABLE] = "0"
  return skip
