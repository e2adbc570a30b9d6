"""Strategy choice: explicit --strategy wins, --use_tpu is --strategy=tpu."""

import pytest
import tensorflow as tf

from effnetv2_tf import distribute

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
