"""The paper's ImageNet recipe (EfficientNetV2 section 5.1) as one ConfigDict.

  python main.py --model=efficientnetv2-s --dataset_cfg=imagenet \
      --data_dir=gs://.../imagenet --model_dir=gs://.../run --use_tpu

Trains EfficientNetV2-S for 350 epochs at batch 4096 with 4 progressive
stages (paper Table 6); expected 83.9% top-1 (paper Table 7; TPUv3-32, about
a day). Every key is a `settings.Setting` defined beside the code that owns
it; `SECTIONS` gathers them. Keys whose default is None (placeholders) take
their value from the model's registry entry, its preprocessing row or the
progressive preset; `effnetv2_tf.config` fills them and locks the config.
"""

import ml_collections

from effnetv2_tf import settings
from effnetv2_tf.data import pipeline
from effnetv2_tf.data import preprocessing
from effnetv2_tf.data import sources
from effnetv2_tf.models import ema
from effnetv2_tf.models import options
from effnetv2_tf.training import distribute
from effnetv2_tf.training import finetune
from effnetv2_tf.training import optim
from effnetv2_tf.training import progressive
from effnetv2_tf.training import run_settings
from effnetv2_tf.training import xla

SECTIONS = {
    "model": options.SETTINGS,
    "data": sources.SETTINGS + pipeline.SETTINGS + preprocessing.SETTINGS,
    "train": (progressive.TRAIN_SETTINGS + optim.SETTINGS +
              pipeline.TRAIN_SETTINGS + ema.SETTINGS +
              run_settings.TRAIN_SETTINGS + finetune.SETTINGS),
    "progressive": progressive.SETTINGS,
    "eval": pipeline.EVAL_SETTINGS,
    "runtime": (run_settings.RUNTIME_SETTINGS + xla.SETTINGS +
                distribute.SETTINGS),
}


def get_config():
  """Returns the base config: the paper's ImageNet-1k training recipe."""
  return ml_collections.ConfigDict(
      {section: settings.section_defaults(keys)
       for section, keys in SECTIONS.items()})
