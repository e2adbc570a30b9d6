"""Whether a training plan fits its data and the machine, before any work.

Two checks (`check_fits`, called by the drivers once the data are known,
in every mode but eval), each a ConfigError of one line that names
train.batch_size and a value that fits:

- the global batch is at most the training split: a larger one repeats
  each image many times within every batch (the stream repeats), so an
  "epoch" is one step of copies, and its memory grows for nothing;
- on the CPU (no GPU or TPU: the step's activations then live in host
  memory), the training step's estimated peak memory at the plan's
  largest image size fits the machine's memory.

The memory estimate is a line fitted to the memory benchmark
(`BENCHMARK_FILE`, written by benchmarks/memory.py): the peak RSS of a
main.py training run of efficientnetv2-b0 at batch 32 and four image
sizes. Peak MiB = `FIXED_MIB` + `MIB_PER_IMAGE_PIXEL` * batch * size^2,
least squares over the four (batch * size^2, main_py_mib) points:
TensorFlow, the weights, optimizer slots and EMA are the fixed part, the
activations kept for the gradient the per-image part. The "main_py_mib"
column is the one fitted (not the lean step's "ours_mib"): it is the peak
of the same driver this check guards, input pipeline, EMA and checkpoints
included. tests/test_plan.py refits both constants from the file. Beyond
the fitted points (main.py, 2 CPU cores, TensorFlow 2.21): B0 at batch 128
and 128 px, 3950 MiB estimated, 4037 measured; S at batch 16 and 192 px,
3170 estimated, 3639 measured (its larger weights: more fixed memory).

Other models scale the per-image part by their activation count relative
to b0's (`activations_per_pixel`): the elements that each convolution
outputs, counted from the block strings, without building a model. The
step keeps about that many tensors per convolution for its gradient
(convolution, batch-norm and activation outputs), so activation memory
follows that count; FLOPs would not (a 3x3 convolution costs 9 times a
1x1 one of the same output size, and keeps the same activations).
"""

import math
import os

import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf.models import block_strings
from effnetv2_tf.models import model as model_lib
from effnetv2_tf.models import options as options_lib
from effnetv2_tf.models import registry
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import distribute
from effnetv2_tf.training import progressive

BENCHMARK_FILE = "benchmarks/results/memory.json"
BENCHMARK_MODEL = "efficientnetv2-b0"
# Least-squares fit of BENCHMARK_FILE's main_py_mib against batch * size^2
# (module docstring): 1194.5 MiB + 1.3141e-3 MiB per image pixel.
FIXED_MIB = 1194.5
MIB_PER_IMAGE_PIXEL = 1.3141e-3
# train.recompute keeps at most this share of the activations (peak less
# the model's memory; RECOMPUTE_FILE, written by benchmarks/memory.py
# --recompute, measured 0.27-0.30 on V2-S at 300-384 px; B0 at 128 px
# 0.48): the per-image part of the estimate is scaled by it.
RECOMPUTE_FILE = "benchmarks/results/memory_recompute.json"
RECOMPUTE_SHARE = 0.5
# The batch suggested for memory leaves this share of the machine's memory
# to the estimate (the rest: its error, and the other processes).
MEMORY_SHARE = 0.8
MIB = 2.0 ** 20  # bytes


def check_fits(config, source, strategy):
  """Raises ConfigError (one line) when train.batch_size cannot work here:
  larger than the training split, or (on the CPU) more memory than the
  machine has."""
  batch = config.train.batch_size
  workers = distribute.num_workers(strategy)
  memory = None if _on_accelerator(strategy) else machine_mib()
  fits = fitting_batch(config, memory, workers) if memory else None
  split = source.split_sizes.get("train")
  if split and batch > split:
    where = f" {source.root}" if getattr(source, "root", "") else ""
    suggestion = min(_power_of_two_floor(split), fits or split)
    raise errors.ConfigError(
        f"train.batch_size {batch} is larger than the training split "
        f"({split} images of {source.name}{where}): set "
        f"--hparam_str=train.batch_size={suggestion}")
  if memory:
    check_memory(config, batch, workers, memory)


