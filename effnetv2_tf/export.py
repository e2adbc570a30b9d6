"""SavedModel export with the evaluation preprocessing inside the graph.

Signatures:
  serving_default: float32 images 0..255 [B, H, W, 3] of any size;
  serving_uint8:   the same for uint8 images;
  preprocessed:    already scaled [B, S, S, 3] images at the eval size.
Each returns `probabilities`, `top5_classes` and `top5_probabilities`.
Preprocessing is the evaluation one (center crop of size / (size + 32),
bilinear resize, the model's input scaling), so served predictions match
`main.py --mode=eval`. Export the EMA weights (`Trainer.ema.swapped()`).
"""

import tensorflow as tf

from effnetv2_tf.data import preprocess


def center_crop_batch(images, image_size, crop_padding=preprocess.CROP_PADDING,
                      skip_crop_from_size=320):
  """Center crop of a batch of equally sized images, as for one image."""
  offset, size = preprocess.center_crop_window(
      tf.shape(images)[1:3], image_size, crop_padding, skip_crop_from_size)
  return images[:, offset[0]:offset[0] + size[0],
                offset[1]:offset[1] + size[1]]


class ServingModule(tf.Module):
  """A Keras model plus its eval preprocessing, as tf.functions."""

  def __init__(self, model, image_size, input_scaling,
               crop_padding=preprocess.CROP_PADDING, skip_crop_from_size=320):
    super().__init__(name="serving")
    self.model = model
    self.image_size = int(image_size)
    self._input_scaling = input_scaling
    self._crop_padding = crop_padding
    self._skip_crop_from_size = skip_crop_from_size
    size = self.image_size
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    self.serve_uint8 = tf.function(
        lambda images: self._serve(tf.cast(images, tf.float32)),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                       name="images")])
    self.preprocessed = tf.function(self._predict, input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])

  def preprocess(self, images):
    images = center_crop_batch(images, self.image_size, self._crop_padding,
                               self._skip_crop_from_size)
    images = tf.image.resize(images, [self.image_size, self.image_size])
    return preprocess.normalize(images, self._input_scaling)

  def _predict(self, images):
    logits = tf.cast(self.model(images, training=False), tf.float32)
    probabilities = tf.nn.softmax(logits)
    top = tf.math.top_k(probabilities, min(5, probabilities.shape[-1]))
    return {"probabilities": probabilities, "top5_classes": top.indices,
            "top5_probabilities": top.values}

  def _serve(self, images):
    return self._predict(self.preprocess(images))


def export_saved_model(model, export_dir, image_size, input_scaling,
                       crop_padding=preprocess.CROP_PADDING,
                       skip_crop_from_size=320):
  """Writes a SavedModel of `model` with the signatures above."""
  module = ServingModule(model, image_size, input_scaling, crop_padding,
                         skip_crop_from_size)
  tf.saved_model.save(module, export_dir, signatures={
      "serving_default": module.serve,
      "serving_uint8": module.serve_uint8,
      "preprocessed": module.preprocessed})
  return export_dir
