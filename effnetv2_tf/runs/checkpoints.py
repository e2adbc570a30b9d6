"""`--init_checkpoint`: initialise a model from another run, skipping the head.

Accepts published weights by tag (`pretrained.TABLE`: 'TAG' or
'MODEL:TAG', fetched into the Keras cache), a checkpoint of either driver
(a directory with `config.json` or a checkpoint prefix in one), a reference
TF1 checkpoint, a keras.applications `.h5`/`.weights.h5` file or a `.keras`
file. Weights are copied layer by
layer by name; layers whose shapes differ (the classifier when the class
count changes, e.g. ImageNet-21k -> 1k) are skipped. EMA weights are used
where the checkpoint has them.
"""

from absl import logging
import keras
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf.data import preprocessing
from effnetv2_tf.models import ema as ema_lib
from effnetv2_tf.models import fold_bn
from effnetv2_tf.models import pretrained
from effnetv2_tf.models import weights as weights_lib
from effnetv2_tf.runs import run_dir

MIN_LOADED_FRACTION = 0.5


class CheckpointMismatchError(errors.UserError, ValueError):
  """A checkpoint that does not fit the model; the message says how."""


def load_run_model(path, what="--init_checkpoint"):
  """One of our runs' models with its EMA weights, and the run's config.

  Args:
    path: a run directory (its latest checkpoint) or a checkpoint prefix in
      one or in its best/; the run's config.json says which model wrote
      it.
    what: how error messages name `path` (a flag).

  Returns:
    (keras.Model, run config dict, the checkpoint prefix it restored).
  """
  prefix = run_dir.checkpoint_prefix(path, what)
  run_config = run_dir.read_config(run_dir.run_of_checkpoint(prefix))
  if run_config is None:
    raise errors.MissingInputError(
        f"{what} {prefix}: no config.json beside it, so the "
        "model that wrote it is unknown.")
  reader = tf.train.load_checkpoint(prefix)
  source = run_dir.model_from_config(run_config["model"],
                                       _num_classes(reader))
  ema = ema_lib.ExponentialMovingAverage(source, 0.0)
  tf.train.Checkpoint(model=source, ema=ema).restore(prefix).expect_partial()
  if any(k.startswith("ema/") for k in reader.get_variable_to_shape_map()):
    ema.copy_to_model()
    logging.info("Using the EMA weights of %s.", prefix)
  return source, run_config, prefix


def _num_classes(reader):
  """The class count: the only 2-D weights are the dense head's kernel."""
  dense = [shape for shape in reader.get_variable_to_shape_map().values()
           if len(shape) == 2]
  if not dense:
    raise CheckpointMismatchError(
        "Cannot find the classifier kernel in the checkpoint.")
  return dense[0][1]


def copy_by_name(source, target):
  """Copies weights of same-named, same-shaped layers.

  Returns:
    (number of weights copied, [skipped layer names], a sentence on the
    first skipped layer: missing, or its shapes here and there).
  """
  loaded, skipped, first = 0, [], ""
  for layer in target.layers:
    if not layer.weights:
      continue
    try:
      other = source.get_layer(layer.name)
    except ValueError:
      skipped.append(layer.name)
      first = first or f"layer {layer.name!r} is not in it"
      continue
    shapes = [tuple(w.shape) for w in layer.weights]
    theirs = [tuple(w.shape) for w in other.weights]
    if shapes != theirs:
      skipped.append(layer.name)
      first = first or (f"layer {layer.name!r} has shapes {theirs} there, "
                        f"{shapes} here")
      continue
    layer.set_weights(other.get_weights())
    loaded += len(layer.weights)
  return loaded, skipped, first


def init_from(model, path):
  """Initialises `model` from `path`; returns the number of loaded weights.

  Args:
    model: the target keras.Model (already built).
    path: see the module docstring.

  Raises:
    CheckpointMismatchError: when fewer than half of the model's weights could be loaded.
    pretrained.PretrainedError: a tag not published for the model, or
      weights that cannot be downloaded.
  """
  named = path
  path, entry = pretrained.resolve(model.name, path)
  if entry:
    print(f"init_checkpoint: {entry.name} ({entry.source}) from {path}",
          flush=True)
  else:
    run_dir.check_exists(path)
  if path.endswith(".h5"):
    source, first = None, None
    loaded, skipped = _load_keras_app(model, path)
  elif path.endswith(".keras"):
    source = keras.saving.load_model(path, compile=False)
    if any(isinstance(layer, fold_bn.FoldedBatchNorm)
           for layer in source.layers):
      raise CheckpointMismatchError(
          f"--init_checkpoint {path}: its batch norms are folded into the "
          "convolutions (an inference model, fold_batch_norms); initialise "
          "from the unfolded model or its run's checkpoint.")
  else:
    prefix = run_dir.checkpoint_prefix(path)
    names = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    if weights_lib.reference_layout(names):
      source, first = None, None  # a reference driver's checkpoint
      loaded, skipped = weights_lib.load_weights_counted(model, prefix,
                                                         warn=False)
    else:
      source, _, _ = load_run_model(prefix)
  if source is not None:
    loaded, skipped, first = copy_by_name(source, model)
  total = len(model.weights)
  logging.info("Loaded %d of %d weights from %s; skipped layers: %s", loaded,
               total, path, ", ".join(skipped) or "none")
  print(f"init_checkpoint: loaded {loaded}/{total} weights from {named}"
        + (f" (skipped {_layers(skipped)})" if skipped else ""), flush=True)
  if loaded < MIN_LOADED_FRACTION * total:
    raise CheckpointMismatchError(
        f"--init_checkpoint {path}: only {loaded} of {total} weights match "
        f"this model by name and shape (first mismatch: {first}); is it the "
        "same architecture?")
  return loaded


def _layers(names):
  """Skipped layers in a line: one or a few by name, more as a count."""
  return (errors.first_few(names) if len(names) <= 3 else
          f"{len(names)} layers: {errors.first_few(names)}")


def scaling_note(run_config, value):
  """A line when the run's input scaling differs from the one the published
  weights `value` (a tag) were trained with, else None."""
  entry = pretrained.lookup(run_config["model"]["name"], value)
  if entry is None:
    return None
  theirs = pretrained.preprocessing_of(entry)[0].input_scaling
  ours = run_dir.preprocessing_of(run_config).input_scaling
  if theirs == ours:
    return None
  return (f"Input scaling: this run's {preprocessing.SCALING_FORMULAS[ours]} "
          f"({run_config['data']['preprocessing']} preprocessing) differs "
          f"from the {preprocessing.SCALING_FORMULAS[theirs]} that {entry.name} "
          f"was trained with (recipe {entry.dataset_cfg}); finetuning adapts "
          "the weights to it.")


def _load_keras_app(model, path):
  """Loads a keras.applications file into `model`, its classifier too
  where the file's fits (as a run checkpoint's is copied); a file without
  one (include_top=False) fills the rest. (weights loaded, skipped
  layers)."""
  try:
    return weights_lib.load_weights_counted(model, path, warn=False)
  except weights_lib.WeightsMismatchError:  # no head in the file
    backbone = keras.Model(model.inputs,
                           model.get_layer("top_activation").output)
    loaded, _ = weights_lib.load_weights_counted(backbone, path)
    inside = {id(layer) for layer in backbone.layers}
    return loaded, [layer.name for layer in model.layers
                    if layer.weights and id(layer) not in inside]
