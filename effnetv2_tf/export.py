"""SavedModel, TFLite and feature-vector export, from a model or a checkpoint.

  python -m effnetv2_tf.export --model_dir=runs/digits \
      --export_dir=runs/digits/export [--tflite] [--tflite_quantize] \
      [--feature_vector_dir=runs/digits/features]
  python -m effnetv2_tf.export --model=efficientnetv2-s --weights=imagenet \
      --export_dir=exports/efficientnetv2-s-imagenet

Classifier SavedModel signatures:
  serving_bytes:   encoded images (JPEG, PNG, GIF, BMP, WebP; tf.string [B], each
                   of any size), decoded as the run's preprocessing row
                   says (`decode`);
  serving_default: float32 images 0..255 [B, H, W, 3] of any size;
  serving_uint8:   the same for uint8 images;
  preprocessed:    already scaled [B, S, S, 3] images at the eval size.
Each returns `probabilities`, `top5_classes` and `top5_probabilities`.
Preprocessing is the run's evaluation one, read from its config.json
(`preprocessing.Preprocessing`: the decode, eval crop, resize method and input
scaling), so `serving_bytes` serves the pixels of `main.py --mode=eval`.
The image signatures take pixels decoded whole: for a row that decodes a
JPEG's crop window alone ('fused', the legacy row) they differ from it
along the crop's edges (README, Export and inference). Published weights
(`--weights=TAG`) serve the preprocessing, eval size and class names of
the recipe they were trained with (`pretrained.preprocessing_of`). Export the
EMA weights
(`Trainer.ema.swapped()`; from a checkpoint they are loaded by
`checkpoints.load_run_model`).

A non-empty `--export_dir` (or `--feature_vector_dir`) is refused unless
`--overwrite`, whoever's export it holds. Each directory is written to a
hidden sibling (`.<name>.tmp-<pid>`) and renamed into place when complete
(`staged_dir`), so an interrupted export leaves the old one as it was.

`--tflite` converts the `preprocessed` signature of the written SavedModel
(converting concrete functions of a Keras 3 model drops its weights) to
`model.tflite` in the export directory; `--tflite_quantize` adds a
dynamic-range quantised `model_quant.tflite`. Their input and output
tensors carry the signature's names (`images`; `probabilities`,
`top5_classes`, `top5_probabilities`), as `get_input_details()` and
`get_output_details()` list them, not the converter's
`StatefulPartitionedCall:N`.

The feature-vector SavedModel follows TF-Hub's image feature-vector
convention: `module(images)` (or the `serve` endpoint, e.g.
`keras.layers.TFSMLayer(path, call_endpoint="serve")`) takes float32
images in [0, 1] of any size, resizes them to the model's size and returns
the pooled features [B, C] before the classifier.

`export_features` writes the multi-scale feature maps of a
`create_model(features_only=True)` model: `serving_default` takes the
classifier's 0..255 images (the same `preprocess_images`) and returns
{'P1': stride-2 map, ..., 'P5': stride-32 map}.
"""

from effnetv2_tf import startup

# Run as a program, start up before the imports below load TensorFlow
# (see startup); imported as a module, this changes nothing.
if __name__ == "__main__":
  startup.start()

# pylint: disable=g-import-not-at-top,wrong-import-position
import contextlib
import os
import tempfile

from absl import app
from absl import flags
import keras
import tensorflow as tf
from tensorflow.lite.tools import flatbuffer_utils

from effnetv2_tf import errors
from effnetv2_tf import fileio
from effnetv2_tf import quiet_start
from effnetv2_tf.data import preprocess
from effnetv2_tf.data import tfrecord_format
from effnetv2_tf.models import fold_bn
from effnetv2_tf.models import model as model_lib
from effnetv2_tf.models import pretrained
from effnetv2_tf.runs import checkpoints
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import xla

TFLITE_FILENAME = "model.tflite"
TFLITE_QUANT_FILENAME = "model_quant.tflite"
BYTES_SIGNATURE = "serving_bytes"


class ExportDirError(errors.UserError, FileExistsError):
  """An export directory that holds files, without --overwrite."""


