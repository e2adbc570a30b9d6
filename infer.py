"""Top-5 classes of images from an exported SavedModel or a checkpoint.

  python infer.py --saved_model=runs/digits/export --image=photo.jpg
  python infer.py --saved_model=runs/digits/export --image=photos/ \
      --image=other.png   # a directory: every image in it
  python infer.py --checkpoint=runs/digits --image=photo.jpg   # run dir
  python infer.py --checkpoint=efficientnetv2-b0.weights.h5 \
      --model=efficientnetv2-b0 --image=photo.jpg --labels=labels.txt
  python infer.py --model=efficientnetv2-s --weights=imagenet --image=photo.jpg

Class names come from `--labels` (labels.txt: one class per line, label
order, optionally `name<TAB>readable name`), else from the labels.txt that
export wrote beside the SavedModel or training wrote in the run directory;
without any, class ids are printed. The image file's bytes go to the
SavedModel's `serving_bytes` signature (or, for a checkpoint, the same
function in process): decoded as the run's preprocessing row says, then
the eval crop, resize and scaling of `main.py --mode=eval`. Checkpoints use
their EMA weights and the run's eval preprocessing, exactly as the exported
SavedModel would.
Published weights (`--weights=TAG`, downloaded once) use the preprocessing
and eval size of the recipe they were trained with, and the ImageNet class
names that ship with the package (21k weights: class indices).

`--image` (repeatable) takes local or gs:// files, and directories: every
image in one (`sources.IMAGE_EXTENSIONS`, any case; not hidden files, not
subdirectories), sorted. An http(s) URL, or a directory without images, is
refused in one line before the model loads. The model loads once; an
image that cannot be classified (missing, not decodable, a directory) is
reported on stderr in one line and skipped, and the rest are classified.
Exit status: 0 when every image was classified, 1 when any failed (with
several images, a last line says how many) or on an error in the flags.
"""

from effnetv2_tf import startup

# Run as a program, start up before the imports below load TensorFlow
# (see startup); imported as a module, this changes nothing.
if __name__ == "__main__":
  startup.start()

# pylint: disable=g-import-not-at-top,wrong-import-position
import os
import sys

from absl import app
from absl import flags

from effnetv2_tf import errors
from effnetv2_tf import export
from effnetv2_tf import quiet_start
import tensorflow as tf
from effnetv2_tf.data import preprocessing
from effnetv2_tf.data import sources
from effnetv2_tf.data import tfrecord_format
from effnetv2_tf.models import pretrained
from effnetv2_tf.models import registry
from effnetv2_tf.models.model import create_model
from effnetv2_tf.runs import checkpoints
from effnetv2_tf.runs import run_dir

flags.DEFINE_string("saved_model", None, "An exported SavedModel directory.")
flags.DEFINE_string("checkpoint", None,
                    "A run directory or checkpoint prefix of main.py / "
                    "main_tf2.py, or a .weights.h5/.h5 file (with --model).")
flags.DEFINE_string("weights", None,
                    "Published weights of --model: "
                    f"{', '.join(pretrained.TAGS)} (or MODEL:TAG).")
flags.DEFINE_string("model", None, "Model name for --weights or a .h5 "
                    "weights file; for a run checkpoint it must match the "
                    "run's model.")
flags.DEFINE_integer("num_classes", 1000, "Class count of a .h5 file.")
flags.DEFINE_multi_string("image", None, "Image file(s) to classify (local "
                          "or gs://), or directories of them.")
flags.DEFINE_string("labels", None, "labels.txt with the class names.")
flags.DEFINE_integer("top_k", 5, "How many classes to print.")
flags.mark_flags_as_required(["image"])
FLAGS = flags.FLAGS
# URL schemes that tf.io.gfile cannot read (gs:// it can).
URL_SCHEMES = ("http://", "https://")


class InferError(errors.UserError, ValueError):
  """Bad input to infer.py; the message says what and where."""


def model_spec(name):
  """The registry entry of --model, or InferError listing the names."""
  try:
    return registry.get_model_spec(name)
  except ValueError as err:
    raise InferError(f"--model: {err}") from None


def image_paths(values):
  """The image files that the --image `values` name, in order: a file as
  given, a directory's images (`sources.IMAGE_EXTENSIONS`, any case; not
  hidden names, not its subdirectories' contents) sorted, after a line
  saying how many. InferError for a URL or a directory without images."""
  paths = []
  for value in values:
    if value.lower().startswith(URL_SCHEMES):
      raise InferError(f"--image {value}: infer.py reads local files (or "
                       f"gs://); download it first (e.g. curl -O {value}).")
    if not _isdir(value):
      paths.append(value)  # a file, or a missing one: classify says which
      continue
    found = _directory_images(value)
    if not found:
      raise InferError(
          f"--image {value} holds no images ({sources.IMAGE_PATTERNS}).")
    print(f"--image {value}: {len(found)} image"
          f"{'' if len(found) == 1 else 's'}", flush=True)
    paths += found
  return paths


def _isdir(path):
  try:
    return tf.io.gfile.isdir(path)
  except tf.errors.OpError:  # a scheme without a file system: not a dir
    return False


def _directory_images(path):
  try:
    names = tf.io.gfile.listdir(path)
  except tf.errors.OpError as err:
    raise InferError(f"--image {path} cannot be listed "
                     f"({_reason(err)}).") from None
  names = sorted(n.rstrip("/") for n in names)  # gs:// folders end in /
  return [os.path.join(path, n) for n in names
          if n.lower().endswith(sources.IMAGE_EXTENSIONS)
          and not n.startswith(".")]


