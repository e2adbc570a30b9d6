"""Per-stage tf.data input pipelines for training and evaluation.

Progressive learning (paper section 4, Algorithm 1) changes the image size,
the RandAugment magnitude and the mixup/CutMix alpha at every stage, so a
training pipeline is built per stage from explicit arguments; nothing is read
from globals.

Training, per example: inception crop (fused with JPEG decoding), random
flip, resize to the stage size, RandAugment/AutoAugment on uint8, then the
model's input scaling; per batch: label smoothing, then mixup/CutMix.
Evaluation: center crop, resize, scaling; batches are padded to a static
shape and carry a 0/1 `mask`, so every example is counted exactly once, also
across replicas.

Every random op is stateless. Seeds derive from (seed, input pipeline id)
folded with the element's position in the repeated, shuffled stream (or the
batch's position for mixing), so a seeded pipeline is exactly reproducible.

Corrupt images are dropped (`ignore_errors`, each logged by tf.data) and
counted: every batch carries `skipped`, the number of examples dropped so
far in this pipeline.
"""

import math

import tensorflow as tf

from effnetv2_tf.data import augment
from effnetv2_tf.data import mix
from effnetv2_tf.data import preprocess

AUTOTUNE = tf.data.AUTOTUNE
_ELEMENT, _BATCH = 0, 1  # seed streams


def _base_seed(seed, input_context, stream):
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  base = tf.constant([seed, pipeline_id], tf.int64)
  return tf.random.experimental.stateless_fold_in(base, stream)


def _decoded(features):
  if "image" in features:
    return features["image"]
  return preprocess.decode_image(features["encoded"])


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


def train_preprocess(features, seed, image_size, input_scaling, augname=None,
                     randaug_magnitude=0.0, num_layers=2,
                     area_range=(0.05, 1.0), random_flip=True):
  """One training example: crop, flip, resize, augment, scale.

  Args:
    features: dict with 'encoded' bytes or a uint8 'image'.
    seed: shape [2] int seed for this example.
    image_size: the stage's square output size.
    input_scaling: the model's registry `input_scaling`.
    augname: 'randaug', 'autoaug' or None.
    randaug_magnitude: the stage's RandAugment magnitude.
    num_layers: RandAugment ops per image.
    area_range: inception crop area range (reference V2: 0.05 to 1).
    random_flip: random horizontal flips (off for digits and text).

  Returns:
    float32 [image_size, image_size, 3].
  """
  crop_seed, flip_seed, aug_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  image = preprocess.random_crop(features, crop_seed, area_range=area_range)
  if random_flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  image = preprocess.resize(image, image_size)
  if augname:
    image = augment.distort_image(preprocess.to_uint8(image), augname,
                                  randaug_magnitude, aug_seed,
                                  num_layers=num_layers)
  return preprocess.normalize(image, input_scaling)


def build_train_dataset(source, batch_size, image_size, input_scaling, *,
                        augname=None, randaug_magnitude=0.0, num_layers=2,
                        mixup_alpha=0.0, cutmix_alpha=0.0,
                        label_smoothing=0.0, area_range=(0.05, 1.0),
                        random_flip=True, seed=0, input_context=None,
                        shuffle_buffer=10_000,
                        cache=False, split="train"):
  """The endless training stream of one progressive-learning stage.

  Args:
    source: a `sources.Source`.
    batch_size: per-replica batch size (with `input_context`, use
      `input_context.get_per_replica_batch_size(global_batch)`).
    image_size: the stage's training image size.
    input_scaling: the model's registry `input_scaling`.
    augname, randaug_magnitude, num_layers: the stage's augmentation.
    mixup_alpha, cutmix_alpha: the stage's Beta alphas (0 disables each).
    label_smoothing: smoothing applied before mixing (reference order).
    area_range: inception crop area range.
    random_flip: random horizontal flips.
    seed: base seed; use a different one per stage (e.g. seed + stage).
    input_context: `tf.distribute.InputContext` for per-replica input.
    shuffle_buffer: examples in the shuffle buffer.
    cache: cache the source's examples in memory (small datasets).
    split: source split to read.

  Returns:
    A `tf.data.Dataset` of dicts: 'images' float32 [B, S, S, 3], 'labels'
    float32 [B, C] (rows sum to 1), 'skipped' int64 scalar.
  """
  ds = source.read(split, input_context, shuffle_files_seed=seed)
  ds = ds.map(lambda ex: {k: v for k, v in ex.items() if k != "source_id"})
  if cache:
    ds = ds.cache()
  ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  ds = ds.repeat().enumerate()
  element_base = _base_seed(seed, input_context, _ELEMENT)

  def one_example(index, features):
    example_seed = tf.random.experimental.stateless_fold_in(element_base,
                                                            index)
    image = train_preprocess(features, example_seed, image_size,
                             input_scaling, augname, randaug_magnitude,
                             num_layers, area_range, random_flip)
    return {"images": image, "labels": features["label"], "index": index}

  ds = ds.map(one_example, num_parallel_calls=AUTOTUNE)
  ds = _count_skipped(ds.ignore_errors(log_warning=True))
  ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
  batch_base = _base_seed(seed, input_context, _BATCH)

  def mix_labels(index, batch):
    labels = mix.smooth_labels(batch["labels"], label_smoothing)
    batch_seed = tf.random.experimental.stateless_fold_in(batch_base, index)
    images, labels = mix.mix_batch(batch["images"], labels, mixup_alpha,
                                   cutmix_alpha, batch_seed)
    return {"images": images, "labels": labels,
            "skipped": batch["skipped"][-1]}

  ds = ds.enumerate().map(mix_labels, num_parallel_calls=AUTOTUNE)
  return ds.prefetch(AUTOTUNE)


def eval_preprocess(features, image_size, input_scaling,
                    crop_padding=preprocess.CROP_PADDING,
                    skip_crop_from_size=320):
  """One evaluation example: center crop, resize, scale."""
  image = preprocess.center_crop(features, image_size, crop_padding,
                                 skip_crop_from_size)
  return preprocess.normalize(preprocess.resize(image, image_size),
                              input_scaling)


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


def build_eval_dataset(source, batch_size, image_size, input_scaling, *,
                       split="validation", crop_padding=preprocess.CROP_PADDING,
                       skip_crop_from_size=320, input_context=None,
                       cache=False):
  """One pass over an evaluation split, padded to whole, equal-length shards.

  Examples are sharded one by one over the input pipelines (not by file), so
  every pipeline yields the same number of batches: `eval_steps(n,
  global_batch) * replicas per pipeline`, with all-padding batches at the
  end where a pipeline runs short. Sum `mask`-weighted metrics.

  Args:
    source: a `sources.Source`.
    batch_size: per-replica batch size.
    image_size: evaluation image size.
    input_scaling: the model's registry `input_scaling`.
    split: source split.
    crop_padding: center crop keeps size / (size + crop_padding).
    skip_crop_from_size: eval sizes from which the crop is skipped
      (reference: 320); None always crops.
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
    image = eval_preprocess(features, image_size, input_scaling, crop_padding,
                            skip_crop_from_size)
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


def keras_inputs(ds):
  """(images, labels) tuples for `Model.fit` from a pipeline of dicts."""
  return ds.map(lambda b: (b["images"], b["labels"]),
                num_parallel_calls=AUTOTUNE)
