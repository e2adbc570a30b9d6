"""XLA compilation of the train and eval steps (`runtime.jit_compile`).

A TPU runs every step as one XLA program; on CPUs and GPUs
`tf.function(jit_compile=True)` does the same for the per-replica step.
Both drivers compile the step of `Trainer.make_step_fn` (forward, backward,
fused BN, 1x1 matmuls, fused optimizer updates, weight decay, EMA) this way
when the setting is on; the input pipeline (tf.data has no XLA kernels),
the on-device step loop and the serving signatures' raw-image crop and
resize (any image size; a bicubic resize has no XLA kernel) stay outside.

Default: on under TPUStrategy, where XLA is implied, off on CPU and GPU,
where the XLA step measured slower on CPUs and is unmeasured on GPUs
(benchmarks/README.md, xla_step.py).
"""

import re

from absl import logging
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf.settings import Setting

# TensorFlow's message for an op without an XLA kernel: "... on
# XLA_CPU_JIT: PyFunc (No registered 'PyFunc' OpKernel ...".
_UNSUPPORTED_OP = re.compile(r"on (XLA_\w+_JIT): (\w+) \(")
# tensorflow-tpu 2.20 on a machine without TPU (measured): its XLA has no
# CPU backend, and every jit_compile function fails with this NotFoundError.
_NO_BACKEND = "could not find registered transfer manager for platform Host"


# The config's keys (`runtime` section).
SETTINGS = (
    Setting("jit_compile", None, bool, "XLA-compiled train and eval steps",
            fills="on under TPUStrategy (XLA implied), off on CPU and GPU"),
    Setting("retrace_per_stage", None, bool,
            "a train step traced per stage with its static image size "
            "(else one step with an unknown size serves every stage)",
            fills="on wherever XLA compiles the step (static shapes)"),
)


class XlaError(errors.UserError, RuntimeError):
  """A step cannot be compiled with XLA; the message names the op."""


def resolve(setting, strategy):
  """Whether steps are XLA-compiled, and why (logged)."""
  tpu = isinstance(strategy, tf.distribute.TPUStrategy)
  if setting is None:
    on = tpu
    why = ("TPUStrategy compiles with XLA" if tpu else
           "default off on CPU/GPU; runtime.jit_compile=true turns it on")
  else:
    on = bool(setting)
    why = "runtime.jit_compile=" + str(on).lower()
    if tpu and not on:
      why += " (the TPU still compiles the step with XLA)"
  replicas = strategy.num_replicas_in_sync
  if on and not tpu and replicas > 1:
    # Measured on 2 CPU replicas: "Trying to access resource
    # stem_conv/kernel/replica_1 located in device CPU:1 from device CPU:0".
    raise XlaError(
        f"runtime.jit_compile=true with {replicas} mirrored replicas: each "
        "replica's XLA step would update the other devices' copies of the "
        "mirrored variables, which XLA cannot do; leave it off (the "
        "default) or train on one device.")
  logging.info("XLA-compiled steps: %s (%s).", "on" if on else "off", why)
  return on, f"XLA {'on' if on else 'off'} ({why})"


def resolve_retrace(setting, jit_compile):
  """Whether each stage traces its own step (static image size), and why.

  XLA (jit_compile, and always on TPUs) compiles for static shapes, so
  there every stage retraces, as in the paper. Elsewhere one step traced
  with an unknown image size serves all stages, also under several
  mirrored replicas (their batch norms' collectives, for the moving
  statistics and runtime.bn_group_size's groups, reduce per-channel
  vectors, whose shapes do not depend on the image size): its steps take
  2-5% longer than the static one's on CPU (benchmarks/polymorphic_step.py),
  and later stages skip their retrace.
  """
  if setting is None:
    setting = bool(jit_compile)
    why = "default with XLA" if jit_compile else "default without XLA"
  elif jit_compile and not setting:
    raise XlaError(
        "runtime.retrace_per_stage=false with XLA: the step needs each "
        "stage's static image size there; leave it unset.")
  else:
    why = "runtime.retrace_per_stage=" + str(bool(setting)).lower()
  return bool(setting), (
      f"{'retraced per stage' if setting else 'one trace for every stage size'}"
      f" ({why})")


def compiled(fn, jit_compile):
  """`fn` as an XLA-compiled tf.function when `jit_compile`, else as is."""
  return tf.function(fn, jit_compile=True) if jit_compile else fn


def compile_error(err, what):
  """An XlaError naming the op of `err`, or None if XLA did not cause it."""
  if _NO_BACKEND in str(err):
    return XlaError(
        f"{what} cannot be XLA-compiled: this TensorFlow build has no XLA "
        "backend for the CPU (tensorflow-tpu's has only the TPU's); "
        "runtime.jit_compile=true needs a TPU there, or the cpu/gpu build.")
  match = _UNSUPPORTED_OP.search(str(err))
  if not match:
    return None
  device, op = match.groups()
  return XlaError(
      f"{what} cannot be XLA-compiled: op {op} has no {device} kernel "
      "(runtime.jit_compile is on; --hparam_str=runtime.jit_compile=false "
      "runs it without XLA).")


def check_static_shapes(element_spec, what):
  """Raises XlaError unless every input tensor has a fully defined shape.

  TPUs (and XLA without recompiling per batch) need static shapes: the
  training batches come with drop_remainder, the eval ones padded.
  """
  for key, spec in element_spec.items():
    if not spec.shape.is_fully_defined():
      raise XlaError(
          f"{what}: {key!r} has shape {spec.shape}, not static; XLA and "
          "TPU steps need fixed batch and image sizes.")