def check_memory(config, batch, workers, memory_mib):
  """Raises ConfigError when the CPU training step of the global `batch`
  (split over `workers` hosts, each running train.grad_accum_steps
  micro-batches in turn) needs more than `memory_mib`."""
  size = largest_image_size(config)
  need = estimate_mib(config, _micro_batch(config, batch / workers), size)
  if need <= memory_mib:
    return
  fits = fitting_batch(config, memory_mib, workers)
  image_mib = estimate_mib(config, 1, size) - FIXED_MIB
  what = (f"set --hparam_str=train.batch_size={fits} or smaller" if fits
          else "even batch 1 does not fit: lower progressive.max_image_size")
  raise errors.ConfigError(
      f"train.batch_size {batch} at {size} px needs about "
      f"{need / 1024:.0f} GiB here (about {image_mib:.0f} MiB an image on "
      f"CPU, {BENCHMARK_FILE}); this machine has {memory_mib / 1024:.0f} "
      f"GiB: {what}")


def estimate_mib(config, host_batch, size):
  """Estimated peak host memory (MiB) of CPU training with `host_batch`
  images of `size` px on one host at a time (module docstring; with
  train.recompute, `RECOMPUTE_SHARE` of the activations)."""
  ratio = activations_per_pixel(config.model) / _benchmark_activations()
  if config.train.recompute:
    ratio *= RECOMPUTE_SHARE
  return FIXED_MIB + MIB_PER_IMAGE_PIXEL * ratio * host_batch * size ** 2


def _micro_batch(config, host_batch):
  """The images of `host_batch` whose activations live at once: a
  micro-batch with train.grad_accum_steps."""
  return math.ceil(host_batch / config.train.grad_accum_steps)


def fitting_batch(config, memory_mib, workers=1):
  """The largest power-of-two global batch whose estimate per host stays
  within MEMORY_SHARE of `memory_mib` (its micro-batches, with
  train.grad_accum_steps); 0 when not even one image does."""
  size = largest_image_size(config)
  per_image = estimate_mib(config, 1, size) - FIXED_MIB
  room = MEMORY_SHARE * memory_mib - FIXED_MIB
  if room < per_image:
    return 0
  return _power_of_two_floor(int(room // per_image) * workers *
                             config.train.grad_accum_steps)


def largest_image_size(config):
  """The largest training image size of the plan's stages."""
  return max(progressive.stage_values(config, i)["image_size"]
             for i in range(config.progressive.num_stages))


def activations_per_pixel(model_config):
  """Elements output by the convolutions of one image's forward pass, per
  input pixel: stem, every block's expand, depthwise and project
  convolutions at their strides' resolutions, and the head's 1x1.

  `model_config` is a config's `model` section (or a dict of it): its
  name and the width, depth and block overrides it sets.
  """
  spec = registry.get_model_spec(model_config["name"])
  options = options_lib.ModelOptions(
      dropout_rate=0.0, **run_dir.model_overrides(model_config))
  blocks = model_lib.scaled_block_args(spec, options)
  area = 1 / 4  # the stem's stride 2
  total = blocks[0][2].input_filters * area
  for _, _, args in blocks:
    out_area = area / args.strides ** 2
    mid = args.input_filters * args.expand_ratio
    expanded = args.expand_ratio != 1
    if args.conv_type == block_strings.FUSED_MBCONV:  # kxk (+ 1x1 project)
      total += (mid * out_area if expanded else 0) + (
          args.output_filters * out_area)
    else:  # 1x1 expand, depthwise kxk, 1x1 project
      total += (mid * area if expanded else 0) + mid * out_area + (
          args.output_filters * out_area)
    area = out_area
  top = model_lib.round_filters(
      spec.feature_size, options.width_coefficient or spec.width_coefficient,
      spec.depth_divisor, spec.min_depth, spec.round_down_limit)
  return total + top * area


def _benchmark_activations():
  """`activations_per_pixel` of the benchmark's model."""
  return activations_per_pixel({"name": BENCHMARK_MODEL})


def machine_mib():
  """The machine's memory in MiB: physical, or a smaller cgroup limit."""
  total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  try:
    with open("/sys/fs/cgroup/memory.max") as f:
      limit = f.read().strip()
    if limit.isdigit():
      total = min(total, int(limit))
  except OSError:
    pass
  return total / MIB


def _on_accelerator(strategy):
  """Whether training runs on GPUs or TPUs (activations off the host)."""
  return (isinstance(strategy, tf.distribute.TPUStrategy) or
          bool(tf.config.list_logical_devices("GPU")))


def _power_of_two_floor(n):
  return 1 << (max(1, int(n)).bit_length() - 1)
