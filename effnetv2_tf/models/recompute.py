"""Recomputation (gradient checkpointing) of the model's training pass.

`training_forward(model)` gives a function that computes what
`model(images, training=True)` computes, in segments cut from the model's
functional graph at block boundaries: the stem, one segment per block,
the head. The stem and each block run under a custom gradient (the head,
at 1/32 of the image size, has little to keep, and its recomputation
would start at once, so it runs as it is): the forward pass keeps
only the segment's input (nothing is recorded for the backward pass), and
the backward pass runs the segment again under a GradientTape, once its
output gradient has arrived, and differentiates that. The peak memory of a
training step is then about the block outputs plus one block's
activations, instead of every layer's activations, for about one more
forward pass of compute. The model itself is untouched (same layers,
names, weights and weight files): the segments are sub-models sharing its
layers.

Why not `tf.recompute_grad` (Keras' `keras.remat` is it on TensorFlow):
it calls the function a second time as it stands, and our segments have
state that a second call changes. (a) Stochastic depth and dropout draw
their masks from a Keras SeedGenerator whose state variable advances at
every call, so the recomputed pass would draw other masks than the
forward pass, and the gradients would be of another network. (b) Batch
norm in training mode assigns its moving statistics at every call, so
they would be updated twice per step. Here the recomputed pass runs in a
`keras.StatelessScope` that maps every non-trainable variable of the
segment (seed-generator states, moving statistics) to its value when the
forward pass started, and drops the variable updates that pass makes:
the same masks, and the state advances once, in the forward pass, as in
a plain step.
"""

import keras
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf.models import fused_bn
from effnetv2_tf.models import names
# The tape switch tf.recompute_grad uses; there is no public one.
from tensorflow.python.eager import record  # pylint: disable=g-direct-tensorflow-import

# The layer names of one block share its prefix (e.g. `block2a_expand_conv`,
# `block4c_se_reduce`).
_BLOCK_PREFIX = names.BLOCK_NAME


class RecomputeError(errors.UserError, ValueError):
  """A model that `training_forward` cannot cut into blocks."""


def segments(model):
  """The model as a chain of sub-models sharing its layers: the stem (the
  layers before the first block), each block, then the head.

  Raises:
    RecomputeError: the model has no `blockNx_` layers, or a block's layers
      are not consecutive.
  """
  groups = []  # [prefix, last layer of the group]
  for layer in model.layers:
    if isinstance(layer, keras.layers.InputLayer):
      continue
    match = _BLOCK_PREFIX.match(layer.name)
    key = match.group(0) if match else ("head" if groups and groups[-1][0]
                                        != "stem" else "stem")
    if groups and groups[-1][0] == key:
      groups[-1][1] = layer
    else:
      groups.append([key, layer])
  keys = [key for key, _ in groups]
  if not any(_BLOCK_PREFIX.match(key) for key in keys) or (
      len(set(keys)) != len(keys)):
    raise RecomputeError(
        f"recompute needs a model of consecutive blocks named like "
        f"'block2a_expand_conv' (models/model.py); {model.name} is not.")
  cuts = [model.input] + [layer.output for _, layer in groups[:-1]]
  cuts.append(model.output)
  return [keras.Model(start, end, name=f"{model.name}_{key.rstrip('_')}")
          for (key, _), start, end in zip(groups, cuts, cuts[1:])]


def _after(tensor, upstream):
  """`tensor` plus a zero computed from `upstream`: a data dependency, so
  the recomputation cannot run before the gradient of its output arrives
  (XLA ignores control dependencies; tf.recompute_grad does the same)."""
  first = tf.reshape(upstream, [-1])[:1]
  zero = tf.reduce_sum(tf.cast(tf.math.is_nan(first), tensor.dtype)) * 0
  return tensor + zero


def recomputed(segment, input_gradient=True):
  """`segment(x, training=True)` that keeps only `x` for the backward pass
  and runs the segment again there (see the module docstring).

  `input_gradient`: False for the model's input (the images), whose
  gradient a train step does not need.
  """
  state = segment.non_trainable_variables

  @tf.custom_gradient
  def run(x):
    # The state the forward pass starts from, for the recomputed pass.
    start = [tf.identity(v.value) for v in state]
    with record.stop_recording():
      y = segment(x, training=True)

    def grad(dy, variables=None):
      variables = list(variables or [])
      x_again = _after(x, dy)
      with tf.GradientTape() as tape:
        tape.watch(x_again)
        # deferred_updates: this pass's batch-norm updates are dropped
        # anyway, and would all-reduce under several replicas (refused
        # inside gradient accumulation's loop).
        with keras.StatelessScope(list(zip(state, start))), \
            fused_bn.deferred_updates():
          y_again = segment(x_again, training=True)
      sources = ([x_again] if input_gradient else []) + variables
      grads = tape.gradient(y_again, sources, output_gradients=dy,
                            unconnected_gradients="zero")
      if not input_gradient:
        grads = [None] + grads
      return grads[0], grads[1:]

    return y, grad

  return run


def training_forward(model):
  """A function images -> `model(images, training=True)`'s outputs whose
  gradients recompute the activations of the stem and of each block
  instead of keeping them.

  Same values and gradients as the plain call, stochastic depth masks
  included; batch-norm moving statistics and seed-generator states are
  updated once per call, as by the plain call. No gradient flows to the
  images. Build it once per model (it cuts the graph into sub-models) and
  call it inside the train step's tape; it traces inside tf.function and
  runs under tf.distribute and mixed precision.
  """
  *recomputed_parts, head = segments(model)
  parts = [recomputed(segment, input_gradient=i > 0)
           for i, segment in enumerate(recomputed_parts)]
  parts.append(lambda x: head(x, training=True))

  def forward(images):
    x = images
    for part in parts:
      x = part(x)
    return x

  return forward
