"""A program's start-up, done before anything imports TensorFlow.

The drivers (main.py, main_tf2.py), infer.py and the `python -m
effnetv2_tf.<tool>` commands call `start()` first; the library
(`import effnetv2_tf`) does none of it. This module imports TensorFlow only
inside `start()`.
"""

import importlib
import os

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
