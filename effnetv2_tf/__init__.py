"""effnetv2_tf: EfficientNetV2 (Tan and Le, 2021) on TensorFlow 2 and Keras 3."""

from effnetv2_tf.model import create_model
from effnetv2_tf.registry import get_model_spec
from effnetv2_tf.registry import list_models

__all__ = ["create_model", "get_model_spec", "list_models"]
__version__ = "0.1.0"
