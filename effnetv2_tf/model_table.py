"""Parameters and FLOPs of every registered model, next to published values.

Usage:
  python -m effnetv2_tf.model_table
  python -m effnetv2_tf.model_table --models=efficientnetv2-s,efficientnet-b0 \
      --json_out=/tmp/model_table.json
  python -m effnetv2_tf.model_table --pretrained   # the published weights

Each model is built with 1000 classes at its registry eval size; FLOPs are
multiply-adds counted by `effnetv2_tf.models.flops.count_flops`. The table
goes to stdout, per-model progress to stderr.
"""

from effnetv2_tf import startup

# Run as a program, start up before the imports below load TensorFlow
# (see startup); imported as a module, this changes nothing.
if __name__ == "__main__":
  startup.start()

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import sys
import time

from absl import app
from absl import flags
import keras

from effnetv2_tf.models import pretrained
from effnetv2_tf.models import registry
from effnetv2_tf.models.flops import count_flops
from effnetv2_tf.models.model import create_model

# Published FLOPs (billions of multiply-adds) and the image size they are
# given at. EfficientNetV2: paper Table 7 (Tan and Le, 2021) and the
# reference code (google/automl efficientnetv2). EfficientNet: V1 paper
# Table 2 (Tan and Le, 2019), reported with 2 significant digits, so a
# difference of a few percent there is rounding.
PAPER_FLOPS = {
    "efficientnetv2-s": (8.4, 384),
    "efficientnetv2-m": (24.7, 480),
    "efficientnetv2-l": (56.3, 480),
    "efficientnetv2-b0": (0.72, 224),
    "efficientnetv2-b1": (1.2, 240),
    "efficientnetv2-b2": (1.7, 260),
    "efficientnetv2-b3": (3.0, 300),
    "efficientnet-b0": (0.39, 224),
    "efficientnet-b1": (0.70, 240),
    "efficientnet-b2": (1.0, 260),
    "efficientnet-b3": (1.8, 300),
    "efficientnet-b4": (4.2, 380),
    "efficientnet-b5": (9.9, 456),
    "efficientnet-b6": (19.0, 528),
    "efficientnet-b7": (37.0, 600),
}

FLAGS = flags.FLAGS
flags.DEFINE_list("models", None,
                  "Comma-separated model names; default: all registered.")
flags.DEFINE_bool("pretrained", False,
                  "List the published weights (model:tag, classes, recipe, "
                  "eval size, input scaling, source, URL) of --models "
                  "instead; builds nothing.")
flags.DEFINE_string("json_out", None,
                    "Optional path to write the rows as a JSON list.")


def summarize(name):
  """Builds one model at its eval size and returns its table row.

  Args:
    name: a registered model name.

  Returns:
    A dict with name, params, flops (multiply-adds), eval_size, and
    paper_gflops / rel_diff (None where no value is published).
  """
  spec = registry.get_model_spec(name)
  size = spec.eval_size
  model = create_model(spec.name, num_classes=1000,
                       input_shape=(size, size, 3))
  row = {"name": spec.name, "params": int(model.count_params()),
         "flops": count_flops(model), "eval_size": size,
         "paper_gflops": None, "rel_diff": None}
  keras.backend.clear_session()  # big models otherwise pile up in memory
  paper = PAPER_FLOPS.get(spec.name)
  if paper is not None:
    row["paper_gflops"] = paper[0]
    row["rel_diff"] = row["flops"] / 1e9 / paper[0] - 1.0
  return row


def format_table(rows):
  """Renders table rows as a fixed-width text table."""
  header = (f"{'model':<20} {'params':>13} {'GFLOPs':>8} {'size':>5} "
            f"{'paper':>7} {'diff':>7}")
  lines = [header, "-" * len(header)]
  for row in rows:
    paper, diff = "-", "-"
    if row["paper_gflops"] is not None:
      paper = f"{row['paper_gflops']:.2f}"
      diff = f"{100 * row['rel_diff']:+.1f}%"
    lines.append(
        f"{row['name']:<20} {row['params']:>13,} {row['flops'] / 1e9:>8.3f} "
        f"{row['eval_size']:>5} {paper:>7} {diff:>7}")
  return "\n".join(lines)


def format_pretrained(names):
  """The published weights of `names`, one line each, and where the
  alternative publisher's file is."""
  entries = [e for e in pretrained.TABLE if e.model in names]
  lines = [pretrained.describe(e) for e in entries]
  lines += [f"  {e.name}: {e.why}; not taken: {e.alternative}"
            for e in entries if e.alternative]
  lines.append(f"Cache: {pretrained.cache_dirs()[0]}; mirror: set "
               f"{pretrained.MIRROR_ENV}.")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  names = FLAGS.models or registry.list_models()
  try:  # fail on a typo before spending time on the others
    names = [registry.get_model_spec(n).name for n in names]
  except ValueError as err:
    raise app.UsageError(str(err)) from err
  if FLAGS.pretrained:
    print(format_pretrained(names), flush=True)
    return
  rows = []
  for i, name in enumerate(names, 1):
    start = time.time()
    print(f"[{i}/{len(names)}] {name} ...", end=" ", file=sys.stderr,
          flush=True)
    rows.append(summarize(name))
    print(f"{time.time() - start:.1f}s", file=sys.stderr, flush=True)
  print(format_table(rows), flush=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  app.run(main)
