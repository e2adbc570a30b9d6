"""Batch-level label mixing: label smoothing, mixup and CutMix.

Mixup (Zhang et al. 2018) blends each example with its partner in the
reversed batch using lambda ~ Beta(alpha, alpha), kept >= 0.5 as the
reference does; CutMix (Yun et al. 2019) pastes a box of area 1 - lambda
from the partner, and the label weight is the box's real (clipped) area. With
both alphas set, the first half of the batch gets mixup and the second half
CutMix (reference). Progressive learning raises alpha per stage (paper
Table 6), so alphas are plain arguments.
"""

import tensorflow as tf


def smooth_labels(labels, label_smoothing):
  """labels * (1 - s) + s / num_classes; rows still sum to 1."""
  if not label_smoothing:
    return labels
  num_classes = tf.cast(tf.shape(labels)[-1], labels.dtype)
  return labels * (1.0 - label_smoothing) + label_smoothing / num_classes


def sample_beta(shape, alpha, seed):
  """Stateless Beta(alpha, alpha) samples as X / (X + Y), X, Y ~ Gamma."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  x = tf.random.stateless_gamma(shape, seeds[0], alpha=alpha)
  y = tf.random.stateless_gamma(shape, seeds[1], alpha=alpha)
  return x / (x + y)


def mixup(images, labels, alpha, seed):
  """Mixes each example with the reversed batch; returns (images, labels)."""
  batch = tf.shape(images)[0]
  lam = sample_beta([batch], alpha, seed)
  lam = tf.maximum(lam, 1.0 - lam)
  lam_images = tf.reshape(tf.cast(lam, images.dtype), [-1, 1, 1, 1])
  images = images * lam_images + images[::-1] * (1.0 - lam_images)
  lam_labels = tf.reshape(tf.cast(lam, labels.dtype), [-1, 1])
  labels = labels * lam_labels + labels[::-1] * (1.0 - lam_labels)
  return images, labels


def cutmix_masks(batch, height, width, alpha, seed):
  """Per-example box masks (1 inside the pasted box) and their area."""
  seeds = tf.random.experimental.stateless_split(seed, 3)
  lam = sample_beta([batch], alpha, seeds[0])
  cut = tf.sqrt(1.0 - lam)
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  cy = tf.random.stateless_uniform([batch], seeds[1], 0.0, h)
  cx = tf.random.stateless_uniform([batch], seeds[2], 0.0, w)
  y0 = tf.clip_by_value(tf.round(cy - cut * h / 2), 0.0, h)
  y1 = tf.clip_by_value(tf.round(cy + cut * h / 2), 0.0, h)
  x0 = tf.clip_by_value(tf.round(cx - cut * w / 2), 0.0, w)
  x1 = tf.clip_by_value(tf.round(cx + cut * w / 2), 0.0, w)
  rows = tf.range(h)[tf.newaxis, :, tf.newaxis]
  cols = tf.range(w)[tf.newaxis, tf.newaxis, :]
  inside = ((rows >= y0[:, None, None]) & (rows < y1[:, None, None]) &
            (cols >= x0[:, None, None]) & (cols < x1[:, None, None]))
  masks = tf.cast(inside, tf.float32)[..., tf.newaxis]
  area = (y1 - y0) * (x1 - x0) / (h * w)
  return masks, area


def cutmix(images, labels, alpha, seed):
  """Pastes a box from the reversed batch; labels weighted by box area."""
  shape = tf.shape(images)
  masks, area = cutmix_masks(shape[0], shape[1], shape[2], alpha, seed)
  masks = tf.cast(masks, images.dtype)
  images = images * (1.0 - masks) + images[::-1] * masks
  area = tf.reshape(tf.cast(area, labels.dtype), [-1, 1])
  labels = labels * (1.0 - area) + labels[::-1] * area
  return images, labels


def mix_batch(images, labels, mixup_alpha, cutmix_alpha, seed):
  """Applies mixup and/or CutMix to a batch; no-op when both alphas are 0."""
  if mixup_alpha and cutmix_alpha:
    half = tf.shape(images)[0] // 2
    seeds = tf.random.experimental.stateless_split(seed, 2)
    im1, lab1 = mixup(images[:half], labels[:half], mixup_alpha, seeds[0])
    im2, lab2 = cutmix(images[half:], labels[half:], cutmix_alpha, seeds[1])
    return tf.concat([im1, im2], 0), tf.concat([lab1, lab2], 0)
  if mixup_alpha:
    return mixup(images, labels, mixup_alpha, seed)
  if cutmix_alpha:
    return cutmix(images, labels, cutmix_alpha, seed)
  return images, labels
