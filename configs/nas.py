"""Search spaces of the training-aware NAS (EfficientNetV2 paper section 3.3).

The space is stage-wise factorized on a backbone (a registered model): per
stage the search picks the convolution type, the number of layers, the
kernel size and the expansion ratio; channel sizes and strides are the
backbone's (paper: "we reuse the channel sizes already searched in
EfficientNet"), and there are no pooling or skip-op choices. An MBConv stage
keeps the backbone's squeeze-excitation ratio; a Fused-MBConv stage has none,
as in every Fused stage of the searched EfficientNetV2 models (paper
Table 4). Every candidate is a tuple of block strings that
`create_model(backbone, blocks=...)` builds.

The reward is the paper's `A * S**w * P**v` (w = -0.07, v = -0.05), with the
step time S and the parameter count P normalised to the backbone's, measured
the same way, so the backbone scores its own accuracy.
"""

import ml_collections

CONV_TYPES = ("mbconv", "fused")


def _space(backbone, conv_types, num_layers, kernel_sizes, expand_ratios):
  return dict(backbone=backbone, conv_types=conv_types,
              num_layers=num_layers, kernel_sizes=kernel_sizes,
              expand_ratios=expand_ratios)


# Proxy training per space (paper: about 10 epochs at a reduced image size,
# accuracy on a minival split held out of the training set).
PROXIES = {
    # ImageNet: the reference's minival (train files 0-19, 25,000 images),
    # 128 px, 10 epochs.
    "paper": dict(dataset_cfg="imagenet", image_size=128, epochs=10.0,
                  hparams="data.minival_files=20"),
    # The digits: every 4th of the 1,437 training digits is minival (360),
    # 1,077 train; a quarter-width model at 32 px, 10 epochs of batch 64 at
    # the paper's 0.016 per 256 (the digits recipe's 0.004 is for 24
    # epochs; in 10 the backbone reached 21% minival top-1 with it, 58%
    # with 0.016, 20% with 0.064; 20 epochs at 0.016: 94%, too close to the
    # top to tell candidates apart; measured).
    "digits": dict(dataset_cfg="digits", image_size=32, epochs=10.0,
                   hparams="data.minival_every=4,model.width_coefficient=0.25,"
                   "train.warmup_epochs=1.0,train.lr_base=0.016"),
}

SPACES = {
    # Paper section 3.3 on the EfficientNet (B0) backbone: {MBConv,
    # Fused-MBConv}, kernel {3x3, 5x5}, expansion {1, 4, 6}. The paper gives
    # no layer range; 1-8 holds the searched base model's (1, 2, 2, 3, 5, 8).
    "paper": _space("efficientnet-b0", CONV_TYPES, (1, 2, 3, 4, 5, 6, 7, 8),
                    (3, 5), (1, 4, 6)),
    # The built-in demo on the digits: the EfficientNetV2-B0 backbone
    # (its six stages) at the smoke width, few layers.
    "digits": _space("efficientnetv2-b0", CONV_TYPES, (1, 2), (3, 5),
                     (1, 4)),
}


def get_config(space="digits"):
  """The search config: space, proxy training, reward, search size."""
  if space not in SPACES:
    raise ValueError(f"Unknown search space {space!r}; valid: "
                     f"{', '.join(SPACES)}.")
  config = ml_collections.ConfigDict()
  config.space = SPACES[space]
  # Each trial: one stage at the proxy size, no mixup/dropout growth, the
  # dataset config's recipe otherwise; `hparams` (`--hparam_str` syntax)
  # override it further.
  config.proxy = dict(PROXIES[space], steps=0, timing_steps=7)
  # The paper: w = -0.07 (step time), v = -0.05 (parameters).
  config.reward = dict(w=-0.07, v=-0.05)
  return config
