"""1x1 convolutions computed as one matrix multiplication while training.

A 1x1, stride-1 convolution of an NHWC tensor is a matrix product of the
(N*H*W, C_in) pixels with the (C_in, C_out) kernel, and TensorFlow's
matmul kernels beat its (oneDNN) convolution kernels at it on CPU; we
measured that, not why (benchmarks/README.md, "Fast paths, one kernel at a
time"), and about half of V2-S's busy time there is 1x1 convolutions
(expansion, projection, head).

`PointwiseConv2D` is a drop-in subclass of keras' Conv2D: same constructor,
variables, names and config; the product is the same sum, so outputs and
gradients agree to float rounding. Only training calls take the matmul:
at inference TensorFlow's graph optimiser fuses the convolution with the
following batch norm into one kernel, which it does not do for a matmul.
Other kernel sizes, strides, dilations, groups and channels-first data
use Keras' convolution.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="effnetv2_tf")
class PointwiseConv2D(keras.layers.Conv2D):
  """keras.layers.Conv2D whose 1x1 training calls are one matmul."""

  def _is_matmul(self):
    return (keras.backend.backend() == "tensorflow" and
            tuple(self.kernel_size) == (1, 1) and
            tuple(self.strides) == (1, 1) and
            tuple(self.dilation_rate) == (1, 1) and self.groups == 1 and
            self.data_format == "channels_last")

  def call(self, inputs, training=None):
    if not (training and self._is_matmul()):
      return super().call(inputs)
    channels_in = inputs.shape[-1]
    kernel = tf.reshape(self.kernel, [channels_in, self.filters])
    outputs = tf.matmul(tf.reshape(inputs, [-1, channels_in]), kernel)
    # Static dimensions where known, so the output keeps its static shape.
    dynamic = tf.shape(inputs)
    shape = [d if d is not None else dynamic[i]
             for i, d in enumerate(inputs.shape[:-1])] + [self.filters]
    outputs = tf.reshape(outputs, shape)
    if self.use_bias:
      outputs = tf.nn.bias_add(outputs, self.bias)
    if self.activation is not None:
      outputs = self.activation(outputs)
    return outputs