def check_export_dir(path, overwrite, flag, overwrite_flag="--overwrite"):
  """Refuses an export directory up front, before any work.

  A missing or empty directory is fine; one that holds anything needs
  `overwrite`, even an export of the same model: nothing in it says whose
  it is, and an export replaces all of it. A file in its place, or a
  parent in which the export cannot be staged, is refused too. `flag` and
  `overwrite_flag` name the inputs in the one-line ExportDirError.
  """
  parent = _split(path, flag)[0]  # not a bucket or filesystem root
  if not tf.io.gfile.exists(path):
    return
  if not tf.io.gfile.isdir(path):
    raise ExportDirError(f"{flag} {path} is a file, not a directory.")
  entries = sorted(tf.io.gfile.listdir(path))
  if entries and not overwrite:
    what = ("a SavedModel" if "saved_model.pb" in entries else
            errors.first_few(entries))
    raise ExportDirError(
        f"{flag} {path} already holds {what}; pass {overwrite_flag} to "
        "replace the directory (any non-empty one needs it), or give a new "
        "or empty one.")
  if "://" not in path:  # a bucket's folders are names: nothing to probe
    try:
      os.rmdir(tempfile.mkdtemp(prefix=".write_probe_", dir=parent))
    except OSError as err:
      raise ExportDirError(
          f"{flag} {path}: its parent {parent} is not writable "
          f"({err.strerror}), and the export is written there first, then "
          "renamed into place.") from None


def _split(path, flag="export_dir"):
  """(parent, name) of an export directory; its staging goes in parent."""
  full = path if "://" in path else os.path.abspath(path)
  parent, name = os.path.split(full.rstrip("/"))
  if not name or not parent or parent.endswith(":"):  # "/", "gs://bucket"
    raise ExportDirError(f"{flag} {path} is the root of a filesystem or "
                         "bucket: give a folder in it.")
  return parent, name


def _sibling(path, tag):
  """`parent/.<name>.<tag>-<pid>`: hidden, beside `path`, this process's."""
  parent, name = _split(path)
  return os.path.join(parent, f".{name}.{tag}-{os.getpid()}")


def _remove(path):
  if tf.io.gfile.exists(path):
    tf.io.gfile.rmtree(path)


@contextlib.contextmanager
def staged_dir(path, overwrite=False):
  """Yields a temporary sibling of `path` to write an export into; when the
  block completes, it is renamed to `path`, else removed.

  A `path` that holds files is an ExportDirError unless `overwrite`; then
  it is renamed aside, the new one renamed in and the old one deleted, so
  an interruption at any point leaves a whole export at `path` or beside
  it. Locally each rename is atomic. On gs:// a rename copies each object
  and deletes it (GCS has no directory rename): an interruption during
  the renames can leave part of an export at `path`, and the rest in the
  hidden siblings (`.<name>.tmp-<pid>`, `.<name>.old-<pid>`).
  """
  check_export_dir(path, overwrite, "export_dir", "overwrite=True")
  if "://" not in path:
    path = os.path.realpath(path)  # a link keeps pointing at the export
  tmp = _sibling(path, "tmp")
  _remove(tmp)  # left by a killed process of the same id
  tf.io.gfile.makedirs(tmp)
  try:
    yield tmp
    if not tf.io.gfile.exists(path):
      tf.io.gfile.rename(tmp, path)
    else:
      old = _sibling(path, "old")
      _remove(old)
      tf.io.gfile.rename(path, old)
      try:
        tf.io.gfile.rename(tmp, path)
      except BaseException:
        tf.io.gfile.rename(old, path)
        raise
      tf.io.gfile.rmtree(old)
  finally:
    _remove(tmp)


def serving_options(run_config):
  """ServingModule/export_saved_model keyword arguments of a run's config.

  `run_config`: the ConfigDict of a run or its config.json dict.
  """
  return dict(image_size=run_config["model"]["eval_size"],
              preprocessing=run_dir.preprocessing_of(run_config))


_BYTES_SPEC = tf.TensorSpec([None], tf.string, name="image_bytes")


def preprocess_images(images, image_size, preprocessing):
  """The eval preprocessing of a batch of equally sized 0..255 images (the
  eval crop, resize and input scaling of a `preprocessing.Preprocessing`):
  what `serving_default` of the classifier and of the features serves."""
  offset, size = preprocess.eval_crop_window(
      tf.shape(images)[1:3], image_size, preprocessing)
  images = images[:, offset[0]:offset[0] + size[0],
                  offset[1]:offset[1] + size[1]]
  return preprocess.resize_and_scale(images, image_size, preprocessing)


