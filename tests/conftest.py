"""Shared test setup: quiet TensorFlow, seeded Keras, tiny model builders."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

import effnetv2_tf  # pylint: disable=g-import-not-at-top


@pytest.fixture(autouse=True)
def _seed():
  keras.utils.set_random_seed(1234)


def tiny_model(name="efficientnetv2-b0", **kwargs):
  """A width/depth-shrunk variant that builds and runs in about a second."""
  kwargs.setdefault("width_coefficient", 0.25)
  kwargs.setdefault("depth_coefficient", 0.34)
  kwargs.setdefault("num_classes", 10)
  return effnetv2_tf.create_model(name, **kwargs)
