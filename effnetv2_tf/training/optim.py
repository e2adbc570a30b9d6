"""Learning-rate schedule, optimizer and weight decay (paper section 5.1).

Both drivers use these definitions:
- the learning-rate schedule (`schedule.py`) built from the config;
- RMSProp (rho 0.9, momentum 0.9, epsilon 1e-3). Keras' RMSprop adds
  epsilon inside the square root like TF1's; it starts the mean square at 0
  where TF1 started it at 1 (irrelevant after warmup from lr 0); by default
  it updates through TF1's fused ApplyRMSProp kernel (`fused_optim.py`).
  The reference's other optimizers by its names: `build_optimizer`;
- weight decay as a coupled L2 term wd * sum(w^2) / 2 over kernels only.
The weights' moving average is `ema.py`.
"""

import keras
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf import settings
from effnetv2_tf.settings import Setting
from effnetv2_tf.training import fused_optim
from effnetv2_tf.training import schedule as schedule_lib

KERNEL_SUFFIXES = ("kernel",)  # conv, depthwise, dense; not gamma/beta/bias
OPTIMIZERS = ("rmsprop", "momentum", "sgd", "adam")  # build_optimizer

# The config's optimizer and schedule keys (`train` section).
SETTINGS = (
    Setting("optimizer", "rmsprop", str, "the optimizer, by the reference's "
            "names", choices=OPTIMIZERS),
    Setting("rmsprop_rho", 0.9, float, "RMSProp's mean-square decay"),
    Setting("momentum", 0.9, float, "momentum of rmsprop and momentum"),
    Setting("epsilon", 1e-3, float, "RMSProp's and Adam's epsilon"),
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
            "sum(w^2) / 2", **settings.at_least(0)),
)


class OptimizerError(errors.UserError, ValueError):
  """An unknown `train.optimizer`; the message lists the valid ones."""


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


def build_optimizer(train_config, learning_rate):
  """`train.optimizer` by the reference's names (utils.py build_optimizer
  L146-170, main_tf2.py build_tf2_optimizer L36-59):

  - rmsprop: RMSProp (rho, momentum, epsilon from `train`), the paper's;
  - momentum: SGD with `train.momentum`, not Nesterov;
  - sgd: plain gradient descent (no momentum);
  - adam: Adam with Keras' default epsilon 1e-7 (main_tf2.py's Keras Adam;
    main.py's TF1 AdamOptimizer has 1e-8, docs/recipes.md D19).

  With `train_config.fused_optimizer` (default) RMSProp and SGD update
  through TensorFlow's fused kernels (`fused_optim.py`, same math).
  Under a `mixed_float16` global policy the optimizer is wrapped in Keras'
  dynamic LossScaleOptimizer; train steps compute gradients of
  `optimizer.scale_loss(loss)` (the identity for the others).
  """
  name = train_config.optimizer
  fused = train_config.get("fused_optimizer", True)
  sgd = fused_optim.FusedSGD if fused else keras.optimizers.SGD
  if name == "rmsprop":
    cls = fused_optim.FusedRMSprop if fused else keras.optimizers.RMSprop
    optimizer = cls(
        learning_rate, rho=train_config.rmsprop_rho,
        momentum=train_config.momentum, epsilon=train_config.epsilon)
  elif name == "momentum":
    optimizer = sgd(learning_rate, momentum=train_config.momentum)
  elif name == "sgd":
    optimizer = sgd(learning_rate)
  elif name == "adam":
    optimizer = keras.optimizers.Adam(learning_rate)
  else:
    raise OptimizerError(f"Unknown optimizer {name!r}; valid: "
                         f"{', '.join(OPTIMIZERS)}.")
  if keras.mixed_precision.global_policy().name == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def decay_variables(model):
  """Kernels of conv, depthwise and dense layers (not BN, not biases)."""
  return [v for v in model.trainable_weights
          if v.path.split("/")[-1].endswith(KERNEL_SUFFIXES)]


def weight_decay_loss(variables, weight_decay):
  """wd * sum(w^2) / 2 (tf.nn.l2_loss), float32."""
  if not weight_decay or not variables:
    return tf.constant(0.0)
  return weight_decay * tf.add_n(
      [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
