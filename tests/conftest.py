"""Shared test setup: quiet TensorFlow, seeded Keras, tiny model builders."""

import os
import pathlib
import subprocess

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# First, as every entry point: the quiet TensorFlow import and, with the TPU
# build and no TPU, TPU_LOAD_LIBRARY=0 (subprocesses inherit both).
from effnetv2_tf import startup  # pylint: disable=g-import-not-at-top

startup.start()

import effnetv2_tf  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from effnetv2_tf.models.layers import ScheduledDropout  # pylint: disable=g-import-not-at-top
from effnetv2_tf.training import faults  # pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[1]
# ../shared beside the checkout: the real data and reference tables.
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
SAMPLES = SHARED / "data" / "imagenet-samples"  # one JPEG per class
# Samples whose crops differ between the fused and the whole JPEG decode
# (tests/test_decode.py says how they were picked).
DECODE_PHOTOS = ("n03482405_hamper", "n03944341_pinwheel",
                 "n01630670_common_newt")


@pytest.fixture(scope="module")
def decode_photos():
  """The JPEG bytes of DECODE_PHOTOS (skipped without the shared data)."""
  paths = [SAMPLES / f"{name}.JPEG" for name in DECODE_PHOTOS]
  if not all(p.exists() for p in paths):
    pytest.skip(f"shared samples missing under {SAMPLES}")
  return [p.read_bytes() for p in paths]


@pytest.fixture(autouse=True)
def _seed():
  keras.utils.set_random_seed(1234)


def tiny_model(name="efficientnetv2-b0", **kwargs):
  """A width/depth-shrunk variant that builds and runs in about a second."""
  kwargs.setdefault("width_coefficient", 0.25)
  kwargs.setdefault("depth_coefficient", 0.34)
  kwargs.setdefault("num_classes", 10)
  return effnetv2_tf.create_model(name, **kwargs)


# Hyperparameters of a 4-step, one-stage run of a two-block model on the
# smoke row (configs/datasets.py): trainer tests in seconds.
TWO_BLOCK_RUN = (
    "train.warmup_epochs=0,model.depth_coefficient=1.0,model.blocks="
    "r1_k3_s1_e1_i16_o16_c1 r1_k3_s2_e4_i16_o24_se0.25,"
    "progressive.num_stages=1,runtime.steps_per_loop=2,train.steps=4")

EXPORT_SIZE = 24  # the image size of `tiny_export`


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
  """(model, path): a `tiny_model` exported once per session at
  EXPORT_SIZE px with the V2 preprocessing, classes named "digit 0" to
  "digit 9" (test_export's signatures, test_infer's infer.py runs)."""
  from effnetv2_tf import export  # pylint: disable=g-import-not-at-top
  from effnetv2_tf.data import preprocessing  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(7)
  model = tiny_model()
  path = str(tmp_path_factory.mktemp("tiny_export") / "saved")
  export.export_saved_model(model, path, EXPORT_SIZE,
                            preprocessing.ROWS["v2"],
                            class_names=[f"digit {i}" for i in range(10)])
  return model, path


@pytest.fixture(scope="session")
def tiny_export_loaded(tiny_export):
  """`tiny_export`'s SavedModel, loaded once (tf.saved_model.load)."""
  return tf.saved_model.load(tiny_export[1])


def assert_same_training_math(fast, plain, grad_rtol):
  """`fast` (a model with a fast path) computes what `plain` (the same
  network without it) computes: `plain` takes `fast`'s weights, then both
  give the same training logits, loss gradients (each compared as a vector
  within `grad_rtol` of its norm: some are 0 in exact arithmetic, a BN shift
  followed by another BN, ~1e-6 of float32 rounding noise here) and BN
  statistics, and the same inference logits. Build both without dropout
  and stochastic depth: their random masks would differ."""
  plain.set_weights(fast.get_weights())
  images = tf.random.stateless_uniform([4, 32, 32, 3], [9, 9], -1.0, 1.0)
  labels = tf.one_hot([1, 2, 3, 4], 10)
  results = []
  for model in (fast, plain):
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      loss = tf.reduce_mean(keras.losses.categorical_crossentropy(
          labels, logits, from_logits=True))
    results.append((logits, tape.gradient(loss, model.trainable_variables)))
  (logits_f, grads_f), (logits_p, grads_p) = results
  np.testing.assert_allclose(logits_f, logits_p, rtol=1e-4, atol=1e-4)
  for a, b in zip(grads_f, grads_p):
    assert np.linalg.norm(a - b) <= grad_rtol * np.linalg.norm(b) + 1e-5
  for a, b in zip(fast.non_trainable_weights, plain.non_trainable_weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(fast(images, training=False),
                             plain(images, training=False), rtol=1e-4,
                             atol=1e-4)


def observe_dropout(monkeypatch, trainer):
  """Per stage, the fraction of head features its last train step dropped.

  Read off the traced step itself (an assign inside the layer's call), so
  a rate baked into the trace as a constant would show.
  """
  seen = tf.Variable(-1.0, trainable=False)
  call = ScheduledDropout.call

  def observed(self, inputs, training=False):
    outputs = call(self, inputs, training=training)
    if training:
      seen.assign(tf.reduce_mean(tf.cast(tf.equal(outputs, 0.0),
                                         tf.float32)))
    return outputs

  monkeypatch.setattr(ScheduledDropout, "call", observed)
  rates = []
  record = trainer.log.record_stage

  def record_stage(entry):
    rates.append(float(seen.numpy()))
    record(entry)

  trainer.log.record_stage = record_stage
  return rates


def driver_env(fault=None, **extra):
  """A driver subprocess's environment: this checkout importable, quiet
  TensorFlow, EFFNETV2_FAULT only when `fault` is given, then `extra`."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  env.pop(faults.ENV, None)
  if fault:
    env[faults.ENV] = fault
  env.update(extra)
  return env


def finished(process, timeout=600):
  """A started `subprocess.Popen`'s CompletedProcess once it ends (killed
  past `timeout` seconds)."""
  try:
    stdout, stderr = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    raise
  return subprocess.CompletedProcess(process.args, process.returncode,
                                     stdout, stderr)


@pytest.fixture(scope="session")
def v2_files(tmp_path_factory):
  """test_weights' keras.applications EfficientNetV2B0 files, made once for
  the session (test_weights, test_pretrained): (model, x, Keras output,
  {layout: path})."""
  import test_weights  # pylint: disable=g-import-not-at-top
  return test_weights.make_v2_files(tmp_path_factory)


@pytest.fixture(scope="session")
def driver_help():
  """driver_help(driver): `python <driver> --help`'s stdout, one process
  per driver for the whole session (test_main, test_config)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  outputs = {}

  def run(driver):
    if driver not in outputs:
      outputs[driver] = subprocess.run(
          [sys.executable, str(ROOT / driver), "--help"], cwd=ROOT,
          env=driver_env(), capture_output=True, text=True, timeout=300,
          check=False).stdout
    return outputs[driver]
  return run


def checkpoint_variables(prefix):
  """A checkpoint's values, without its save counter and input position."""
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not name.startswith(("save_counter", "train_iterator",
                                  "_CHECKPOINTABLE_OBJECT_GRAPH"))}
