"""The reference's and the paper's recipe values, transcribed as data.

Read by `effnetv2_tf.tools.recipes_doc`, which compares them with ours
(read from the code) and writes docs/recipes.md. Every value names its
reference file (google/automl `efficientnetv2/`) or paper section (Tan &
Le 2021); what the reference computes (stage sizes, train sizes) was
computed by hand from its formulas, never from our code. DEVIATIONS says
why ours differs where it does.
"""

import dataclasses

PM, DASH = "per model", "—"


@dataclasses.dataclass(frozen=True)
class N:
  """A value with a note shown beside it (only the value is compared)."""
  value: object
  note: str = ""


FROM_DATA = N(None, "from the data at run time")  # None: not compared

# ------------------------------------------------------ reference: models
# effnetv2_configs.py efficientnetv2_params / efficientnetv1_params (V1:
# train.isize=0.8, hparams.py ram=15, mixup 0, stages=0). Train sizes by
# main.py's int(eval * isize) // 16 * 16 for isize <= 16 (V1 0.8, finetune
# 1.0: datasets.py ImagenetFt). V2 CutMix = mixup (cutmix_alpha=mix).
# name: (train, eval, finetune train, dropout, augname, ram, mixup, stages)
REF_MODELS = {
    "efficientnetv2-s": (300, 384, 384, 0.2, "randaug", 10, 0.0, 4),
    "efficientnetv2-m": (384, 480, 480, 0.3, "randaug", 15, 0.2, 4),
    "efficientnetv2-l": (384, 480, 480, 0.4, "randaug", 20, 0.5, 4),
    "efficientnetv2-xl": (384, 512, 512, 0.4, "randaug", 20, 0.5, 4),
    "efficientnetv2-b0": (192, 224, 224, 0.2, "effnetv1_autoaug", 0, 0.0, 4),
    "efficientnetv2-b1": (192, 240, 240, 0.2, "effnetv1_autoaug", 0, 0.0, 4),
    "efficientnetv2-b2": (208, 260, 256, 0.3, "effnetv1_autoaug", 0, 0.0, 4),
    "efficientnetv2-b3": (240, 300, 288, 0.3, "effnetv1_autoaug", 0, 0.0, 4),
    "efficientnet-b0": (176, 224, 224, 0.2, "effnetv1_autoaug", 15, 0.0, 0),
    "efficientnet-b1": (192, 240, 240, 0.2, "effnetv1_autoaug", 15, 0.0, 0),
    "efficientnet-b2": (208, 260, 256, 0.3, "effnetv1_autoaug", 15, 0.0, 0),
    "efficientnet-b3": (240, 300, 288, 0.3, "effnetv1_autoaug", 15, 0.0, 0),
    "efficientnet-b4": (304, 380, 368, 0.4, "effnetv1_autoaug", 15, 0.0, 0),
    "efficientnet-b5": (352, 456, 448, 0.4, "effnetv1_autoaug", 15, 0.0, 0),
    "efficientnet-b6": (416, 528, 528, 0.5, "effnetv1_autoaug", 15, 0.0, 0),
    "efficientnet-b7": (480, 600, 592, 0.5, "effnetv1_autoaug", 15, 0.0, 0),
}
# main.py / main_tf2.py stage loop (M = 4, ibase = 128): size
# int(128 + (train - 128) * (i + 1) / M), np.linspace(5, ram, M)[i],
# np.linspace(0, mixup, M)[i] (CutMix alike), the model's fixed dropout.
# B0-B3 run AutoAugment: their RandAugment (None here) is unused.
REF_STAGES = {  # name: (sizes, RandAugment, mixup)
    "efficientnetv2-s": ((171, 214, 257, 300), (5, 6.667, 8.333, 10),
                         (0, 0, 0, 0)),
    "efficientnetv2-m": ((192, 256, 320, 384), (5, 8.333, 11.667, 15),
                         (0, 0.06667, 0.1333, 0.2)),
    "efficientnetv2-l": ((192, 256, 320, 384), (5, 10, 15, 20),
                         (0, 0.1667, 0.3333, 0.5)),
    "efficientnetv2-xl": ((192, 256, 320, 384), (5, 10, 15, 20),
                          (0, 0.1667, 0.3333, 0.5)),
    "efficientnetv2-b0": ((144, 160, 176, 192), None, (0, 0, 0, 0)),
    "efficientnetv2-b1": ((144, 160, 176, 192), None, (0, 0, 0, 0)),
    "efficientnetv2-b2": ((148, 168, 188, 208), None, (0, 0, 0, 0)),
    "efficientnetv2-b3": ((156, 184, 212, 240), None, (0, 0, 0, 0)),
}
# preprocessing.py preprocess_image: augname -> (augmentation, pipeline).
REF_AUGNAMES = {"randaug": ("RandAugment", "v2"),
                "effnetv1_autoaug": ("AutoAugment v0", "legacy")}