def _reason(err):
  """The first line of a TensorFlow error's message."""
  return err.message.strip().splitlines()[0] if err.message else type(
      err).__name__


def classify(predict, path):
  """`predict`'s outputs for the image file `path` (its encoded bytes, a
  batch of one), or InferError naming the file and why not."""
  try:
    if not tf.io.gfile.exists(path):
      raise InferError(f"{path} does not exist.")
    if tf.io.gfile.isdir(path):
      raise InferError(f"{path} is a directory, not an image.")
    encoded = tf.io.read_file(path)
  except tf.errors.OpError as err:  # unreadable, an unknown scheme
    raise InferError(f"{path} cannot be read ({_reason(err)}).") from None
  try:
    return predict(encoded[tf.newaxis])
  except tf.errors.InvalidArgumentError:
    raise InferError(f"{path} is not a readable {sources.IMAGE_FORMATS} "
                     "image.") from None


def classify_all(predict, paths, class_names, k):
  """Prints the top `k` classes of each image; one line on stderr for each
  that fails, and the rest go on. Returns how many failed."""
  failed = 0
  for path in paths:
    try:
      outputs = classify(predict, path)
    except InferError as err:
      failed += 1
      errors.report("infer.py", err)
      continue
    lines = [f"{path}:"] + [
        f"  {rank}. {name} (class {class_id}): {p:.4f}"
        for rank, (class_id, name, p) in enumerate(
            top_classes(outputs, class_names, k), 1)]
    print("\n".join(lines), flush=True)
  return failed


def read_class_names(path):
  if not tf.io.gfile.exists(path):
    raise InferError(f"--labels {path} does not exist.")
  return [readable for _, readable in tfrecord_format.read_labels_file(path)]


def load_predictor(saved_model=None, checkpoint=None, model_name=None,
                   num_classes=1000, weights=None):
  """(fn: encoded images tf.string [B] -> outputs dict, the class names
  that come with them: labels.txt beside them or the published weights'
  names, or [])."""
  if weights:
    return load_published(model_name, weights)
  predict, label_dir = _load_own(saved_model, checkpoint, model_name,
                                 num_classes)
  labels_path = os.path.join(label_dir, tfrecord_format.LABELS_FILENAME)
  return predict, (read_class_names(labels_path)
                   if tf.io.gfile.exists(labels_path) else [])


def _load_own(saved_model, checkpoint, model_name, num_classes):
  """(serving fn, directory that may hold labels.txt)."""
  if saved_model:
    if not tf.io.gfile.exists(os.path.join(saved_model, "saved_model.pb")):
      raise InferError(f"--saved_model {saved_model} holds no saved_model.pb.")
    signatures = tf.saved_model.load(saved_model).signatures
    if export.BYTES_SIGNATURE not in signatures:
      raise InferError(f"--saved_model {saved_model} has no "
                       f"{export.BYTES_SIGNATURE} signature (exported before "
                       "it existed); export it again.")
    return signatures[export.BYTES_SIGNATURE], saved_model
  if checkpoint.endswith(".h5"):
    if not model_name:
      raise InferError("--checkpoint of a .h5 file needs --model.")
    spec = model_spec(model_name)
    model = create_model(model_name, num_classes=num_classes,
                         weights=checkpoint)
    # A weights file has no run config: the model's own preprocessing row.
    module = export.ServingModule(model, spec.eval_size,
                                  preprocessing.get_row(spec.preprocessing))
    return module.serve_bytes, os.path.dirname(checkpoint)
  model, run_config, prefix = checkpoints.load_run_model(
      checkpoint, what="--checkpoint")
  run_dir.check_model_flag(model_name, run_config, "the checkpoint")
  module = export.ServingModule(model, **export.serving_options(run_config))
  return module.serve_bytes, os.path.dirname(prefix)


def load_published(model_name, weights):
  """(serving fn, class names or []) of published weights."""
  if not model_name and ":" not in weights:
    raise InferError("--weights needs --model (or --weights=MODEL:TAG).")
  try:
    model, options, names = export.load_published(model_name, weights)
  except pretrained.PretrainedError as err:
    raise InferError(f"--weights: {err}") from None
  if names is None:
    print(f"{weights}: {pretrained.NO_21K_NAMES}.", flush=True)
  return export.ServingModule(model, **options).serve_bytes, names or []


def top_classes(outputs, class_names, k):
  """[(class id, name, probability)] of the first image, best first."""
  probabilities = outputs["probabilities"][0].numpy()
  top = probabilities.argsort()[::-1][:k]
  return [(int(i), class_names[i] if i < len(class_names) else str(i),
           float(probabilities[i])) for i in top]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  quiet_start.quiet_info_logs(FLAGS)
  if sum(map(bool, (FLAGS.saved_model, FLAGS.checkpoint,
                     FLAGS.weights))) != 1:
    raise app.UsageError(
        "Give one of --saved_model, --checkpoint and --weights.")
  with errors.reported("infer.py"):
    paths = image_paths(FLAGS.image)
    labels = read_class_names(FLAGS.labels) if FLAGS.labels else None
    predict, class_names = load_predictor(
        FLAGS.saved_model, FLAGS.checkpoint, FLAGS.model, FLAGS.num_classes,
        FLAGS.weights)
  failed = classify_all(predict, paths,
                        class_names if labels is None else labels,
                        FLAGS.top_k)
  if failed:
    if len(paths) > 1:
      print(f"infer.py: {failed} of {len(paths)} images failed.",
            file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
