"""Strategy choice: explicit --strategy wins, --use_tpu is --strategy=tpu."""

import pytest
import tensorflow as tf

from effnetv2_tf import tpu_env
from effnetv2_tf.training import distribute

UNREACHABLE = "grpc://127.0.0.1:1"


def test_default_on_cpu_is_the_one_device_strategy():
  strategy = distribute.get_strategy()
  assert strategy is tf.distribute.get_strategy()
  assert distribute.is_chief(strategy)
  assert distribute.num_workers(strategy) == 1


def test_explicit_strategy_wins_over_use_tpu():
  strategy = distribute.get_strategy("mirrored", use_tpu=True,
                                     tpu=UNREACHABLE)
  assert isinstance(strategy, tf.distribute.MirroredStrategy)


@pytest.mark.parametrize("name, use_tpu", [("tpu", False), ("default", True)])
def test_use_tpu_is_strategy_tpu(name, use_tpu):
  with pytest.raises(distribute.StrategyError,
                     match=f"no TPU reachable at {UNREACHABLE}"):
    distribute.get_strategy(name, use_tpu=use_tpu, tpu=UNREACHABLE)


def test_unknown_strategy_lists_the_valid_ones():
  with pytest.raises(distribute.StrategyError,
                     match="Unknown --strategy 'horovod'; valid: default, "
                     "tpu, mirrored, multi_worker"):
    distribute.get_strategy("horovod")


@pytest.fixture
def no_tpu_here(monkeypatch):
  monkeypatch.setattr(tpu_env, "tpu_chip_count", lambda: 0)
  for variable in distribute.TPU_NAME_VARIABLES:
    monkeypatch.delenv(variable, raising=False)
  return monkeypatch


def test_use_tpu_without_a_tpu_fails_at_once_without_the_metadata_server(
    no_tpu_here):
  # TPUClusterResolver would otherwise ask metadata.google.internal for the
  # project and zone of a TPU name; no chip and no name: stop before that.
  with pytest.raises(distribute.StrategyError, match="no TPU chip on this "
                     "machine .* no --tpu or TPU_NAME"):
    distribute.get_strategy(use_tpu=True)
  with pytest.raises(distribute.StrategyError,
                     match="--tpu=local: no TPU chip on this machine"):
    distribute.get_strategy(use_tpu=True, tpu="local")


def test_tpu_defaults_to_the_local_chips_then_to_tpu_name(no_tpu_here):
  no_tpu_here.setenv("TPU_NAME", "my-tpu")
  assert distribute._resolve_tpu(None) is None  # pylint: disable=protected-access
  no_tpu_here.setattr(tpu_env, "tpu_chip_count", lambda: 4)
  assert distribute._resolve_tpu(None) == "local"  # pylint: disable=protected-access


def test_only_the_default_strategy_feeds_input_without_distributing_it():
  assert not distribute.distributes_input(tf.distribute.get_strategy())
  assert distribute.distributes_input(
      tf.distribute.MirroredStrategy(["/cpu:0"]))
