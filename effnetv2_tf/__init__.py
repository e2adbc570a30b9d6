"""effnetv2_tf: EfficientNetV2 (Tan and Le, 2021) on TensorFlow 2 and Keras 3.

`import effnetv2_tf` only imports: the public names load their modules
(and TensorFlow) on first use (PEP 562), and no environment variable, file
descriptor or logging setting changes. Programs start up through
`effnetv2_tf.startup.start()`.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["UserError", "create_model", "fold_batch_norms", "get_model_spec",
           "list_models"]
# Public name -> the module that defines it.
_LAZY = {
    "UserError": "effnetv2_tf.errors",
    "create_model": "effnetv2_tf.models.model",
    "fold_batch_norms": "effnetv2_tf.models.fold_bn",
    "get_model_spec": "effnetv2_tf.models.registry",
    "list_models": "effnetv2_tf.models.registry",
}


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(_LAZY[name]), name)
  globals()[name] = value  # the next look-up finds it directly
  return value


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
