"""Learning-rate schedule, optimizer and weight decay (paper section 5.1).

Both drivers use these definitions:
- the learning-rate schedule (`schedule.py`) built from the config;
- RMSProp (rho 0.9, momentum 0.9, epsilon 1e-3). Keras' RMSprop adds
  epsilon inside the square root like TF1's; it starts the mean square at 0
  where TF1 started it at 1 (irrelevant after warmup from lr 0); by default
  it updates through TF1's fused ApplyRMSProp kernel (`fused_optim.py`).
  The reference's other optimizers by its names, and AdamW (ours, for
  finetuning): `build_optimizer`;
- weight decay as a coupled L2 term wd * sum(w^2) / 2 over kernels only
  (`coupled_weight_decay`; AdamW decays the same kernels decoupled);
- layer-wise learning-rate decay (`train.layer_decay`, timm's
  --layer-decay; ours): `layer_rates`, `LayerRates`.
The weights' moving average is `ema.py`.
"""

import keras
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf import settings
from effnetv2_tf.models import names
from effnetv2_tf.settings import Setting
from effnetv2_tf.training import fused_optim
from effnetv2_tf.training import schedule as schedule_lib

KERNEL_SUFFIXES = ("kernel",)  # conv, depthwise, dense; not gamma/beta/bias
OPTIMIZERS = ("rmsprop", "momentum", "sgd", "adam", "adamw")  # build_optimizer
ADAMW_EPSILON = 1e-8  # timm's and PyTorch's AdamW; build_optimizer says why

# Layer-wise learning-rate decay: layer names of models/model.py.
STEM_PREFIX = names.STEM_PREFIX  # stem_conv, stem_bn: layer 0
BLOCK_NAME = names.BLOCK_NAME  # block4c_...: 1..N
HEAD_PREFIXES = (names.HEAD_PREFIX, names.CLASSIFIER_LAYER)  # layer N + 1

# The config's optimizer and schedule keys (`train` section).
SETTINGS = (
    Setting("optimizer", "rmsprop", str, "the optimizer, by the reference's "
            "names (adamw: ours)", choices=OPTIMIZERS),
    Setting("rmsprop_rho", 0.9, float, "RMSProp's mean-square decay"),
    Setting("momentum", 0.9, float, "momentum of rmsprop and momentum"),
    Setting("epsilon", 1e-3, float, "RMSProp's epsilon (adam and adamw "
            "keep their own)"),
    Setting("fused_optimizer", True, bool,
            "TensorFlow's fused update kernels (fused_optim.py)"),
    Setting("lr_base", 0.016, float, "learning rate per 256 images, scaled "
            "with the batch", **settings.at_least(0)),
    Setting("lr_schedule", "exponential", str, "the decay after warmup",
            choices=schedule_lib.SCHEDULES),
    Setting("lr_decay_factor", 0.97, float, "exponential: the factor per "
            "lr_decay_epochs"),
    Setting("lr_decay_epochs", 2.4, float, "exponential: epochs per decay"),
    Setting("warmup_epochs", 5.0, float, "linear warmup from 0",
            **settings.at_least(0)),
    Setting("weight_decay", 1e-5, float, "coupled L2 on kernels: wd * "
            "sum(w^2) / 2; adamw: its decoupled decay w -= lr wd w",
            **settings.at_least(0)),
    Setting("layer_decay", 1.0, float, "layer-wise learning-rate decay: "
            "layer i of N blocks + stem and head trains at lr * "
            "layer_decay ** (N + 1 - i); 1 = off", **settings.in_unit()),
)


class OptimizerError(errors.UserError, ValueError):
  """An unknown `train.optimizer`; the message lists the valid ones."""


class LayerDecayError(errors.ConfigError):
  """`train.layer_decay` on a model with a variable of no known layer."""


def build_schedule(train_config, global_batch_size, steps_per_epoch,
                   total_steps):
  """The schedule of a `config.train` section."""
  return schedule_lib.WarmupDecaySchedule(
      base_lr=train_config.lr_base * global_batch_size / 256.0,
      total_steps=total_steps,
      warmup_steps=int(train_config.warmup_epochs * steps_per_epoch),
      schedule=train_config.lr_schedule,
      decay_steps=int(train_config.lr_decay_epochs * steps_per_epoch),
      decay_factor=train_config.lr_decay_factor)


