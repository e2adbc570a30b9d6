"""The paper's ImageNet recipe (EfficientNetV2 section 5.1) as one ConfigDict.

  python main.py --model=efficientnetv2-s --dataset_cfg=imagenet \
      --data_dir=gs://.../imagenet --model_dir=gs://.../run --use_tpu

Trains EfficientNetV2-S for 350 epochs at batch 4096 with 4 progressive
stages (paper Table 6); expected 83.9% top-1 (paper Table 7; TPUv3-32, about
a day). Fields left `None` (placeholders) take their value from the model's
registry entry or the progressive-learning preset; `effnetv2_tf.config`
fills them and locks the config.
"""

import dataclasses

import ml_collections
from ml_collections.config_dict import placeholder

from effnetv2_tf.data import recipes


def get_config():
  """Returns the base config: the paper's ImageNet-1k training recipe."""
  config = ml_collections.ConfigDict()
  config.model = dict(
      name="efficientnetv2-s",
      num_classes=1000,
      survival_prob=0.8,
      bn_momentum=0.9,   # Keras sense (reference code); the paper says 0.99
      bn_epsilon=1e-3,
      train_size=placeholder(int),  # default: registry train size, or
      eval_size=placeholder(int),   # default: registry eval size
      # int(eval_size * ratio) // 16 * 16 when set (reference main.py;
      # the finetune configs: 1.0).
      train_size_ratio=placeholder(float),
      # Architecture scaling overrides (tests and smoke runs use tiny ones).
      width_coefficient=placeholder(float),
      depth_coefficient=placeholder(float),
      # Block strings replacing the registry's, separated by spaces (an
      # architecture search's winner: effnetv2_tf.nas writes it).
      blocks=placeholder(str),
  )
  config.data = dict(
      name="imagenet",
      dataset_cfg="imagenet",  # the --dataset_cfg this config was built on
      source="tfrecord",   # tfrecord | tfds | folder | digits
      tfds_name="",
      tfds_train_split="train",
      data_dir=placeholder(str),
      multi_label=False,
      # Reference datasets.py: ImageNet trains on train files 20 onward
      # (1,256,144 images), 0-19 are 'minival'; 0 trains on all files (its
      # 'trainval'). 21k without validation files: files 0-15 are the eval
      # split (eval_files), then minival_files more are 'minival'.
      minival_files=20,
      # Digits: every Nth training digit is 'minival' (0: none), the
      # architecture search's hold-out; the 360 eval digits stay unseen.
      minival_every=0,
      eval_files=16,
      eval_split="validation",
      train_examples=placeholder(int),  # override the counted split sizes
      eval_examples=placeholder(int),
      augname=placeholder(str),         # default: registry augname
      num_layers=2,
      # The augmentation ops' arithmetic (effnetv2_tf.data.augment):
      # reference (the released code's ops, quirks included) | paper (PIL's
      # ops); default: progressive.preset's.
      augment_arithmetic=placeholder(str),
      # Pixel preprocessing (effnetv2_tf.data.recipes): a row name
      # (v2 | legacy | finetune; default: the model's) and every field of
      # a row (decode, input_scaling, crops, resize_method, random_flip,
      # cutout, eval crop), each filled from the row where unset.
      preprocessing=placeholder(str),
      **{field.name: placeholder(field.type)
         for field in dataclasses.fields(recipes.Preprocessing)},
      cache=False,
      shuffle_buffer=10_000,
  )
  config.train = dict(
      epochs=350.0,
      steps=placeholder(int),  # overrides epochs when set
      min_steps=0,             # finetuning: at least this many steps
      batch_size=4096,
      optimizer="rmsprop",     # or momentum, sgd, adam (optim.OPTIMIZERS)
      rmsprop_rho=0.9,
      momentum=0.9,
      epsilon=1e-3,
      fused_optimizer=True,    # TF's fused update kernels (fused_optim.py)
      lr_base=0.016,           # per 256 images, scaled with the batch
      lr_schedule="exponential",  # exponential | cosine | constant
      lr_decay_factor=0.97,
      lr_decay_epochs=2.4,
      warmup_epochs=5.0,
      weight_decay=1e-5,       # coupled L2 on kernels: wd * sum(w^2) / 2
      label_smoothing=0.1,
      ema_decay=0.9999,
      seed=0,
      keep_checkpoints=5,
      checkpoint_every=placeholder(int),  # steps; default: once per stage
      log_every=100,
  )
  config.progressive = dict(
      preset="paper",          # paper (Table 6) | reference (released code)
      num_stages=placeholder(int),  # default: the registry's (V1: 1)
      random_resize=False,     # paper Table 13: random size every K epochs
      random_resize_epochs=8.0,
      min_image_size=placeholder(int),
      max_image_size=placeholder(int),
      min_randaug=placeholder(float),
      max_randaug=placeholder(float),
      min_mixup=placeholder(float),
      max_mixup=placeholder(float),
      min_cutmix=placeholder(float),
      max_cutmix=placeholder(float),
      min_dropout=placeholder(float),
      max_dropout=placeholder(float),
  )
  config.eval = dict(
      batch_size=1024,
  )
  config.runtime = dict(
      steps_per_loop=100,
      mixed_precision=False,
      deterministic=False,
      # XLA-compiled train and eval steps; default (None): on under
      # TPUStrategy (where XLA is implied), off on CPU and GPU.
      jit_compile=placeholder(bool),
      # A new train step traced per progressive stage, with its static
      # image size; default (None): on wherever XLA compiles the step
      # (TPUStrategy, jit_compile), which needs static shapes; off on CPUs
      # and GPUs (also several mirrored replicas), where one step traced
      # with an unknown image size serves every stage
      # (benchmarks/polymorphic_step.py: the same step time).
      retrace_per_stage=placeholder(bool),
      # Replicas whose batch-norm statistics are pooled in training: 1 each
      # its own, k groups of k consecutive replicas (k divides the
      # replicas), 0 all; default (None): the reference's, groups of
      # min(8, replicas) under TPUStrategy, each replica its own elsewhere
      # (training/distribute.py resolve_bn_group_size).
      bn_group_size=placeholder(int),
  )
  return config
