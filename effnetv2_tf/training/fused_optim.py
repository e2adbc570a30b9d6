"""TensorFlow's fused optimizer kernels behind Keras' RMSprop and SGD.

Keras 3 writes each optimizer update as backend ops: RMSprop with momentum
is about a dozen elementwise ops (and passes over memory) per variable, SGD
with momentum about eight. TensorFlow has one kernel for each update
(`ResourceApplyRMSProp`, the one TF1's RMSPropOptimizer and Keras 2 ran;
`ResourceApplyKerasMomentum`) that reads and writes every tensor once, on
CPU, GPU and TPU (XLA): about 2.4x faster per update on CPU
(benchmarks/README.md, "Fast paths, one kernel at a time"), and the train
step's graph loses about 12 nodes per variable (faster tracing and
grappler at each progressive stage).

`FusedRMSprop` and `FusedSGD` are drop-in subclasses: same constructor,
slot variables (so checkpoints are interchangeable), config and math:

  RMSprop: ms = rho ms + (1 - rho) g^2; mom = momentum mom
           + lr g / sqrt(ms + epsilon); w -= mom
  SGD:     m = momentum m - lr g; w += m (nesterov: w += momentum m - lr g)

(the kernel updates ms as ms + (g^2 - ms)(1 - rho), equal up to rounding).
RMSprop without momentum (the digits demo's) still keeps a momentum slot
so that the kernel applies (mom = 0 mom + update: Keras' update); SGD
without momentum runs ApplyGradientDescent. They fall back to Keras'
update where no kernel applies: another backend, a non-float32 variable,
sparse (IndexedSlices) gradients or centered RMSprop.
"""

import keras
import tensorflow as tf


def _fusable(variable, gradient):
  return (keras.backend.backend() == "tensorflow"
          and tf.as_dtype(variable.dtype) == tf.float32
          and not isinstance(gradient, tf.IndexedSlices))


def _handle(variable):
  """The resource handle of a Keras or tf variable (inside a strategy's
  update() call, the current replica's component)."""
  if isinstance(variable, keras.Variable):
    variable = variable.value
  return variable.handle


@keras.saving.register_keras_serializable(package="effnetv2_tf")
class FusedRMSprop(keras.optimizers.RMSprop):
  """keras.optimizers.RMSprop updated by TensorFlow's ApplyRMSProp kernel."""

  def build(self, var_list):
    super().build(var_list)
    if not self.centered and not self._momentums:  # momentum 0
      self._momentums = self.add_optimizer_variables(var_list, "momentum")

  def update_step(self, gradient, variable, learning_rate):
    if self.centered or not _fusable(variable, gradient):
      return super().update_step(gradient, variable, learning_rate)
    index = self._get_variable_index(variable)
    tf.raw_ops.ResourceApplyRMSProp(
        var=_handle(variable), ms=_handle(self._velocities[index]),
        mom=_handle(self._momentums[index]),
        lr=tf.cast(learning_rate, tf.float32),
        rho=tf.constant(self.rho, tf.float32),
        momentum=tf.constant(self.momentum, tf.float32),
        epsilon=tf.constant(self.epsilon, tf.float32),
        grad=tf.cast(gradient, tf.float32))


@keras.saving.register_keras_serializable(package="effnetv2_tf")
class FusedSGD(keras.optimizers.SGD):
  """keras.optimizers.SGD updated by TensorFlow's ApplyKerasMomentum (or,
  without momentum, ApplyGradientDescent) kernel."""

  def update_step(self, gradient, variable, learning_rate):
    if not _fusable(variable, gradient):
      return super().update_step(gradient, variable, learning_rate)
    if not self.momentum:
      tf.raw_ops.ResourceApplyGradientDescent(
          var=_handle(variable), alpha=tf.cast(learning_rate, tf.float32),
          delta=tf.cast(gradient, tf.float32))
      return
    tf.raw_ops.ResourceApplyKerasMomentum(
        var=_handle(variable),
        accum=_handle(self.momentums[self._get_variable_index(variable)]),
        lr=tf.cast(learning_rate, tf.float32),
        grad=tf.cast(gradient, tf.float32),
        momentum=tf.constant(self.momentum, tf.float32),
        use_nesterov=self.nesterov)
