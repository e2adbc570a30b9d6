"""Strategy choice (explicit --strategy wins, --use_tpu is --strategy=tpu)
and the batch-norm groups it implies."""

import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
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


# The reference's rule (google/automl efficientnetv2 at 6a54c87): utils.py
# L189 pools min(8, num_shards) TPU replicas (TpuBatchNormalization, chosen
# on TPUs by main.py L78 and main_tf2.py L127); elsewhere utils.py L232-233
# builds plain Keras BN, each replica its own statistics.
@pytest.mark.parametrize("replicas, tpu, expected", [
    (32, True, 8), (16, True, 8), (8, True, 8), (4, True, 4), (1, True, 1),
    (4, False, 1), (1, False, 1)])
def test_bn_groups_default_to_the_reference_rule(replicas, tpu, expected):
  size, why = distribute.resolve_bn_group_size(None, replicas, tpu)
  assert size == expected
  assert "as the reference" in why


@pytest.mark.parametrize("setting, expected, text", [
    (0, 8, "batch norm over all 8 replicas"),
    (2, 2, "batch norm over groups of 2 of the 8 replicas"),
    (1, 1, "batch norm per replica")])
def test_bn_group_setting_wins(setting, expected, text):
  size, why = distribute.resolve_bn_group_size(setting, 8, True)
  assert size == expected
  assert why == f"{text} (runtime.bn_group_size={setting})"


@pytest.mark.parametrize("setting, replicas, tpu, message", [
    (3, 4, False, "Batch-norm groups of 3 replicas (runtime.bn_group_size=3) "
     "do not divide the 4 replicas; set runtime.bn_group_size to a divisor "
     "of 4, or 0 for all of them."),
    # min(8, 12) = 8: the reference raises too (utils.py L67-69).
    (None, 12, True, "Batch-norm groups of 8 replicas (default under "
     "TPUStrategy"),
    (-1, 4, False, "runtime.bn_group_size=-1: must be >= 0")])
def test_bn_groups_that_do_not_divide_the_replicas_fail(setting, replicas,
                                                        tpu, message):
  with pytest.raises(distribute.StrategyError) as err:
    distribute.resolve_bn_group_size(setting, replicas, tpu)
  assert str(err.value).startswith(message)
  assert "\n" not in str(err.value)


def test_bn_group_size_is_validated_with_the_config():
  with pytest.raises(config_lib.ConfigError,
                     match=r"runtime.bn_group_size: -2; valid: >= 0"):
    config_lib.build_config("efficientnetv2-b0", "smoke",
                            "runtime.bn_group_size=-2")
