"""Named dataset configs (`--dataset_cfg`), as overrides of `configs.base`.

Each entry is a nested dict applied on top of the base recipe, so a dataset
config only states what differs from the paper's ImageNet recipe.
Values from the reference code (google/automl efficientnetv2, datasets.py)
unless noted; paper sections 5.1 (ImageNet), 5.2 (ImageNet-21k) and 5.3
(transfer learning).
"""

# 21k -> 1k and transfer finetuning (reference ImagenetFt and its
# subclasses): little regularization, few steps, one stage at the eval size
# rounded down to 16, the finetune preprocessing for every model. Dropout
# 0 where the reference writes 1e-6.
_FINETUNE = {
    "model": {"survival_prob": 0.8, "train_size_ratio": 1.0},
    "data": {"augname": "", "preprocessing": "finetune"},
    "train": {"epochs": 15.0, "batch_size": 512, "lr_base": 0.0005,
              "lr_schedule": "constant", "warmup_epochs": 1.0,
              "ema_decay": 0.9996, "min_steps": 10_000},
    "progressive": {"num_stages": 1, "max_mixup": 0.0, "max_cutmix": 0.0,
                    "max_dropout": 0.0, "max_randaug": 0.0},
}


def _tfds(tfds_name, **data):
  return {"data": {"dataset": tfds_name, "source": "tfds",
                   "tfds_name": tfds_name, **data}}


def _merge(*dicts):
  """Deep merge, later dicts win."""
  out = {}
  for d in dicts:
    for key, value in d.items():
      if isinstance(value, dict) and isinstance(out.get(key), dict):
        out[key] = _merge(out[key], value)
      else:
        out[key] = value
  return out


# The built-in demo: scikit-learn's 1797 real handwritten digits at 32 px,
# upscaled per stage; efficientnetv2-b0 trains through 4 stages on 2 CPU
# cores in minutes. Each choice below was measured (benchmarks/README.md,
# "Digits recipe").
_DIGITS = {
    # Evaluated at the last stage's size: a larger eval size loses on
    # these tiny images.
    "model": {"num_classes": 10, "train_size": 56, "eval_size": 56},
    # The whole digit is the object: no eval crop (crop_padding 0). No
    # flips: a mirrored digit is another glyph. No RandAugment: its
    # pixel-absolute translate (100 px) and cutout (40 px) constants push a
    # 32-56 px digit out of the frame, and posterize and solarize blank it
    # at low magnitudes; stages grow mixup and dropout instead.
    "data": {"dataset": "digits", "source": "digits", "augname": "",
             "crop_area_min": 0.5, "crop_padding": 0, "cache": True,
             "random_flip": False, "shuffle_buffer": 2048},
    # From scratch on 1437 images the ImageNet rate (0.016 per 256)
    # diverges early; 0.004 per 256 trains. RMSProp with Keras' defaults
    # (epsilon 1e-7, no momentum) trains better here than the paper's.
    "train": {"epochs": 24.0, "batch_size": 64, "lr_base": 0.004,
              "epsilon": 1e-7, "momentum": 0.0,
              "warmup_epochs": 2.0, "ema_decay": 0.99,
              "label_smoothing": 0.1, "log_every": 44},
    "progressive": {"min_image_size": 32, "max_image_size": 56,
                    "min_randaug": 0.0, "max_randaug": 0.0,
                    "min_mixup": 0.0, "max_mixup": 0.2,
                    "min_dropout": 0.05, "max_dropout": 0.3},
    "eval": {"batch_size": 120},
    "runtime": {"steps_per_loop": 11},
}

DATASET_CONFIGS = {
    "imagenet": {},
    # Section 5.2: 60 epochs, cosine, lr 0.008 per 256, multi-label targets,
    # no augmentation, mixup or stages; fixed 224 px; the V2 preprocessing
    # ((x - 128) / 128) for every model, B0-B3 included (reference
    # ImageNet21k: augname None takes preprocessing.py's non-ft branch).
    "imagenet21k": {
        "model": {"num_classes": 21843, "survival_prob": 1.0,
                  "train_size": 224, "eval_size": 224},
        "data": {"dataset": "imagenet21k", "multi_label": True, "augname": "",
                 "preprocessing": "v2", "minival_files": 4},
        "train": {"epochs": 60.0, "lr_base": 0.008, "lr_schedule": "cosine",
                  "warmup_epochs": 1.0, "label_smoothing": 0.0},
        "progressive": {"num_stages": 1, "max_mixup": 0.0, "max_cutmix": 0.0,
                        "max_dropout": 0.0, "max_randaug": 0.0},
    },
    "imagenetft": _merge(_FINETUNE, {"data": {"dataset": "imagenet"}}),
    "cifar10ft": _merge(_FINETUNE, _tfds("cifar10")),
    "cifar100ft": _merge(_FINETUNE, _tfds("cifar100")),
    # Reference FlowersInput: trains on train+validation (2,040 images).
    "flowersft": _merge(_FINETUNE, _tfds("oxford_flowers102",
                                         tfds_train_split="train+validation")),
    "carsft": _merge(_FINETUNE, _tfds("cars196")),
    # root/<class>/*.jpg at --data_dir; the class count comes from the folders.
    "folder": {"data": {"dataset": "folder", "source": "folder"}},
    # Finetuning on one's own folder (with --init_checkpoint): the
    # reference's finetune recipe at a batch and length that fit a small
    # dataset: batch 64, 15 epochs without the 10,000-step minimum (which
    # would be about 450 epochs of 1,437 images), the 1-epoch warmup.
    "folderft": _merge(_FINETUNE, {
        "data": {"dataset": "folder", "source": "folder"},
        "train": {"batch_size": 64, "min_steps": 0,
                  # Keras' two-phase transfer recipe: the head alone for
                  # an epoch, then everything; the best eval kept in best/
                  # (dropped where the command cannot run them:
                  # finetune.drop_unusable).
                  "freeze_epochs": 1.0, "eval_every_epochs": 1.0,
                  "keep_best": True},
        "eval": {"batch_size": 64},
    }),
    "digits": _DIGITS,
    # The digits demo in seconds, for tests and a first look (big_vision's
    # `runlocal`): a B0-shaped model at width 0.25 and depth 0.34, two
    # stages of 16 and 24 px at batch 16. Tests add what each one needs
    # (`train.steps=6`, ...) with --hparam_str.
    "smoke": _merge(_DIGITS, {
        "model": {"width_coefficient": 0.25, "depth_coefficient": 0.34,
                  "eval_size": 24},
        "data": {"shuffle_buffer": 64},
        "train": {"batch_size": 16},
        "progressive": {"num_stages": 2, "min_image_size": 16,
                        "max_image_size": 24},
        "eval": {"batch_size": 60},
    }),
}


def get_dataset_config(name):
  """Returns the override dict of a named dataset config (case-insensitive).

  Raises:
    ValueError: for an unknown name, listing the valid ones.
  """
  key = name.lower()
  if key not in DATASET_CONFIGS:
    raise ValueError(f"Unknown dataset config {name!r}; valid: "
                     f"{', '.join(sorted(DATASET_CONFIGS))}.")
  return DATASET_CONFIGS[key]