def build_optimizer(train_config, learning_rate, model=None):
  """`train.optimizer` by the reference's names (utils.py build_optimizer
  L146-170, main_tf2.py build_tf2_optimizer L36-59), and AdamW:

  - rmsprop: RMSProp (rho, momentum, epsilon from `train`), the paper's;
  - momentum: SGD with `train.momentum`, not Nesterov;
  - sgd: plain gradient descent (no momentum);
  - adam: Adam with Keras' default epsilon 1e-7 (main_tf2.py's Keras Adam;
    main.py's TF1 AdamOptimizer has 1e-8, docs/recipes.md D19);
  - adamw (ours; the reference has none): Keras' AdamW with decoupled
    weight decay w -= lr * train.weight_decay * w on the kernels
    `decay_variables` picks (not BN gamma/beta, not biases), in place of
    the coupled L2 term (`coupled_weight_decay` is 0 for it). Epsilon
    `ADAMW_EPSILON` = 1e-8, PyTorch's and timm's AdamW default: AdamW is
    here for timm-style finetuning recipes (with `train.layer_decay`), whose
    hyperparameters assume it. Like adam it ignores `train.epsilon`
    (RMSProp's 1e-3, far too large for Adam's sqrt(v) + eps).

  With `train_config.fused_optimizer` (default) RMSProp and SGD update
  through TensorFlow's fused kernels (`fused_optim.py`, same math).
  `train.layer_decay` < 1 scales each variable's learning rate by its
  layer's factor (`layer_rates` of `model`, which it then needs;
  `LayerRates`). Under a `mixed_float16` global policy the optimizer is
  wrapped in Keras' dynamic LossScaleOptimizer; train steps compute
  gradients of `optimizer.scale_loss(loss)` (the identity for the others).
  """
  name = train_config.optimizer
  fused = train_config.get("fused_optimizer", True)
  layer_decay = train_config.get("layer_decay") or 1.0
  sgd = fused_optim.FusedSGD if fused else keras.optimizers.SGD
  if name == "rmsprop":
    cls = fused_optim.FusedRMSprop if fused else keras.optimizers.RMSprop
    options = dict(rho=train_config.rmsprop_rho,
                   momentum=train_config.momentum,
                   epsilon=train_config.epsilon)
  elif name == "momentum":
    cls, options = sgd, dict(momentum=train_config.momentum)
  elif name == "sgd":
    cls, options = sgd, {}
  elif name == "adam":
    cls, options = keras.optimizers.Adam, {}
  elif name == "adamw":
    cls, options = AdamW, dict(weight_decay=train_config.weight_decay,
                               epsilon=ADAMW_EPSILON)
  else:
    raise OptimizerError(f"Unknown optimizer {name!r}; valid: "
                         f"{', '.join(OPTIMIZERS)}.")
  if layer_decay != 1.0:
    if model is None:
      raise ValueError("build_optimizer: train.layer_decay needs the model.")
    cls = LAYER_RATE_CLASSES[cls]
    options["layer_rates"] = layer_rates(model, layer_decay)
  optimizer = cls(learning_rate, **options)
  if keras.mixed_precision.global_policy().name == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def coupled_weight_decay(train_config):
  """The coupled L2 factor train steps add to the loss (`weight_decay_loss`):
  `train.weight_decay`, or 0 under adamw, whose decay is decoupled."""
  if train_config.optimizer == "adamw":
    return 0.0
  return train_config.weight_decay


def is_decayed(variable):
  """Whether weight decay applies: kernels of conv, depthwise and dense
  layers, not BN gamma/beta, not biases."""
  return variable.path.split("/")[-1].endswith(KERNEL_SUFFIXES)


def decay_variables(model):
  """Kernels of conv, depthwise and dense layers (not BN, not biases)."""
  return [v for v in model.trainable_weights if is_decayed(v)]


def weight_decay_loss(variables, weight_decay):
  """wd * sum(w^2) / 2 (tf.nn.l2_loss), float32."""
  if not weight_decay or not variables:
    return tf.constant(0.0)
  return weight_decay * tf.add_n(
      [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])


@keras.saving.register_keras_serializable(package="effnetv2_tf")
class AdamW(keras.optimizers.AdamW):
  """keras.optimizers.AdamW decaying the kernels only (`is_decayed`)."""

  def build(self, var_list):
    self.exclude_from_weight_decay(
        var_list=[v for v in var_list if not is_decayed(v)])
    super().build(var_list)


def _layer_name(path):
  return path.split("/")[0]