# Paper Table 6: (min, max) of image size, RandAugment, mixup, dropout.
PAPER_TABLE6 = {
    "efficientnetv2-s": ((128, 300), (5, 15), (0, 0), (0.1, 0.3)),
    "efficientnetv2-m": ((128, 380), (5, 20), (0, 0.2), (0.1, 0.4)),
    "efficientnetv2-l": ((128, 380), (5, 25), (0, 0.4), (0.1, 0.5)),
}

# ---------------------------------------------------- reference: datasets
REF_COLUMNS = ("imagenet", "imagenet21k", "imagenetft", "cifar10ft",
               "cifar100ft", "flowersft", "carsft")  # datasets.py classes


def _ft(value):  # ImagenetFt, Cifar10Ft, Cifar100Ft, FlowersFt, CarsFt
  return (value,) * 5


def _tfds(name, *splits):  # (split, declared size) x (train, minival, eval)
  return tuple(N(f"TFDS {name} {s}", c) for s, c in zip(*[iter(splits)] * 2))


TF_TRAIN_FILES = "TFRecord train files"
_SPLITS = (  # (train, minival, eval) per REF_COLUMNS, declared num_images
    (N(f"{TF_TRAIN_FILES} 20 onward", "1,256,144"),
     N(f"{TF_TRAIN_FILES} 0-19", "25,021"),
     N("TFRecord validation files", "50,000")),
    (N(f"{TF_TRAIN_FILES} 20 onward", "12,720,275"),
     N(f"{TF_TRAIN_FILES} 16-19", "25,089"),
     N(f"{TF_TRAIN_FILES} 0-15", "100,357")),
    _tfds("imagenet2012", "train[:98%]", "1,256,144 declared", "train[2%:]",
          "25,021 declared", "validation", "50,000"),
    _tfds("cifar10", "train", "50,000", "test", "10,000", "test", "10,000"),
    _tfds("cifar100", "train", "50,000", "test", "10,000", "test", "10,000"),
    _tfds("oxford_flowers102", "train+validation", "1,020 declared",
          "validation", "1,020", "test", "6,149"),
    _tfds("cars196", "train", "8,144", "test", "8,041", "test", "8,041"))
