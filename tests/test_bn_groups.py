"""Batch norm over groups of replicas, as the reference's
TpuBatchNormalization, checked on 4 logical CPU devices (in a subprocess,
tests/bn_group_check.py) against statistics computed here by hand.

Reference (google/automl efficientnetv2 at 6a54c87):
  utils.py L71-73: group y holds replicas x with x // group_size == y.
  utils.py L193-199: each replica's mean and mean of squares (its variance
    plus its squared mean) are averaged over the group; the group's
    variance is E[x^2] - E[x]^2.
  utils.py L189: groups of min(8, replicas) (TPUs); L232-233: plain Keras
    BN elsewhere, each replica its own statistics.
  Moving statistics: moving * momentum + batch * (1 - momentum) per
    replica copy (Keras' BatchNormalization); tf_keras 2.21
    batch_normalization.py L463-472 keeps the copies as ON_READ variables
    with aggregation MEAN, read and saved as their mean.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf.models import fused_bn

ROOT = pathlib.Path(__file__).resolve().parents[1]
AXES = (0, 1, 2)  # batch and spatial axes of NHWC inputs


@pytest.fixture(scope="module")
def cases():
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, str(ROOT / "tests" / "bn_group_check.py")],
      capture_output=True, text=True, env=env, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")]
  return {(case["group_size"], tuple(case["batches"])): case
          for case in json.loads(line[-1][len("RESULT "):])}


def _groups(group_size, replicas=4):
  """utils.py L71-73; 0: one group of all replicas."""
  size = group_size or replicas
  return [[r for r in range(replicas) if r // size == g]
          for g in range(replicas // size)]


def _reference_moments(xs):
  """utils.py L193-199 over the replicas' inputs `xs` of one group."""
  means = [x.mean(axis=AXES) for x in xs]
  squares = [x.var(axis=AXES) + m**2 for x, m in zip(xs, means)]
  mean = np.mean(means, axis=0)
  return mean, np.mean(squares, axis=0) - mean**2


def _pooled_moments(xs):
  pooled = np.concatenate(xs)
  return pooled.mean(axis=AXES), pooled.var(axis=AXES)


def _expected(case, moments):
  """Outputs, input gradients and moving statistics of one step, by hand."""
  xs = [np.array(x, np.float64) for x in case["inputs"]]
  ws = [np.array(w, np.float64) for w in case["weights"]]
  gamma, beta, moving_mean, moving_var = map(np.array, case["state"])
  eps, momentum = case["epsilon"], case["momentum"]
  outputs, grads, copies = [None] * 4, [None] * 4, []
  for group in _groups(case["group_size"]):
    mean, var = moments([xs[r] for r in group])
    inv = 1.0 / np.sqrt(var + eps)
    xhat = [(xs[r] - mean) * inv for r in group]
    # d(sum(y * w)) / dxhat = w * gamma; the usual batch-norm backward over
    # the group's examples pooled.
    dxhat = [ws[r] * gamma for r in group]
    flat_d = np.concatenate(dxhat)
    flat_h = np.concatenate(xhat)
    mean_d = flat_d.mean(axis=AXES)
    mean_dh = (flat_d * flat_h).mean(axis=AXES)
    for i, r in enumerate(group):
      outputs[r] = gamma * xhat[i] + beta
      grads[r] = inv * (dxhat[i] - mean_d - xhat[i] * mean_dh)
      copies.append((moving_mean * momentum + mean * (1 - momentum),
                     moving_var * momentum + var * (1 - momentum)))
  # Each replica's copy moved with its group's statistics; read as their
  # mean (ON_READ, MEAN).
  return outputs, grads, np.mean(copies, axis=0)


def _check(case, moments):
  outputs, grads, (moving_mean, moving_var) = _expected(case, moments)
  for r in range(4):
    np.testing.assert_allclose(case["outputs"][r], outputs[r], atol=2e-5,
                               err_msg=f"replica {r}")
    np.testing.assert_allclose(case["grads"][r], grads[r], rtol=1e-4,
                               atol=1e-4, err_msg=f"replica {r}")
    # Every replica holds the same moving statistics.
    np.testing.assert_allclose(case["moving_mean"][r], moving_mean,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(case["moving_variance"][r], moving_var,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("group_size", [1, 2, 4, 0])
def test_replica_groups_match_the_reference_by_hand(cases, group_size):
  _check(cases[group_size, (2, 2, 2, 2)], _reference_moments)


def test_groups_of_two_are_not_the_whole_batch(cases):
  # The hand computation tells the group sizes apart on these inputs.
  case = cases[2, (2, 2, 2, 2)]
  with pytest.raises(AssertionError):
    _check(dict(case, group_size=4), _reference_moments)
  with pytest.raises(AssertionError):
    _check(dict(case, group_size=1), _reference_moments)


def test_uneven_replica_batches_pool_the_group_examples(cases):
  # Replicas of 1 and 3 examples in group 0: the statistics of its 4
  # examples (the reference would weight the two replicas equally).
  case = cases[2, (1, 3, 2, 2)]
  _check(case, _pooled_moments)
  with pytest.raises(AssertionError):
    _check(case, _reference_moments)


def test_per_replica_groups_keep_the_fused_kernel(cases):
  assert cases[1, (2, 2, 2, 2)]["layer"] == "FusedBatchNormalization"
  for size in (2, 4, 0):
    assert cases[size, (2, 2, 2, 2)]["layer"] == (
        "ReplicaGroupBatchNormalization")


def test_one_replica_uses_the_batch_statistics():
  """Outside a strategy (one replica) any group size is Keras' layer."""
  rng = np.random.default_rng(1)
  x = tf.constant(rng.normal(2.0, 3.0, (4, 3, 3, 5)), tf.float32)
  plain = keras.layers.BatchNormalization(momentum=0.9)
  grouped = fused_bn.ReplicaGroupBatchNormalization(group_size=8,
                                                    momentum=0.9)
  np.testing.assert_allclose(grouped(x, training=True),
                             plain(x, training=True), atol=1e-5)
  np.testing.assert_allclose(grouped.moving_variance.numpy(),
                             plain.moving_variance.numpy(), rtol=1e-6)


def test_serialises_with_its_group_size():
  layer = fused_bn.ReplicaGroupBatchNormalization(group_size=8, name="bn")
  clone = keras.layers.deserialize(keras.layers.serialize(layer))
  assert type(clone) is fused_bn.ReplicaGroupBatchNormalization
  assert clone.group_size == 8


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_group_size_is_one_line(bad):
  with pytest.raises(ValueError, match="group_size must be an integer >= 0"):
    fused_bn.ReplicaGroupBatchNormalization(group_size=bad)