class ServingModule:
  """A Keras model plus its eval preprocessing: the serving functions.

  `endpoints` lists them with their input signatures; `serve` and
  `serve_bytes` are the float and the encoded-bytes ones as tf.functions for
  in-process use (infer.py on a checkpoint).
  """

  def __init__(self, model, image_size, preprocessing, jit_compile=False):
    # Batch norms folded into their convolutions: the same logits (within
    # float32 rounding), 1.12-1.18x the images/s of B0 and S on the CPU
    # (benchmarks/README.md, "Batch norm folded at export" and peers.py).
    self.model = model if model is None else fold_bn.fold_batch_norms(model)
    self.image_size = int(image_size)
    self._prep = preprocessing
    # With jit_compile the model part is one XLA program; the raw-image
    # crop and resize stay outside (any image size; a bicubic resize has no
    # XLA kernel, tensorflow/tensorflow#108660).
    self.predict = xla.compiled(self._predict, jit_compile)
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    self.serve_bytes = tf.function(self._serve_bytes,
                                   input_signature=[_BYTES_SPEC])

  def endpoints(self):
    """[(name, function, input spec)]: the SavedModel's signatures."""
    size = self.image_size
    return [
        ("serving_default", self._serve,
         tf.TensorSpec([None, None, None, 3], tf.float32, name="images")),
        ("serving_uint8", lambda images: self._serve(
            tf.cast(images, tf.float32)),
         tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")),
        (BYTES_SIGNATURE, self._serve_bytes, _BYTES_SPEC),
        ("preprocessed", self.predict,
         tf.TensorSpec([None, size, size, 3], tf.float32, name="images")),
    ]

  def preprocess(self, images):
    """The eval preprocessing of a batch of equally sized images."""
    return preprocess_images(images, self.image_size, self._prep)

  def preprocess_bytes(self, encoded):
    """The eval preprocessing of a batch of encoded images, one by one
    (their sizes differ): the eval pipeline's own function."""
    size = self.image_size
    return tf.map_fn(
        lambda e: preprocess.eval_preprocess({"encoded": e}, size, self._prep),
        encoded, fn_output_signature=tf.TensorSpec([size, size, 3],
                                                   tf.float32))

  def _predict(self, images):
    logits = tf.cast(self.model(images, training=False), tf.float32)
    probabilities = tf.nn.softmax(logits)
    top = tf.math.top_k(probabilities, min(5, probabilities.shape[-1]))
    return {"probabilities": probabilities, "top5_classes": top.indices,
            "top5_probabilities": top.values}

  def _serve(self, images):
    return self.predict(self.preprocess(images))

  def _serve_bytes(self, encoded):
    return self.predict(self.preprocess_bytes(encoded))


def _write_archive(model, export_dir, endpoints):
  """Writes `model`'s variables and `endpoints` with Keras' ExportArchive.

  Its SavedModel keeps the variables as the converter expects them; a
  tf.Module holding the Keras model saves them so that TFLite conversion
  leaves uninitialised variable reads behind (NaN outputs).
  """
  archive = keras.export.ExportArchive()
  archive.track(model)
  for name, fn, spec in endpoints:
    archive.add_endpoint(name, fn, input_signature=[spec])
  archive.write_out(export_dir, verbose=False)
  return export_dir


def export_saved_model(model, export_dir, image_size, preprocessing,
                       class_names=(), jit_compile=False, overwrite=False):
  """Writes a SavedModel of `model` with the signatures above.

  `class_names` (label order) go to `export_dir/labels.txt` for infer.py.
  `jit_compile` XLA-compiles the model part of every signature (the
  SavedModel then needs XLA wherever it is served). A non-empty
  `export_dir` needs `overwrite`; the write is staged (`staged_dir`).
  """
  with staged_dir(export_dir, overwrite) as staging:
    _write_classifier(model, staging, image_size, preprocessing, class_names,
                      jit_compile)
  return export_dir


def _write_classifier(model, directory, image_size, preprocessing,
                      class_names, jit_compile):
  """The classifier SavedModel and labels.txt, written into `directory`."""
  serving = ServingModule(model, image_size, preprocessing,
                          jit_compile=jit_compile)
  _write_archive(serving.model, directory, serving.endpoints())
  if class_names:
    tfrecord_format.write_class_names(directory, class_names)


def export_feature_vector(model, export_dir, image_size, preprocessing,
                          overwrite=False):
  """Writes the headless feature-vector SavedModel of `model`.

  It resizes the whole image (no crop) with the run's resize method and
  input scaling. A non-empty `export_dir` needs `overwrite`; the write is
  staged (`staged_dir`).
  """
  backbone = fold_bn.fold_batch_norms(
      keras.Model(model.inputs, model.get_layer("avg_pool").output))
  size = int(image_size)

  def features(images):
    images = preprocess.resize_and_scale(images * 255.0, size, preprocessing)
    return tf.cast(backbone(images, training=False), tf.float32)

  spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
  # `serve` for TFSMLayer, `__call__` for module(images).
  with staged_dir(export_dir, overwrite) as staging:
    _write_archive(backbone, staging, [("serve", features, spec),
                                       ("__call__", features, spec)])
  return export_dir


def export_features(model, export_dir, image_size, preprocessing,
                    overwrite=False):
  """Writes a SavedModel of a `features_only` model's feature maps.

  Signatures, each returning {'P<level>': [B, h, w, C] float32}, keras-hub's
  pyramid keys (`FeatureInfo.levels()`, 'P3' at stride 8):
    serving_default: float32 images 0..255 [B, H, W, 3] of any size,
      preprocessed as the classifier's `serving_default` (eval crop, resize
      to `image_size`, input scaling: `preprocess_images`);
    preprocessed: already scaled images [B, H, W, 3] of any size.
  Batch norms are folded, as in the classifier's export. A non-empty
  `export_dir` needs `overwrite`; the write is staged (`staged_dir`).
  """
  levels = model.feature_info.levels()
  folded = fold_bn.fold_batch_norms(model)
  size = int(image_size)

  def maps(images):
    outputs = folded(images, training=False)
    return {level: tf.cast(x, tf.float32)
            for level, x in zip(levels, outputs)}

  def serve(images):
    return maps(preprocess_images(images, size, preprocessing))

  spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
  with staged_dir(export_dir, overwrite) as staging:
    _write_archive(folded, staging, [("serving_default", serve, spec),
                                     ("preprocessed", maps, spec)])
  return export_dir


def convert_tflite(saved_model_dir, quantize=False):
  """TFLite flatbuffer of a classifier SavedModel's `preprocessed` signature.

  Args:
    saved_model_dir: written by `export_saved_model`.
    quantize: dynamic-range quantisation (int8 weights, float activations).

  Returns:
    The path of the written `.tflite` file (in `saved_model_dir`), which
    it replaces whole (a temporary file, then a rename).
  """
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model_dir, signature_keys=["preprocessed"])
  if quantize:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  path = os.path.join(saved_model_dir,
                      TFLITE_QUANT_FILENAME if quantize else TFLITE_FILENAME)
  model = flatbuffer_utils.read_model_from_bytearray(
      bytearray(converter.convert()))
  _name_tensors_by_signature(model)
  tmp = fileio.temp_path(path)
  flatbuffer_utils.write_model(model, tmp)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path