def _block_key(name):
  """(stage, letters) of a block's layer in network order (a..z, aa, ..),
  or None for a layer outside the blocks."""
  match = BLOCK_NAME.match(name)
  if not match:
    return None
  return int(match[1]), len(match[2]), match[2]


def layer_rates(model, layer_decay):
  """{layer name: learning-rate factor} of timm's layer decay.

  Layer ids: the stem (stem_conv, stem_bn) 0, the N blocks 1..N in network
  order (block1a, block1b, .., block2a, ..; model.py's names), the head
  (top_conv, top_bn, predictions) N + 1; layer i's factor is
  layer_decay ** (N + 1 - i), so the head trains at the full rate. Keyed
  by layer name (the first part of a variable path) and counted over all
  of the model's weights, so factors do not depend on which are trainable
  and survive a checkpoint restore. Raises LayerDecayError (one line) for a
  trainable variable of any other layer.
  """
  names = {_layer_name(v.path) for v in model.weights}
  blocks = sorted({_block_key(n) for n in names} - {None})
  ids = {key: i + 1 for i, key in enumerate(blocks)}
  head = len(blocks) + 1
  rates = {}
  for name in names:
    if name.startswith(STEM_PREFIX):
      layer = 0
    elif _block_key(name):
      layer = ids[_block_key(name)]
    elif name.startswith(HEAD_PREFIXES):
      layer = head
    else:
      continue
    rates[name] = float(layer_decay ** (head - layer))
  for variable in model.trainable_weights:
    _check_placed(rates, variable)
  return rates


def _check_placed(rates, variable):
  if _layer_name(variable.path) not in rates:
    raise LayerDecayError(
        f"train.layer_decay: variable {variable.path!r} is in no layer of "
        f"the stem ({STEM_PREFIX}*), a block (block<stage><letter>_*) or "
        f"the head ({'*, '.join(HEAD_PREFIXES)}); rename the layer or set "
        "train.layer_decay=1.")


class LayerRates:
  """Per-variable learning rates for a Keras optimizer (mixed in first).

  `layer_rates` ({layer name: factor}, `layer_rates()`) scales the learning
  rate each variable's update gets: `update_step(gradient, variable,
  learning_rate)` (which Keras 3 calls once per variable, under
  tf.distribute once per replica's copy) passes learning_rate * factor to
  the optimizer's own update, Keras' or the fused kernels' of
  `fused_optim.py` alike. Scaling the gradient instead would do nothing
  under RMSProp or Adam. AdamW's decoupled decay also runs here, per
  variable at its scaled rate (w -= lr * factor * wd * w, before the Adam
  update as Keras' and PyTorch's AdamW order it), as timm's param groups
  scale weight decay with their learning rate. Slot variables are the
  base optimizer's, so checkpoints are interchangeable with it.
  """

  def __init__(self, *args, layer_rates, **kwargs):
    super().__init__(*args, **kwargs)
    self.layer_rates = dict(layer_rates)

  def build(self, var_list):
    for variable in var_list:
      _check_placed(self.layer_rates, variable)
    super().build(var_list)
    # By the index `_get_variable_index` gives (the position in var_list).
    self._rate_factors = tuple(
        self.layer_rates[_layer_name(v.path)] for v in var_list)

  def _apply_weight_decay(self, variables):
    """Decoupled decay runs per variable in `update_step`."""

  def update_step(self, gradient, variable, learning_rate):
    rate = learning_rate * self._rate_factors[
        self._get_variable_index(variable)]
    if self.weight_decay is not None and self._use_weight_decay(variable):
      decay = tf.cast(self.weight_decay * rate, variable.dtype)
      self.assign_sub(variable, variable * decay)
    return super().update_step(gradient, variable, rate)

  def get_config(self):
    return dict(super().get_config(), layer_rates=dict(self.layer_rates))


def _layer_rate_class(base):
  cls = type(f"LayerRates{base.__name__}", (LayerRates, base),
             {"__doc__": f"{base.__name__} with per-layer learning rates "
                         "(`LayerRates`)."})
  return keras.saving.register_keras_serializable(package="effnetv2_tf")(cls)


# {optimizer class: its LayerRates subclass}, every one `build_optimizer`
# makes (registered here so that each deserializes in a fresh process).
LAYER_RATE_CLASSES = {
    base: _layer_rate_class(base) for base in (
        keras.optimizers.RMSprop, fused_optim.FusedRMSprop,
        keras.optimizers.SGD, fused_optim.FusedSGD, keras.optimizers.Adam,
        AdamW)}
