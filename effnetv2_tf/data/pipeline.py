"""Per-stage tf.data input pipelines for training and evaluation.

Progressive learning (paper section 4, Algorithm 1) changes the image size,
the RandAugment magnitude and the mixup/CutMix alpha at every stage, so a
training pipeline is built per stage from explicit arguments; nothing is read
from globals.

The pixel values (decode, crop, resize, flip, scaling, cutout, eval crop)
come from one `preprocessing.Preprocessing` row, the run's resolved `data`
config. Training, per example: random crop (decoded as the row's `decode`
says) or the whole image, resize to the stage size, random flip,
RandAugment/AutoAugment on uint8, the input scaling, cutout (finetune); per
batch: label smoothing, then mixup/CutMix. Rows without cutout apply the
input scaling to the whole batch instead (the same bytes, fewer and larger
ops, and uint8 examples to batch where augmented). Evaluation:
`preprocess.eval_preprocess` (center crop or the whole image, resize,
scaling); batches are padded to a static shape and carry a 0/1 `mask`, so
every example is counted exactly once, also across replicas.

Every random op is stateless. Seeds derive from (seed, input pipeline id)
folded with the element's position in the repeated, shuffled stream (or the
batch's position for mixing), so a seeded pipeline is exactly reproducible.

Corrupt images are dropped (`ignore_errors`, each logged by tf.data) and
counted: every batch carries `skipped`, the number of examples dropped so
far in this pipeline.
"""

import dataclasses
import math
from typing import Optional

import tensorflow as tf

from effnetv2_tf import settings
from effnetv2_tf.data import augment
from effnetv2_tf.data import mix
from effnetv2_tf.data import preprocess
from effnetv2_tf.data import preprocessing
from effnetv2_tf.settings import Setting

AUTOTUNE = tf.data.AUTOTUNE
_ELEMENT, _BATCH = 0, 1  # seed streams


def _base_seed(seed, input_context, stream):
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  base = tf.constant([seed, pipeline_id], tf.int64)
  return tf.random.experimental.stateless_fold_in(base, stream)


def _count_skipped(ds):
  """Adds `skipped`: examples dropped so far, from gaps in the stream index.

  Needs the in-order stream that a deterministic `map` keeps (the tf.data
  default), since it compares each survivor's index with the previous one.
  """
  def step(state, element):
    last, skipped = state
    index = element.pop("index")
    skipped += index - last - 1
    element["skipped"] = skipped
    return (index, skipped), element

  return ds.scan((tf.constant(-1, tf.int64), tf.constant(0, tf.int64)), step)


def train_preprocess(features, seed, image_size, prep, augname=None,
                     randaug_magnitude=0.0, num_layers=2,
                     augment_arithmetic=augment.DEFAULT_ARITHMETIC):
  """One training example: crop, resize, flip, augment, scale, cutout.

  Args:
    features: dict with 'encoded' bytes or a uint8 'image'.
    seed: shape [2] int seed for this example.
    image_size: the stage's square output size.
    prep: the run's `preprocessing.Preprocessing`.
    augname: 'randaug', 'autoaug' or None.
    randaug_magnitude: the stage's RandAugment magnitude.
    num_layers: RandAugment ops per image.
    augment_arithmetic: the ops' arithmetic, one of `augment.ARITHMETICS`.

  Returns:
    float32 [image_size, image_size, 3].
  """
  image = train_pixels(features, seed, image_size, prep, augname,
                       randaug_magnitude, num_layers, augment_arithmetic)
  image = preprocess.normalize(image, prep.input_scaling)
  if prep.cutout:
    image = preprocess.finetune_cutout(image, _example_seeds(seed)[3])
  return image


