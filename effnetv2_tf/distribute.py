"""Picks the tf.distribute strategy: TPU, mirrored GPUs, multi-worker or one device."""

import socket

from absl import logging
import tensorflow as tf

STRATEGIES = ("default", "tpu", "mirrored", "multi_worker")


class StrategyError(RuntimeError):
  """The requested strategy cannot run here; the message says why."""


GRPC_PROBE_SECONDS = 10


def _probe_grpc(tpu):
  """Fails fast on an unreachable grpc:// address (TF would retry for long)."""
  host, _, port = tpu[len("grpc://"):].rpartition(":")
  try:
    socket.create_connection((host, int(port)), GRPC_PROBE_SECONDS).close()
  except (OSError, ValueError) as err:
    raise StrategyError(
        f"--use_tpu/--strategy=tpu: no TPU reachable at {tpu}: {err}.") from None


def _tpu_strategy(tpu):
  if tpu and tpu.startswith("grpc://"):
    _probe_grpc(tpu)
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, RuntimeError, tf.errors.OpError) as err:
    raise StrategyError(
        f"--use_tpu/--strategy=tpu: no TPU reachable (tpu={tpu or 'local'}): "
        f"{err}. On a Cloud TPU VM run with --use_tpu (--tpu=local); "
        "elsewhere pass --tpu=NAME_OR_GRPC_ADDRESS.") from None
  return tf.distribute.TPUStrategy(resolver)


def get_strategy(name="default", use_tpu=False, tpu=None):
  """Returns the strategy; an explicit `name` wins over detection.

  Args:
    name: one of STRATEGIES; 'default' means TPU when `use_tpu`, mirrored
      when GPUs are visible, otherwise the default (one device) strategy.
    use_tpu: same as name='tpu'.
    tpu: TPU name or grpc address for TPUClusterResolver.
  """
  if name not in STRATEGIES:
    raise StrategyError(f"Unknown --strategy {name!r}; valid: "
                        f"{', '.join(STRATEGIES)}.")
  if use_tpu and name == "default":
    name = "tpu"
  if name == "tpu":
    strategy = _tpu_strategy(tpu)
  elif name == "multi_worker":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  elif name == "mirrored" or tf.config.list_physical_devices("GPU"):
    strategy = tf.distribute.MirroredStrategy()
  else:
    strategy = tf.distribute.get_strategy()
  logging.info("Strategy %s with %d replica(s).", type(strategy).__name__,
               strategy.num_replicas_in_sync)
  return strategy


def num_workers(strategy):
  """Hosts in the cluster (1 unless MultiWorkerMirroredStrategy spans more)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(
      strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 1
  spec = resolver.cluster_spec()
  return max(1, sum(spec.num_tasks(job) for job in spec.jobs
                    if job in ("chief", "worker")))


def is_chief(strategy):
  """Whether this worker writes checkpoints and summaries."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(
      strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type is None or task_type == "chief" or (
      task_type == "worker" and task_id == 0)


def mixed_precision_policy(strategy):
  """The --mixed_precision policy for where `strategy` runs.

  bfloat16 on TPUs and CPUs (same exponent range as float32: no loss
  scaling), float16 on GPUs (their fast path; needs loss scaling, see
  `optim.build_optimizer`).
  """
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return "mixed_bfloat16"
  if tf.config.list_physical_devices("GPU"):
    return "mixed_float16"
  return "mixed_bfloat16"
