"""Picks the tf.distribute strategy: TPU, mirrored GPUs, multi-worker or one device."""

import os
import socket

from absl import logging
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf import settings
from effnetv2_tf import tpu_env
from effnetv2_tf.settings import Setting

STRATEGIES = ("default", "tpu", "mirrored", "multi_worker")


class StrategyError(errors.UserError, RuntimeError):
  """The requested strategy cannot run here; the message says why."""


GRPC_PROBE_SECONDS = 10
# Where TPUClusterResolver finds a TPU name without --tpu (GKE, TPU Nodes).
TPU_NAME_VARIABLES = ("KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_NAME")


def _probe_grpc(tpu):
  """Fails fast on an unreachable grpc:// address (TF would retry for long)."""
  host, _, port = tpu[len("grpc://"):].rpartition(":")
  try:
    socket.create_connection((host, int(port)), GRPC_PROBE_SECONDS).close()
  except (OSError, ValueError) as err:
    raise StrategyError(
        f"--use_tpu/--strategy=tpu: no TPU reachable at {tpu}: {err}.") from None


def _resolve_tpu(tpu):
  """The TPU to connect to; fails at once where there is none to find.

  Without --tpu: 'local' on a TPU VM (TPU chips attached), else the
  TPU_NAME environment variable (TPU Nodes, GKE). Neither: an error, never
  a look-up on the cloud metadata server.
  """
  chips = tpu_env.tpu_chip_count()
  if not tpu:
    if chips:
      return "local"
    if any(os.environ.get(v) for v in TPU_NAME_VARIABLES):
      return None  # TPUClusterResolver reads it
    raise StrategyError(
        "--use_tpu/--strategy=tpu: no TPU chip on this machine (no Google "
        "PCI device under /sys/bus/pci/devices) and no --tpu or TPU_NAME; "
        "pass --tpu=NAME_OR_GRPC_ADDRESS for a remote TPU.")
  if tpu == "local" and not chips:
    raise StrategyError(
        "--tpu=local: no TPU chip on this machine (no Google PCI device "
        "under /sys/bus/pci/devices); run on a Cloud TPU VM or pass "
        "--tpu=NAME_OR_GRPC_ADDRESS.")
  if tpu.startswith("grpc://"):
    _probe_grpc(tpu)
  return tpu


def _tpu_strategy(tpu):
  tpu = _resolve_tpu(tpu)
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, RuntimeError, tf.errors.OpError) as err:
    raise StrategyError(
        "--use_tpu/--strategy=tpu: no TPU reachable "
        f"(tpu={tpu or 'from TPU_NAME'}): {err}. On a Cloud TPU VM run "
        "with --use_tpu (--tpu=local); elsewhere pass "
        "--tpu=NAME_OR_GRPC_ADDRESS.") from None
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


# Replicas per batch-norm group under TPUStrategy by default: the
# reference's TpuBatchNormalization pools min(8, replicas) (utils.py L189),
# and main.py L78 / main_tf2.py L127 select it on TPUs only.
TPU_BN_GROUP = 8
# The config's key (`runtime` section).
SETTINGS = (
    Setting("bn_group_size", None, int,
            "replicas whose batch-norm statistics are pooled: 1 each its "
            "own, k groups of k consecutive replicas, 0 all",
            fills=f"min({TPU_BN_GROUP}, replicas) under TPUStrategy, else 1",
            **settings.at_least(0, " (0: all replicas), or null (default)")),
)


def resolve_bn_group_size(setting, replicas, tpu):
  """Replicas per batch-norm group, and the reason, for the start line.

  Args:
    setting: runtime.bn_group_size; None: the reference's rule, groups of
      min(TPU_BN_GROUP, replicas) under TPUStrategy, each replica its own
      elsewhere (main_tf2.py's MirroredStrategy keeps Keras' per-replica
      BN; main.py off TPUs runs on one device); 0: all replicas.
    replicas: the strategy's replicas in sync.
    tpu: whether the strategy is TPUStrategy.

  Raises:
    StrategyError: a group size that does not divide the replicas.
  """
  if setting is None:
    size = min(TPU_BN_GROUP, replicas) if tpu else 1
    why = (f"default under TPUStrategy: groups of min({TPU_BN_GROUP}, "
           "replicas), as the reference" if tpu else
           "default off TPUs, as the reference")
  else:
    size = setting or replicas
    why = f"runtime.bn_group_size={setting}"
  invalid = settings.by_name(SETTINGS)["bn_group_size"].problem(setting,
                                                                None)
  if invalid:
    raise StrategyError(f"runtime.bn_group_size={setting}: must be "
                        f"{invalid}.")
  if replicas % size:
    raise StrategyError(
        f"Batch-norm groups of {size} replicas ({why}) do not divide the "
        f"{replicas} replicas; set runtime.bn_group_size to a divisor of "
        f"{replicas}, or 0 for all of them.")
  if size == 1:
    text = "batch norm per replica"
  elif size == replicas:
    text = f"batch norm over all {replicas} replicas"
  else:
    text = f"batch norm over groups of {size} of the {replicas} replicas"
  return size, f"{text} ({why})"


def bn_group_size(setting, strategy):
  """`resolve_bn_group_size` for `strategy`."""
  return resolve_bn_group_size(
      setting, strategy.num_replicas_in_sync,
      isinstance(strategy, tf.distribute.TPUStrategy))


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
  return is_chief_task(resolver.task_type, resolver.task_id)


def is_chief_task(task_type, task_id):
  """Whether the cluster task (TF_CONFIG's type and index) is the one that
  writes: the chief, else worker 0, else a process outside a cluster."""
  return task_type is None or task_type == "chief" or (
      task_type == "worker" and task_id == 0)


def distributes_input(strategy):
  """Whether datasets reach the replicas through a DistributedIterator
  (every strategy but the default one-device strategy)."""
  return isinstance(strategy, (tf.distribute.TPUStrategy,
                               tf.distribute.MirroredStrategy,
                               tf.distribute.MultiWorkerMirroredStrategy))


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
