"""Batch norm folded into convolutions: same logits, no batch norm left."""

import keras
import numpy as np
import pytest

from effnetv2_tf.models import fold_bn

from conftest import tiny_model


def _with_statistics(model, seed=0):
  """`model` with batch norms far from the identity (random statistics,
  scale and shift), so a fold that got one wrong shows in the logits."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.set_weights([rng.uniform(0.5, 1.5, n), rng.uniform(-0.2, 0.2, n),
                         rng.uniform(-0.2, 0.2, n), rng.uniform(0.5, 2.0, n)])
  return model


@pytest.mark.parametrize("name", ["efficientnetv2-b0", "efficientnet-b0"])
def test_folded_model_gives_the_same_logits(name):
  model = _with_statistics(tiny_model(name, bn_fused=True))
  folded = fold_bn.fold_batch_norms(model)
  images = np.random.default_rng(1).uniform(-1, 1, (4, 48, 48, 3)).astype(
      np.float32)
  expected = model(images, training=False).numpy()
  got = folded(images, training=False).numpy()
  # float32 rounding of a kernel scaled before (not after) the sum; the
  # logits are O(1).
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
  assert not [l for l in folded.layers
              if isinstance(l, keras.layers.BatchNormalization)]
  # Every batch norm of this network follows a convolution, and each
  # folded convolution gained exactly its bias: out channels more weights.
  bns = [l for l in model.layers
         if isinstance(l, keras.layers.BatchNormalization)]
  assert len(fold_bn.fold_pairs(model)) == len(bns)
  gained = sum(l.gamma.shape[0] for l in bns)
  lost = sum(4 * l.gamma.shape[0] for l in bns)
  assert folded.count_params() == model.count_params() - lost + gained
  assert [l.name for l in folded.layers] == [l.name for l in model.layers]


def test_by_hand_on_one_depthwise_channel():
  inputs = keras.Input((3, 3, 2))
  x = keras.layers.DepthwiseConv2D(1, use_bias=False, name="a_dwconv")(inputs)
  x = keras.layers.BatchNormalization(epsilon=0.0, name="a_bn")(x)
  model = keras.Model(inputs, x)
  model.get_layer("a_dwconv").set_weights([np.array([[[[2.0], [3.0]]]])])
  # channel 0: gamma 4, beta 1, mean 0.5, var 16 -> scale 4/4 = 1,
  # bias 1 - 0.5 * 1 = 0.5; channel 1: gamma 1, beta -1, mean 2, var 4 ->
  # scale 1/2, bias -1 - 2 * 1/2 = -2.
  model.get_layer("a_bn").set_weights([np.array([4.0, 1.0]),
                                       np.array([1.0, -1.0]),
                                       np.array([0.5, 2.0]),
                                       np.array([16.0, 4.0])])
  kernel, bias = fold_bn.folded_weights(model.get_layer("a_dwconv"),
                                        model.get_layer("a_bn"))
  np.testing.assert_allclose(kernel.reshape(-1), [2.0, 1.5])
  np.testing.assert_allclose(bias, [0.5, -2.0])


def test_training_a_folded_model_is_refused():
  folded = fold_bn.fold_batch_norms(tiny_model("efficientnetv2-b0"))
  images = np.zeros((4, 48, 48, 3), np.float32)
  assert folded(images, training=False).shape[0] == 4  # inference: fine
  folded.compile(optimizer="sgd", loss="categorical_crossentropy")
  with pytest.raises(fold_bn.FoldedModelError,
                     match="folded into its convolutions for inference"):
    folded.fit(images, np.eye(folded.output_shape[-1])[:4], verbose=0)


def test_a_folded_keras_file_is_refused_as_init_checkpoint(tmp_path):
  from effnetv2_tf.runs import checkpoints  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "folded.keras")
  fold_bn.fold_batch_norms(tiny_model("efficientnetv2-b0")).save(path)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match="batch norms are folded"):
    checkpoints.init_from(tiny_model("efficientnetv2-b0"), path)
