"""EfficientNetV2 driver (custom tf.distribute loop).

Training with progressive learning lands with the training issue; until then
this driver builds a registered model, runs one forward pass at its eval size
and prints its architecture table:

  python main.py --model=efficientnetv2-s
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

import effnetv2_tf
from effnetv2_tf import block_strings
from effnetv2_tf import model as model_lib

flags.DEFINE_string("model", "efficientnetv2-b0",
                    "Model name, one of effnetv2_tf.list_models().")
flags.DEFINE_integer("num_classes", 1000, "Classes of the head.")
flags.register_validator(
    "model", lambda name: name.lower().replace("_", "-") in
    effnetv2_tf.list_models(),
    message="unknown model; valid models: " + ", ".join(
        effnetv2_tf.list_models()))
FLAGS = flags.FLAGS


def describe(name, num_classes):
  """Prints the scaled stage table, parameters and one forward pass."""
  spec = effnetv2_tf.get_model_spec(name)
  model = effnetv2_tf.create_model(name, num_classes=num_classes)
  options = model_lib.ModelOptions(dropout_rate=spec.dropout_rate)
  print(f"{spec.name}: width {spec.width_coefficient}, depth "
        f"{spec.depth_coefficient}, train {spec.train_size} px, eval "
        f"{spec.eval_size} px, dropout {spec.dropout_rate}")
  print(f"{'stage':>5} {'block':<13} {'repeats':>7} {'kernel':>6} "
        f"{'stride':>6} {'expand':>6} {'in':>5} {'out':>5} {'se':>5}")
  stages = {}
  for stage, _, args in model_lib.scaled_block_args(spec, options):
    stages.setdefault(stage, args)
  for stage, args in stages.items():
    kind = ("Fused-MBConv" if args.conv_type == block_strings.FUSED_MBCONV
            else "MBConv")
    print(f"{stage + 1:>5} {kind:<13} {args.num_repeat:>7} "
          f"{args.kernel_size:>6} {args.strides:>6} {args.expand_ratio:>6} "
          f"{args.input_filters:>5} {args.output_filters:>5} "
          f"{args.se_ratio or '-':>5}")
  print(f"parameters: {model.count_params():,}")
  size = spec.eval_size
  x = np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3))
  logits = model(x.astype("float32"), training=False)
  print(f"forward pass at {size}x{size}: logits {tuple(logits.shape)}, "
        f"finite: {bool(np.all(np.isfinite(logits)))}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  describe(FLAGS.model, FLAGS.num_classes)


if __name__ == "__main__":
  app.run(main)
