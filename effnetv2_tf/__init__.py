"""effnetv2_tf: EfficientNetV2 (Tan and Le, 2021) on TensorFlow 2 and Keras 3."""

# Before anything imports TensorFlow: the TPU build stays on the CPU where
# there is no TPU (see tpu_env), and the import's C++ lines below
# TF_CPP_MIN_LOG_LEVEL (which the drivers set) are dropped (see quiet_start).
import os
import sys

from effnetv2_tf import quiet_start
from effnetv2_tf import tpu_env

# `python -m effnetv2_tf.<tool>` imports this package while sys.argv[0] is
# still "-m" (Python sets the path only once the module is found): the
# tools start as quietly as the drivers, which set this themselves.
if sys.argv[:1] == ["-m"]:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tpu_env.configure()
with quiet_start.filtered_import():
  import tensorflow  # noqa: F401  pylint: disable=unused-import

# pylint: disable=g-import-not-at-top,wrong-import-position
from effnetv2_tf.errors import UserError
from effnetv2_tf.models.fold_bn import fold_batch_norms
from effnetv2_tf.models.model import create_model
from effnetv2_tf.models.registry import get_model_spec
from effnetv2_tf.models.registry import list_models

__all__ = ["UserError", "create_model", "fold_batch_norms", "get_model_spec",
           "list_models"]
__version__ = "0.1.0"