def _name_tensors_by_signature(model):
  """Names each signature input and output tensor of a TFLite model object
  (flatbuffer_utils) by its key in the signature.

  The converter names them after the SavedModel's graph
  (`preprocessed_images:0`, `StatefulPartitionedCall:0`, ...); the
  signature runner finds them by index, so renaming changes no lookup.
  """
  for signature in model.signatureDefs:
    tensors = model.subgraphs[signature.subgraphIndex].tensors
    for key in signature.inputs + signature.outputs:
      tensors[key.tensorIndex].name = key.name


def export_run(model_dir, export_dir, checkpoint=None, tflite=False,
               tflite_quantize=False, feature_vector_dir=None,
               jit_compile=False, model_name=None, overwrite=False):
  """Exports a run's checkpoint (EMA weights); returns the written paths.

  `checkpoint`: latest (or None), best (the run's best/ checkpoint) or a
  checkpoint prefix (`run_dir.checkpoint_of`). `model_name` (--model), when
  given, must be the run's model. The TFLite files are written in the
  staged export, so they appear with it.
  """
  model, run_config, prefix = checkpoints.load_run_model(
      run_dir.checkpoint_of(model_dir, checkpoint))
  run_dir.check_model_flag(model_name, run_config)
  run_model = run_config["model"]["name"]
  print(f"Exporting {run_model} ({prefix}, EMA weights) at "
        f"{run_config['model']['eval_size']} px", flush=True)
  options = serving_options(run_config)
  labels = tfrecord_format.read_labels(run_dir.run_of_checkpoint(prefix)
                                       ) or []
  with staged_dir(export_dir, overwrite) as staging:
    _write_classifier(model, staging, **options,
                      class_names=[readable for _, readable in labels],
                      jit_compile=jit_compile)
    staged = ([convert_tflite(staging)] if tflite else []) + (
        [convert_tflite(staging, quantize=True)] if tflite_quantize else [])
  written = [export_dir] + [os.path.join(export_dir, os.path.basename(path))
                            for path in staged]
  if feature_vector_dir:
    written.append(export_feature_vector(
        model, feature_vector_dir, options["image_size"],
        options["preprocessing"], overwrite=overwrite))
  return written