def _example_seeds(seed):
  """The crop, flip, augmentation and cutout seeds of one example."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, 4))


def train_pixels(features, seed, image_size, prep, augname=None,
                 randaug_magnitude=0.0, num_layers=2,
                 augment_arithmetic=augment.DEFAULT_ARITHMETIC):
  """`train_preprocess` up to the input scaling: crop, resize, flip,
  augment; uint8 after an augmentation, else float32 in 0..255 (the same
  arguments)."""
  crop_seed, flip_seed, aug_seed, _ = _example_seeds(seed)
  if prep.train_crop:
    image = preprocess.random_crop(features, crop_seed, image_size, prep)
  else:
    image = preprocess.uncropped(features, image_size, prep)
  image = preprocess.resize(image, image_size, prep.resize_method)
  if augname:
    # Flips commute with the pixel-wise to_uint8: flipping its uint8
    # output moves a quarter of the bytes, for the same pixels.
    image = preprocess.to_uint8(
        image, bounded=prep.resize_method == "bilinear")
  if prep.random_flip:
    image = preprocess.flip(image, flip_seed)
  if augname:
    image = augment.distort_image(image, augname, randaug_magnitude,
                                  aug_seed, num_layers=num_layers,
                                  arithmetic=augment_arithmetic)
  return image


# The config's keys of the training input (`data` section), its label
# smoothing (`train`) and the eval batch (`eval`).
SETTINGS = (
    Setting("augname", None, str, "the augmentation ('': none)",
            fills="the model's", choices=("",) + augment.AUGNAMES),
    Setting("num_layers", 2, int, "RandAugment ops per image",
            **settings.at_least(0)),
    Setting("augment_arithmetic", None, str, "the augmentation ops' "
            "arithmetic: the released code's, quirks included, or PIL's",
            fills="progressive.preset's", choices=augment.ARITHMETICS),
    Setting("cache", False, bool, "cache the examples in memory (small "
            "datasets)"),
    Setting("shuffle_buffer", 10_000, int, "examples in the shuffle buffer",
            **settings.at_least(1)),
)
TRAIN_SETTINGS = (
    Setting("label_smoothing", 0.1, float, "label smoothing, applied before "
            "mixup/CutMix (reference order)",
            **settings.in_unit(low_open=False, high_open=True)),
)
EVAL_SETTINGS = (
    Setting("batch_size", 1024, int, "the global eval batch",
            **settings.at_least(1)),
)
_DEFAULTS = settings.by_name(SETTINGS)


@dataclasses.dataclass(frozen=True)
class TrainInput:
  """What a run's training input keeps over all its stages.

  Attributes:
    prep: the run's `preprocessing.Preprocessing`.
    augname: 'randaug', 'autoaug' or None.
    num_layers: RandAugment ops per image.
    augment_arithmetic: the ops' arithmetic, one of `augment.ARITHMETICS`.
    label_smoothing: smoothing applied before mixing (reference order).
    shuffle_buffer: examples in the shuffle buffer.
    cache: cache the source's examples in memory (small datasets).
  """
  prep: preprocessing.Preprocessing
  augname: Optional[str] = None
  num_layers: int = _DEFAULTS["num_layers"].default
  augment_arithmetic: str = augment.DEFAULT_ARITHMETIC
  label_smoothing: float = 0.0
  shuffle_buffer: int = _DEFAULTS["shuffle_buffer"].default
  cache: bool = _DEFAULTS["cache"].default


def build_train_dataset(source, batch_size, stage, train_input, *, seed=0,
                        input_context=None, split="train",
                        static_image_size=True):
  """The endless training stream of one progressive-learning stage.

  Args:
    source: a `sources.Source`.
    batch_size: per-replica batch size (with `input_context`, use
      `input_context.get_per_replica_batch_size(global_batch)`).
    stage: the stage's `image_size`, `randaug_magnitude`, `mixup_alpha` and
      `cutmix_alpha` (0 disables each), e.g. a `progressive.Stage`.
    train_input: the run's `TrainInput`.
    seed: base seed; use a different one per stage (e.g. seed + stage).
    input_context: `tf.distribute.InputContext` for per-replica input.
    split: source split to read.
    static_image_size: False gives the images the static shape
      [B, None, None, 3], so every stage's dataset has one element_spec
      and a step traced for one stage serves the others.

  Returns:
    A `tf.data.Dataset` of dicts: 'images' float32 [B, S, S, 3], 'labels'
    float32 [B, C] (rows sum to 1), 'skipped' int64 scalar.
  """
  ds = _train_examples(source, split, stage, train_input, seed,
                       input_context)
  ds = _count_skipped(ds.ignore_errors(log_warning=True))
  ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
  mixer = _batch_mixer(stage, train_input, static_image_size,
                       _base_seed(seed, input_context, _BATCH))
  ds = ds.enumerate().map(mixer, num_parallel_calls=AUTOTUNE)
  return ds.prefetch(AUTOTUNE)


def _train_examples(source, split, stage, train_input, seed, input_context):
  """The shuffled, endless, preprocessed examples of `split`, each with its
  stream index (seeded per example by that index)."""
  ds = source.read(split, input_context, shuffle_files_seed=seed)
  if train_input.cache:
    ds = ds.cache()
  ds = ds.shuffle(train_input.shuffle_buffer, seed=seed,
                  reshuffle_each_iteration=True)
  ds = ds.repeat().enumerate()
  element_base = _base_seed(seed, input_context, _ELEMENT)

  # Without cutout the input scaling waits for the batch (`_batch_mixer`):
  # examples travel as uint8 where augmented, and one op scales the batch.
  per_example = train_preprocess if train_input.prep.cutout else train_pixels

  def one_example(index, features):
    example_seed = tf.random.experimental.stateless_fold_in(element_base,
                                                            index)
    image = per_example(features, example_seed, stage.image_size,
                        train_input.prep, train_input.augname,
                        stage.randaug_magnitude, train_input.num_layers,
                        train_input.augment_arithmetic)
    return {"images": image, "labels": features["label"], "index": index}

  return ds.map(one_example, num_parallel_calls=AUTOTUNE)


def _batch_mixer(stage, train_input, static_image_size, batch_base):
  """The map of (batch index, batch): label smoothing, then mixup/CutMix
  seeded by the index."""

  def mix_labels(index, batch):
    labels = mix.smooth_labels(batch["labels"], train_input.label_smoothing)
    batch_seed = tf.random.experimental.stateless_fold_in(batch_base, index)
    images = batch["images"]
    if not train_input.prep.cutout:  # scaled here (`_train_examples`)
      images = preprocess.normalize(images, train_input.prep.input_scaling)
    images, labels = mix.mix_batch(images, labels,
                                   stage.mixup_alpha, stage.cutmix_alpha,
                                   batch_seed)
    if not static_image_size:
      # Forgets the static height and width (the values pass unchanged):
      # tf.data has no op that relaxes an element's shape, and this one
      # is an identity on the data.
      images = tf.raw_ops.PlaceholderWithDefault(
          input=images, shape=[images.shape[0], None, None, images.shape[3]])
    return {"images": images, "labels": labels,
            "skipped": batch["skipped"][-1]}

  return mix_labels


def eval_steps(num_examples, global_batch_size):
  """Steps that cover `num_examples` once with the padded eval pipeline."""
  return max(1, math.ceil(num_examples / global_batch_size))


def _pad_batch(batch, batch_size):
  """Pads a final partial batch to `batch_size` with mask 0."""
  n = tf.shape(batch["labels"])[0]
  padded = {}
  for key in ("images", "labels"):
    value = batch[key]
    pad = [[0, batch_size - n]] + [[0, 0]] * (len(value.shape) - 1)
    padded[key] = tf.pad(value, pad)
    padded[key].set_shape([batch_size] + value.shape[1:].as_list())
  padded["mask"] = tf.pad(tf.ones([n]), [[0, batch_size - n]])
  padded["mask"].set_shape([batch_size])
  padded["skipped"] = batch["skipped"][-1]
  return padded


def build_eval_dataset(source, batch_size, image_size, prep, *,
                       split="validation", input_context=None, cache=False):
  """One pass over an evaluation split, padded to whole, equal-length shards.

  Examples are sharded one by one over the input pipelines (not by file), so
  every pipeline yields the same number of batches: `eval_steps(n,
  global_batch) * replicas per pipeline`, with all-padding batches at the
  end where a pipeline runs short. Sum `mask`-weighted metrics.

  Args:
    source: a `sources.Source`.
    batch_size: per-replica batch size.
    image_size: evaluation image size.
    prep: the run's `preprocessing.Preprocessing` (eval crop, resize, scaling).
    split: source split.
    input_context: `tf.distribute.InputContext` for per-replica input.
    cache: cache the decoded, resized examples.

  Returns:
    A finite `tf.data.Dataset` of dicts: 'images', 'labels', 'mask' (1 for a
    real example), 'skipped'.
  """
  num_pipelines, pipeline_id, replicas = 1, 0, 1
  if input_context:
    num_pipelines = input_context.num_input_pipelines
    pipeline_id = input_context.input_pipeline_id
    replicas = input_context.num_replicas_in_sync
  num_batches = (eval_steps(source.num_examples(split), batch_size * replicas)
                 * replicas // num_pipelines)
  ds = source.read(split).shard(num_pipelines, pipeline_id).enumerate()

  def one_example(index, features):
    image = preprocess.eval_preprocess(features, image_size, prep)
    return {"images": image, "labels": features["label"], "index": index}

  ds = ds.map(one_example, num_parallel_calls=AUTOTUNE)
  ds = _count_skipped(ds.ignore_errors(log_warning=True))
  if cache:
    ds = ds.cache()
  ds = ds.batch(batch_size).map(lambda b: _pad_batch(b, batch_size))
  # All-padding batches (skipped 0: drivers take the max over batches).
  empty = tf.data.Dataset.from_tensors(tf.nest.map_structure(
      lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec))
  ds = ds.concatenate(empty.repeat()).take(num_batches)
  return ds.prefetch(AUTOTUNE)