# field: (file, value per REF_COLUMNS); hparams.py: what no config sets.
REFERENCE_DATASETS = {
    "train_size": ("effnetv2_configs.py; datasets.py isize", PM, 224,
                   *_ft(PM)),
    "eval_size": ("effnetv2_configs.py; datasets.py isize", PM, 224,
                  *_ft(PM)),
    "epochs": ("datasets.py", 350, 60, *_ft(15)),
    "min_steps": ("hparams.py; datasets.py", 0, 0, *_ft(10_000)),
    "batch_size": ("hparams.py; datasets.py", 4096, 4096, *_ft(512)),
    "lr_base": ("datasets.py", 0.016, 0.008, *_ft(0.0005)),
    "lr_batch": ("main.py: lr_base * batch / 256", 0.256, 0.128,
                 *_ft(0.001)),
    "lr_schedule": ("datasets.py; hparams.py lr_decay_*",
                    "exponential (0.97 every 2.4 epochs)", "cosine",
                    *_ft("constant")),
    "warmup_epochs": ("datasets.py", 5, 1, *_ft(1)),
    "optimizer": ("hparams.py; main_tf2.py build_tf2_optimizer",
                  *("rmsprop (rho 0.9, momentum 0.9, epsilon 0.001)",) * 7),
    "weight_decay": ("hparams.py; datasets.py", *(1e-5,) * 7),
    "ema_decay": ("hparams.py; datasets.py", 0.9999, 0.9999, *_ft(0.9996)),
    "label_smoothing": ("datasets.py", 0.1, 0.0, *_ft(0.1)),
    "survival_prob": ("hparams.py; datasets.py", 0.8, 1.0, *_ft(0.8)),
    "bn": ("hparams.py", *("momentum 0.9, epsilon 0.001",) * 7),
    "dropout": ("effnetv2_configs.py; datasets.py", PM, 1e-6, *_ft(1e-6)),
    "augmentation": ("effnetv2_configs.py; datasets.py augname", PM,
                     N("none", "None"), *_ft(N("cutout", "'ft'"))),
    "randaug": ("effnetv2_configs.py; datasets.py", PM, DASH, *_ft(DASH)),
    "mixup": ("effnetv2_configs.py; datasets.py", PM, 0.0, *_ft(0.0)),
    "cutmix": ("effnetv2_configs.py; datasets.py", PM, 0.0, *_ft(0.0)),
    "stages": ("effnetv2_configs.py; datasets.py", PM, N(1, "stages=0"),
               *_ft(N(1, "stages=0"))),
    "preprocessing": ("preprocessing.py preprocess_image", PM,
                      N("v2", "augname None"), *_ft(N("finetune", "'ft'"))),
    "num_classes": ("datasets.py", 1000, 21843, 1000, 10, 100, 102, 196),
    "targets": ("datasets.py; main.py model_fn", "one-hot",
                N("multi-hot, normalised to sum 1", "main_tf2.py: not "
                  "normalised"), *_ft("one-hot")),
    "train_split": ("datasets.py", *(s[0] for s in _SPLITS)),
    "minival_split": ("datasets.py", *(s[1] for s in _SPLITS)),
    "eval_split": ("datasets.py", *(s[2] for s in _SPLITS)),
    "eval_batch_size": ("hparams.py; datasets.py", 8, 128, *_ft(8)),
    "mixed_precision": ("hparams.py", *(True,) * 7),
}
# Paper, by section; "transfer": the four sets of 5.3. Absent: "—".
PAPER_DATASETS = {
    "epochs": {"imagenet": "350 (5.1)", "imagenet21k": "60 or 30 (5.2)",
               "imagenetft": "15 (5.2)", "transfer": "10,000 steps (5.3)"},
    "batch_size": {"imagenet": "4096 (5.1)", "transfer": "512 (5.3)"},
    "lr_batch": {"imagenet": "0 → 0.256 (5.1)", "transfer": "0.001 (5.3)"},
    "lr_schedule": {"imagenet": "exponential, 0.97 every 2.4 epochs (5.1)",
                    "imagenet21k": "cosine (5.2)", "imagenetft":
                    "cosine (5.2)", "transfer": "cosine (5.3)"},
    "optimizer": {"imagenet": "RMSProp, decay 0.9, momentum 0.9 (5.1)"},
    "weight_decay": {"imagenet": "1e-5 (5.1)", "transfer": "0 (5.3)"},
    "ema_decay": {"imagenet": "0.9999 (5.1)"},
    "survival_prob": {"imagenet": "0.8 (5.1)"},
    "bn": {"imagenet": "momentum 0.99 (5.1)"},
    "dropout": {"imagenet": "Table 6"}, "randaug": {"imagenet": "Table 6"},
    "mixup": {"imagenet": "Table 6"},
    "augmentation": {"imagenet": "RandAugment (5.1)",
                     "transfer": "cutout (5.3)"},
    "stages": {"imagenet": "4, about 87 epochs each (5.1)"},
    "num_classes": {"imagenet": "1000 (5.1)", "imagenet21k": "21,841 (5.2)"},
    "targets": {"imagenet21k": "normalised to sum 1 (5.2)"},
    "train_split": {"imagenet": "about 1.28M images (5.1)",
                    "imagenet21k": "about 13M images (5.2)"},
    "minival_split": {"imagenet": "25,000 train images, for the search (5.1)"},
    "eval_split": {"imagenet": "50,000 validation images (5.1)",
                   "imagenet21k": "100,000 random images held out (5.2)"},
}

