"""A program's start-up, done before anything imports TensorFlow.

The drivers (main.py, main_tf2.py), infer.py and the `python -m
effnetv2_tf.<tool>` commands call `start()` first; the library
(`import effnetv2_tf`) does none of it. This module imports TensorFlow only
inside `start()`.
"""

import importlib
import os
import signal
import sys

from effnetv2_tf import quiet_start
from effnetv2_tf import tpu_env


def start():
  """TF_CPP_MIN_LOG_LEVEL=2 unless set, TPU_LOAD_LIBRARY=0 for the TPU
  build without a TPU (tpu_env), then `import tensorflow` with its start-up
  lines below that level dropped (quiet_start)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  tpu_env.configure()
  with quiet_start.filtered_import():
    importlib.import_module("tensorflow")


def exit_on_signals(prog):
  """Until the driver installs its own handlers (training/preemption.py),
  SIGTERM and SIGINT end the process at once with one line and status
  128 + signal, not a traceback from inside TensorFlow's import: nothing
  has been written yet. Call it first, as the drivers do."""

  def stop(signum, frame):  # pylint: disable=unused-argument
    print(f"Interrupted ({signal.Signals(signum).name}) while {prog} "
          "started; nothing was written.", file=sys.stderr, flush=True)
    os._exit(128 + signum)  # pylint: disable=protected-access

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, stop)