def load_published(model_name, weights):
  """Published weights (`pretrained.get`) as (model, their serving options:
  the recipe's eval size and preprocessing, their class names or None)."""
  entry = pretrained.get(model_name, weights)
  model = model_lib.create_model(entry.model, weights=entry.name)
  prep, image_size = pretrained.preprocessing_of(entry)
  return (model, dict(image_size=image_size, preprocessing=prep),
          pretrained.class_names(entry))


def export_published(model_name, weights, export_dir, jit_compile=False,
                     overwrite=False):
  """Exports published weights (`--weights=TAG`) with their recipe's
  preprocessing and (1k) the ImageNet class names; returns the path."""
  model, options, names = load_published(model_name, weights)
  return export_saved_model(model, export_dir, **options,
                            class_names=names or (), jit_compile=jit_compile,
                            overwrite=overwrite)


def _define_flags():
  flags.DEFINE_string("model_dir", None, "Run directory (config.json and "
                      "checkpoints of main.py or main_tf2.py).")
  flags.DEFINE_string("checkpoint", None,
                      f"Which checkpoint: {run_dir.LATEST} (the default), "
                      f"{run_dir.BEST} (--model_dir's best/, kept with "
                      "train.keep_best) or a checkpoint prefix.")
  flags.DEFINE_string("model", None, "Model of --weights (with --model_dir: "
                      "must be the run's).")
  flags.DEFINE_string("weights", None, "Export published weights instead: "
                      f"{', '.join(pretrained.TAGS)} (or MODEL:TAG).")
  flags.DEFINE_string("export_dir", None, "Where the SavedModel goes.")
  flags.DEFINE_bool("tflite", False, "Also write model.tflite.")
  flags.DEFINE_bool("tflite_quantize", False,
                    "Also write a dynamic-range quantised model_quant.tflite.")
  flags.DEFINE_string("feature_vector_dir", None,
                      "Also write a feature-vector SavedModel here.")
  flags.DEFINE_bool("jit_compile", False,
                    "XLA-compile the model part of the serving signatures.")
  flags.DEFINE_bool("overwrite", False, "Replace a non-empty --export_dir "
                    "(and --feature_vector_dir) whole.")
  flags.mark_flags_as_required(["export_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  values = flags.FLAGS
  quiet_start.quiet_info_logs(values)
  if not (values.model_dir or values.checkpoint or values.weights):
    raise app.UsageError("Give --model_dir (or --checkpoint, or --weights).")
  with errors.reported("export"):
    outputs = [("--export_dir", values.export_dir)]
    if values.feature_vector_dir and not values.weights:
      outputs.append(("--feature_vector_dir", values.feature_vector_dir))
    for flag, path in outputs:
      run_dir.check_writable(path, flag)
      check_export_dir(path, values.overwrite, flag)
    if values.weights:
      written = [export_published(values.model, values.weights,
                                  values.export_dir, values.jit_compile,
                                  values.overwrite)]
    else:
      written = export_run(values.model_dir, values.export_dir,
                           values.checkpoint, values.tflite,
                           values.tflite_quantize, values.feature_vector_dir,
                           values.jit_compile, values.model, values.overwrite)
  for path in written:
    print(f"Wrote {path}", flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