# ----------------------------------------------- reference: preprocessing
CROP_FIELDS = ("crop_area_min", "crop_aspect_min", "crop_aspect_max",
               "crop_min_object_covered", "crop_max_attempts", "crop_fallback")
EVAL_CROP_FIELDS = ("crop_padding", "skip_crop_from_size", "crop_offset")
_V2_REF = {  # preprocessing.py preprocess_for_train / _eval: (value, where)
    "decode": ("whole", "L142 decode_image, then L38 / L68 slice"),
    "decode_reduced": (False, "L142 full scale"),
    "input_scaling": ("(x - 128) / 128", "L153"),
    "train_crop": (True, "L31-38 sample_distorted_bounding_box"),
    "crop_area_min": (0.05, "L35"), "crop_aspect_min": (0.75, "TF default"),
    "crop_aspect_max": (1.33, "TF default"),
    "crop_min_object_covered": (0.0, "L36, no boxes (L34)"),
    "crop_max_attempts": (100, "TF default"),
    "crop_fallback": ("whole", "L37 use_image_if_no_bounding_boxes"),
    "resize_method": ("bilinear", "L41 tf.image.resize"),
    "random_flip": (True, "L44"), "cutout": (False, ""),
    "eval_crop": (True, "L60"), "crop_padding": (32, "L64"),
    "skip_crop_from_size": (320, "L60 crop if size < 320"),
    "crop_offset": ("floor", "L67 (h - c) // 2"),
}
REF_PREPROCESSING = {  # row: (file, field: (value, where))
    "v2": ("preprocessing.py", _V2_REF),
    "legacy": ("preprocess_legacy.py", {
        "decode": ("fused", "L68, L125 decode_and_crop_jpeg"),
        "decode_reduced": (False, "L68, L125 full scale"),
        "input_scaling": ("(x / 255 - mean) / std; mean (0.485, 0.456, "
                          "0.406), std (0.229, 0.224, 0.225)", "L239-243"),
        "train_crop": (True, "L88-107"), "crop_area_min": (0.08, "L96"),
        "crop_aspect_min": (0.75, "L95"), "crop_aspect_max": (1.3333, "L95"),
        "crop_min_object_covered": (0.1, "L94, whole-image box L90"),
        "crop_max_attempts": (10, "L97"),
        "crop_fallback": ("center", "L100-105"),
        "resize_method": ("bicubic", "L85 TF1 resize_bicubic"),
        "random_flip": (True, "L132"), "cutout": (False, ""),
        "eval_crop": (True, "L197"), "crop_padding": (32, "L117"),
        "skip_crop_from_size": (0, "always crops"),
        "crop_offset": ("ceil", "L121 (h - c + 1) // 2")}),
    "finetune": ("preprocessing.py", {
        **_V2_REF,
        **dict.fromkeys(CROP_FIELDS + EVAL_CROP_FIELDS, (None, "no crop")),
        "decode": ("whole", "L142 decode_image"),
        "input_scaling": ("(x / 255 - 0.5) / 0.5", "L82-83"),
        "train_crop": (False, "L85 whole image resized"),
        "resize_method": ("bilinear", "L85"), "random_flip": (True, "L89"),
        "cutout": (True, "L102-106 'ft': pad size // 4, U[0, 1) fill"),
        "eval_crop": (False, "L85")}),
}
REF_AUGMENT = {  # autoaugment.py: field -> (value, where)
    "num_layers": (2, "hparams.py ra_num_layers"),
    "ops": (("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize",
             "Solarize", "Color", "Contrast", "Brightness", "Sharpness",
             "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout",
             "SolarizeAdd"), "available_ops"),
    "level": ("magnitude / 10", "_MAX_LEVEL"),
    "randaug_consts": ("translate 100, cutout 40", "randaugment params"),
    "autoaug_consts": ("translate 250, cutout 100", "autoaugment params"),
    "autoaug_policy": ("v0, 25 sub-policies", "policy_v0"),
    "arithmetic": ("reference", "L79-441 (the ops)"),
}

# ------------------------------------------------------------ deviations
# (id, from, keys, what, why); keys: fnmatch patterns of the difference keys
# an entry explains (none: not a table value, or a difference from the
# paper's text).
DEVIATIONS = (
    ("D1", "reference", ("imagenet/*/paper/*", "dataset/imagenet/cutmix"),
     "Default progressive preset `paper`: Algorithm 1 with Table 6, every "
     "value at i / (M - 1) from its min to its max, dropout ramped from 0.1, "
     "no CutMix (models outside Table 6: `progressive.preset_ranges`). "
     "`progressive.preset=reference` reproduces the released code's stages.",
     "The project reproduces the paper's method (configs/base.py), which "
     "uses no CutMix; both presets are kept."),
    ("D2", "reference", ("dataset/imagenet21k/dropout", "dataset/*ft/dropout"),
     "Dropout 0 in the ImageNet-21k and finetune configs, where the "
     "reference writes 1e-6.",
     "1e-6 is dropout in name only (one activation in a million); 0 says "
     "what is meant."),
    ("D3", "reference", ("dataset/imagenetft/*_split",),
     "`imagenetft` reads the ImageNet TFRecords with files 0-19 held out "
     "(1,256,144 train images); the reference's ImagenetFt reads TFDS "
     "imagenet2012 train[:98%].",
     "One copy of ImageNet, read as `imagenet` reads it, with the images the "
     "reference declares: its train[:98%] is about 1,255,544 images, and its "
     "minival train[2%:] overlaps it."),
    ("D4", "reference", ("dataset/c*ft/minival_split",
                         "dataset/flowersft/minival_split"),
     "The TFDS configs define no minival split.",
     "The reference's is no held-out set: the test split (its eval split) "
     "for CIFAR and Cars, the validation split it trains on for Flowers."),
    ("D5", "reference", ("dataset/*/eval_batch_size",),
     "Eval batch size 1024 (reference 8; ImageNet-21k 128).",
     "Evaluation pads the last batch and masks the padding, so results do "
     "not depend on it (the reference's images // batch eval steps leave "
     "100,357 % 128 = 5 ImageNet-21k images out)."),
    ("D6", "reference", ("dataset/*/mixed_precision",),
     "Mixed precision off by default (reference runtime.mixed_precision="
     "True); `--mixed_precision` turns it on.",
     "Opt-in: float32 is the same math on CPU, GPU and TPU; float16 on GPUs "
     "needs loss scaling."),
    ("D7", "reference", (),
     "Step counts as main_tf2.py: images // batch steps per epoch, N = "
     "epochs times that (main.py: images / batch, ImageNet N 107,336 not "
     "107,100), decay every int(2.4 epochs) steps (main_tf2.py: 734.4). "
     "Stages: N // M steps each, the remainder to the last (the Keras "
     "driver: whole epochs); main_tf2.py int(ratio * epochs) epochs, "
     "main.py int(ratio * train_steps) steps.",
     "Whole-step schedules, one rule for both drivers and any run length; "
     "stage boundaries move by less than one epoch."),
    ("D8", "reference", ("augment/arithmetic",),
     "Augmentation ops in the `paper` arithmetic by default "
     "(`data.augment_arithmetic`, default: the progressive preset's); "
     "`reference` (the default under `progressive.preset=reference`) "
     "computes every op as the reference does, quirks included. Five ops "
     "differ; one pixel each, the reference's value first. Solarize: the "
     "threshold int(m / 10 * 256) wraps to uint8 (L511, L177), so m = 10 "
     "and 20 invert every pixel and m = 15 thresholds at 128: pixel 200 at "
     "m = 15 gives 55, paper 200 (threshold 256 and above inverts nothing). "
     "Posterize: 0 bits (m = 2; AutoAugment's (Posterize, 0.8, 2)) and 9 "
     "or 10 bits (m = 23-25) keep the top bit (the uint8 shift clamped to "
     "7, L221-222): pixel 200 gives 128, paper 0 at 0 bits and 200 above "
     "8. Contrast blends towards the pixel count / 256 (L205-209), not the "
     "mean grey: a flat 100 at 224 x 224, m = 0, gives 186, paper 100. "
     "Sharpness: the float32 smoothing lands one lower at some multiples "
     "of 13 (L330-339): a flat area of 3s at m = 0 gives 2, paper 3. "
     "AutoContrast: float32 x * scale + offset (L305-309): a channel "
     "spanning 0..7 maps 7 to 254, paper 255.",
     "`paper` computes the ops as PIL defines them, without the "
     "reference's uint8 wrap, histogram-sum slip and float rounding; "
     "`reference` is kept because the published models were trained with "
     "it."),
    ("D9", "reference", (),
     "Random ops are stateless and seeded; the reference's are stateful.",
     "The same seed gives the same images, eagerly and inside tf.data."),
    ("D10", "reference", (),
     "Split sizes are counted from the data; the reference declares "
     "num_images, 1,020 for Flowers' train+validation (2,040 images).",
     "The data is the authority on its size. Both train 10,000 steps "
     "(min_steps); ours warms up over 3 steps, the reference over 1."),
    ("D11", "reference", (),
     "`folder`, `folderft`, `digits` and `smoke` (digits with a tiny "
     "model) are ours only.",
     "The reference reads TFRecords and TFDS only."),
    ("D12", "paper", (),
     "BN momentum 0.9 (reference hparams.py, Keras BatchNormalization); the "
     "paper's text says 0.99.", "We follow the reference code."),
    ("D13", "paper", (),
     "Finetuning: constant learning rate, weight decay 1e-5 (reference "
     "ImagenetFt), where the paper says cosine decay (5.2, 5.3) and no "
     "weight decay (5.3); ImageNet-21k: 21,843 classes, the paper 21,841.",
     "Dataset configs take the reference's values (configs/datasets.py)."),
    ("D14", "reference", (),
     "CutMix weights each example's label by its own pasted area, and the "
     "box is rounded from float centre and side; the reference weights the "
     "whole batch by the mean pasted area of all its masks and cuts integer "
     "boxes (datasets.py cutmix_mask / cutmix).",
     "The label then says what the image holds, per example (the CutMix "
     "paper's rule); the box geometry differs by at most a pixel per side."),
    ("D15", "reference", (),
     "`folderft` is the reference's finetune recipe (ImagenetFt) at batch "
     "64 (reference 512) and without its 10,000-step minimum.",
     "Own folders are small: 10,000 steps would be about 450 epochs of "
     "1,437 images, and batch 512 more than a folder of a few hundred "
     "images holds; 15 epochs with the 1-epoch warmup stay the recipe's."),
    ("D16", "reference", (),
     "A fused decode (the legacy row) decodes a non-JPEG image (PNG, GIF, "
     "BMP) whole and slices its crop; the reference's preprocess_legacy.py "
     "reads every image with extract_jpeg_shape and decode_and_crop_jpeg "
     "(L53, L68, L112, L125), which take JPEG only.",
     "Image folders may hold other formats; for a lossless one the slice "
     "has the pixels a fused decode would."),
    ("D17", "reference", (),
     "V1 models (efficientnet-b0..b7) round channel counts with the "
     "original EfficientNet's rule: a count rounded down by more than 10% "
     "gets one more divisor (efficientdet/backbone/efficientnet_model.py "
     "L139-141, keras.applications' round_filters); effnetv2_model.py "
     "L84-95 has no such rule. Only B3 changes: its first block outputs 24 "
     "channels, not 16 (12,320,528 parameters, not 12,314,268).",
     "Every published V1 checkpoint (keras.applications' files, ckptsaug, "
     "AdvProp, Noisy Student) was trained with the original rule, so "
     "efficientnet-b3 loads them only with it."),
    ("D18", "reference", (),
     "Batch norm over replica groups (runtime.bn_group_size; default the "
     "reference's: min(8, replicas) under TPUStrategy, each replica its own "
     "elsewhere) normalises with the statistics of the group's examples "
     "pooled, each replica weighted by its example count; the reference's "
     "TpuBatchNormalization (utils.py L193-199) averages the replicas' "
     "moments with equal weights.",
     "The same for equal per-replica batches, which every training batch "
     "here is (the global batch divides by the replicas, drop_remainder); "
     "with unequal ones (a caller's own strategy.run) they stay the group's "
     "batch statistics."),
    ("D19", "reference", (),
     "Optimizers by the reference's names (sgd: plain gradient descent; "
     "momentum: not Nesterov), with Keras' update for both drivers: "
     "momentum m = 0.9 m - lr g, w += m (main_tf2.py's SGD); main.py's TF1 "
     "MomentumOptimizer keeps a = 0.9 a + g, w -= lr a. Adam's epsilon is "
     "Keras' 1e-7 (main_tf2.py); main.py's TF1 AdamOptimizer has 1e-8.",
     "One optimizer for both drivers. The two momentum forms are equal "
     "under a constant learning rate; under a decaying one the TF1 form "
     "scales past gradients by the current rate."),
    ("D20", "reference", (),
     "ImageNet-21k eval scores acc_top1 and acc_top5 (the lowest-index "
     "label) and precision@1 (any label) as main.py L262-283; its "
     "precision@5, recall@1, recall@5 and global AP are not computed.",
     "The top-1 and top-5 scores are counted on device over padded, masked "
     "batches; the others need label sets or a PR curve and are left out."),
    ("D21", "reference", (),
     "`train.optimizer=adamw` (Keras' AdamW: decoupled weight decay w -= "
     "lr * train.weight_decay * w on kernels only, in place of the coupled "
     "L2 term; epsilon 1e-8, PyTorch's) and `train.layer_decay` (timm's "
     "layer-wise learning-rate decay: stem 0, blocks 1..N, head N + 1, "
     "layer i at lr * layer_decay ** (N + 1 - i), AdamW's decay at the "
     "same rate) are ours; the reference (utils.py build_optimizer "
     "L146-170) has sgd, momentum, rmsprop and adam, one learning rate.",
     "Finetuning recipes from timm onwards use AdamW with layer decay; both "
     "are off by default (rmsprop, layer_decay 1), so the reference's "
     "recipes are unchanged."),
    ("D22", "reference", (),
     "Keep-best: `train.keep_best` with an evaluation cadence "
     "(`train.eval_every_steps` / `eval_every_epochs`) or stage-end "
     "evaluations, in the training process, keeps the best eval/acc_top1 "
     "checkpoint in best/ with best.json (step, metric, score); off by "
     "default except in folderft. The reference's main.py evaluates every "
     "saved checkpoint in a separate --mode=eval job "
     "(tf.train.checkpoints_iterator, L390-406) and, with --archive_ckpt "
     "(default on), copies the best into archive/ with best_objective.txt "
     "and best_eval.txt (utils.py archive_ckpt L236-278); a tie keeps the "
     "later in both.",
     "One process does it on a single machine, with a cadence one chooses; "
     "off by default so the reference-recipe configs spend no time on "
     "evaluations they did not ask for (an ImageNet eval is 50,000 "
     "images). folderft turns it on: small folders finetune in minutes and "
     "overfit."),
    ("D23", "reference", (),
     "A frozen-backbone phase (`train.freeze_steps` / `freeze_epochs`: "
     "the classifier alone on the backbone in inference mode, then the "
     "whole network) is ours, on in folderft for its first epoch; the "
     "reference finetunes the whole network from the first step.",
     "Keras' transfer-learning recipe for small datasets, where a random "
     "head's first gradients would otherwise reach pretrained features; "
     "the reference's *ft configs keep it off."),
    ("D24", "reference", (),
     "Gradient accumulation (`train.grad_accum_steps` K, ours; off by "
     "default): each step runs its per-replica batch as K micro-batches in "
     "a tf.while_loop and applies their summed gradient once, so the "
     "update, learning rate, EMA and step count are those of the whole "
     "batch. Batch norm normalizes each micro-batch with that micro-batch's "
     "statistics (the reference: the per-replica batch's, or a group's on "
     "TPUs); the moving statistics move once per step towards the "
     "micro-batches' pooled moments, the per-replica batch's. It needs "
     "batch norm per replica (runtime.bn_group_size=1).",
     "Runs the batch-4096 recipes on fewer devices; tf.distribute refuses "
     "an all-reduce inside the loop, hence per-replica batch norm and the "
     "moving statistics moved after it."),
    ("D25", "reference", (),
     "Recomputation (`train.recompute`, ours; off by default) recomputes "
     "the stem's and each block's activations in the backward pass: the "
     "same values, gradients, stochastic-depth masks and moving "
     "statistics as the plain step, in float rounding.",
     "Less activation memory for bigger images or batches on small "
     "devices; costs about one more forward pass."),
)
