"""Writes docs/recipes.md: every training and eval value of every model and
dataset config, ours beside the reference code's and the paper's.

  python -m effnetv2_tf.tools.recipes_doc          # rewrites docs/recipes.md
  python -m effnetv2_tf.tools.recipes_doc --check  # exit 1 + diff when stale

Ours is read from the code (`config.build_config`, `progressive.plan_stages`,
`data.preprocessing`, `data.augment`). The reference (google/automl
`efficientnetv2/`) and the paper (Tan & Le 2021) are transcribed below as
data, each value with its file or section; what the reference computes (stage
sizes, train sizes) was computed by hand from its formulas, never from ours.
`render()` compares ours with the reference and raises UndocumentedDifference
for a difference no DEVIATIONS entry covers, StaleDeviation for an entry
whose keys cover none.
"""

from effnetv2_tf import startup

# Run as a program, start up before the imports below load TensorFlow
# (see startup); imported as a module, this changes nothing.
if __name__ == "__main__":
  startup.start()

# pylint: disable=g-import-not-at-top,wrong-import-position
import difflib
import fnmatch
import functools
import math
import os
import sys

from absl import app
from absl import flags

from configs import datasets as dataset_configs
from effnetv2_tf import config as config_lib
from effnetv2_tf import errors
from effnetv2_tf.data import augment
from effnetv2_tf.data import preprocessing
from effnetv2_tf.data import sources
from effnetv2_tf.models import registry
from effnetv2_tf.tools import recipes_reference as tables
from effnetv2_tf.training import progressive

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "docs", "recipes.md")
STEPS = 1000  # any run length: stage values do not depend on it


class UndocumentedDifference(errors.UserError, ValueError):
  """Ours differs from the reference and no DEVIATIONS entry says why."""


class StaleDeviation(errors.UserError, ValueError):
  """A DEVIATIONS entry whose keys match no difference."""


# ------------------------------------------------------------------ ours
@functools.lru_cache(maxsize=None)
def _run(model, dataset, preset="paper"):
  config = config_lib.build_config(model, dataset,
                                   f"progressive.preset={preset}")
  return config, tuple(progressive.plan_stages(config, STEPS))


def _aug(c):
  aug = {"randaug": "RandAugment", "autoaug": "AutoAugment v0",
         "": "none"}[c.data.augname]
  if c.data.cutout:
    aug = "cutout" if aug == "none" else f"{aug} + cutout"
  return aug


def _randaug(c, stage):
  return stage.randaug_magnitude if c.data.augname == "randaug" else tables.DASH


def _schedule(t):
  if t.lr_schedule != "exponential":
    return t.lr_schedule
  return f"exponential ({t.lr_decay_factor:g} every {t.lr_decay_epochs:g} " \
         "epochs)"


def _splits(d):
  """(train, minival, eval) as sources.py reads them."""
  if d.source == "tfds":
    evals = sources.TFDS_EVAL_SPLITS.get(d.tfds_name, "test")
    return (f"TFDS {d.tfds_name} {d.tfds_train_split}", tables.DASH,
            f"TFDS {d.tfds_name} {evals}")
  if d.source != "tfrecord":
    return f"{d.source} source", tables.DASH, f"{d.source} source"
  first = d.eval_files if d.multi_label else 0
  start = first + d.minival_files
  files = tables.TF_TRAIN_FILES
  minival = f"{files} {first}-{start - 1}" if d.minival_files else tables.DASH
  evals = (tables.N(f"{files} 0-{first - 1}", "without validation-* files")
           if d.multi_label else "TFRecord validation files")
  return f"{tables.TF_TRAIN_FILES} {start} onward", minival, evals


OURS = {  # field: (label, value of (config, stages))
    "train_size": ("Train size (last stage)", lambda c, s: s[-1].image_size),
    "eval_size": ("Eval size", lambda c, s: c.model.eval_size),
    "epochs": ("Epochs", lambda c, s: c.train.epochs),
    "min_steps": ("Min steps", lambda c, s: c.train.min_steps),
    "batch_size": ("Batch size", lambda c, s: c.train.batch_size),
    "lr_base": ("LR per 256 images", lambda c, s: c.train.lr_base),
    "lr_batch": ("LR at the batch",
                 lambda c, s: c.train.lr_base * c.train.batch_size / 256),
    "lr_schedule": ("LR schedule", lambda c, s: _schedule(c.train)),
    "warmup_epochs": ("Warmup epochs", lambda c, s: c.train.warmup_epochs),
    "optimizer": ("Optimizer", lambda c, s: (
        f"{c.train.optimizer} (rho {c.train.rmsprop_rho:g}, momentum "
        f"{c.train.momentum:g}, epsilon {c.train.epsilon:g})")),
    "weight_decay": ("Weight decay", lambda c, s: c.train.weight_decay),
    "ema_decay": ("EMA decay", lambda c, s: c.train.ema_decay),
    "label_smoothing": ("Label smoothing",
                        lambda c, s: c.train.label_smoothing),
    "survival_prob": ("Survival prob.", lambda c, s: c.model.survival_prob),
    "bn": ("BatchNorm", lambda c, s: f"momentum {c.model.bn_momentum:g}, "
                                     f"epsilon {c.model.bn_epsilon:g}"),
    "dropout": ("Dropout (last stage)", lambda c, s: s[-1].dropout),
    "augmentation": ("Augmentation", lambda c, s: _aug(c)),
    "randaug": ("RandAugment (last stage)", lambda c, s: _randaug(c, s[-1])),
    "mixup": ("Mixup (last stage)", lambda c, s: s[-1].mixup_alpha),
    "cutmix": ("CutMix (last stage)", lambda c, s: s[-1].cutmix_alpha),
    "stages": ("Stages", lambda c, s: c.progressive.num_stages),
    "preprocessing": ("Preprocessing row", lambda c, s: c.data.preprocessing),
    "num_classes": ("Classes", lambda c, s: c.model.num_classes
                    if c.data.source == "tfrecord" else tables.FROM_DATA),
    "targets": ("Targets", lambda c, s: "multi-hot, normalised to sum 1"
                if c.data.multi_label else "one-hot"),
    "train_split": ("Train split", lambda c, s: _splits(c.data)[0]),
    "minival_split": ("Minival split", lambda c, s: _splits(c.data)[1]),
    "eval_split": ("Eval split", lambda c, s: _splits(c.data)[2]),
    "eval_batch_size": ("Eval batch size", lambda c, s: c.eval.batch_size),
    "mixed_precision": ("Mixed precision",
                        lambda c, s: c.runtime.mixed_precision),
}


# ------------------------------------------------------- compare, format
def _fmt(value):
  if isinstance(value, tables.N):
    text = "" if value.value is None else _fmt(value.value)
    return f"{text} ({value.note})" if text and value.note else (
        text or value.note)
  if value is None:
    return tables.DASH
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
    value = int(value)
  if isinstance(value, int):
    return f"{value:,}" if abs(value) >= 10_000 else str(value)
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, (tuple, list)):
    return ", ".join(map(_fmt, value))
  return str(value)


def _same(a, b):
  """Equal to display precision; None (not comparable) equals anything."""
  a, b = (v.value if isinstance(v, tables.N) else v for v in (a, b))
  if a is None or b is None:
    return True
  if all(isinstance(v, (int, float)) and not isinstance(v, bool)
         for v in (a, b)):
    return math.isclose(a, b, rel_tol=5e-4, abs_tol=1e-12)
  return _fmt(a) == _fmt(b)


class _Checker:
  """Collects ours-vs-reference differences and the entries covering them."""

  def __init__(self, deviations):
    self.deviations, self.diffs = deviations, []

  def mark(self, key, ours, ref):
    """'' when equal, else the covering deviation ids (or UNDOCUMENTED)."""
    if _same(ours, ref):
      return ""
    ids = [d[0] for d in self.deviations
           if any(fnmatch.fnmatchcase(key, p) for p in d[2])]
    self.diffs.append((key, ours, ref, ids))
    return ", ".join(ids) or "UNDOCUMENTED"

  def verify(self):
    missing = [f"{key}: ours {_fmt(o)}, reference {_fmt(r)}"
               for key, o, r, ids in self.diffs if not ids]
    if missing:
      raise UndocumentedDifference(
          "Differences from the reference without a DEVIATIONS entry:\n  "
          + "\n  ".join(missing))
    used = {i for *_, ids in self.diffs for i in ids}
    stale = [d[0] for d in self.deviations if d[2] and d[0] not in used]
    if stale:
      raise StaleDeviation(f"DEVIATIONS {', '.join(stale)} cover no "
                           "difference; update or remove them.")

  def count(self, dev_id):
    return sum(dev_id in ids for *_, ids in self.diffs) or tables.DASH


def _table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows] + [""]


def _joined(marks):
  ids = {i for m in marks if m for i in m.split(", ")}
  return ", ".join(sorted(ids, key=lambda i: (len(i), i)))


# --------------------------------------------------------------- sections
INTRO = """# Training and eval recipes: ours, the reference's, the paper's

## 1. How to read and regenerate

Generated by `python -m effnetv2_tf.tools.recipes_doc` from the code; do not
edit by hand (`tests/test_recipes_doc.py` fails when this file is stale).
**Ours** is read from `effnetv2_tf.config.build_config` (and
`progressive.plan_stages`, `data.preprocessing`, `data.augment`). **Reference** is
a transcription of google/automl `efficientnetv2/`, file named beside each
value (hparams.py: what no model or dataset config sets; line numbers `L..`
at commit 6a54c8741e7c3265d4547c4f35f47a0391122dc5). **Paper** is Tan &
Le 2021 (Table 6, sections 5.1-5.3); "—" where it gives no value. **Dev.**
names the entry of section 6 that explains a difference between ours and
the reference: the generator finds the differences and fails on one that no
entry explains.
"""

_MODEL_FIELDS = ("train_size", "eval_size", "augmentation", "preprocessing",
                 "stages", "randaug", "mixup", "cutmix", "dropout")


def _ref_model(model):
  train, evals, _, dropout, augname, ram, mix, stages = tables.REF_MODELS[model]
  aug, row = tables.REF_AUGNAMES[augname]
  v1 = model.startswith("efficientnet-")
  return [train, evals, aug, row, stages or tables.N(1, "stages=0"),
          ram if aug == "RandAugment" else tables.DASH, mix, 0.0 if v1 else mix,
          dropout]


def _models_section(chk):
  rows = []
  for model in registry.list_models():
    ref = _ref_model(model)
    for preset in progressive.PRESETS:
      c, s = _run(model, "imagenet", preset)
      ours = [OURS[f][1](c, s) for f in _MODEL_FIELDS]
      marks = [chk.mark(f"imagenet/{model}/{preset}/{f}", o, r)
               for f, o, r in zip(_MODEL_FIELDS, ours, ref)]
      rows.append([f"`{model}`", f"ours, `{preset}` preset",
                   *map(_fmt, ours), _joined(marks)])
    rows.append(["", "reference", *map(_fmt, ref), ""])
  header = ["Model", "Source", "Train size", "Eval size", "Augmentation",
            "Preprocessing", "Stages", "RandAugment", "Mixup", "CutMix",
            "Dropout", "Dev."]
  return ["## 2. ImageNet-1k models (`--dataset_cfg=imagenet`)", "",
          "Last-stage values. Reference: effnetv2_configs.py (V1: main.py "
          "train size `int(eval * 0.8) // 16 * 16`, hparams.py stages=0). "
          "RandAugment is shown where it runs. Paper values: the stage "
          "tables below.", ""] + _table(header, rows)


def _stage_table(chk, model):
  sizes, ram, mix = tables.REF_STAGES[model]
  dropout = tables.REF_MODELS[model][3]
  ref = [sizes, ram or (tables.DASH,) * 4, mix, mix, (dropout,) * 4]
  rows = []
  for preset in progressive.PRESETS:
    c, stages = _run(model, "imagenet", preset)
    ours = [[s.image_size for s in stages], [_randaug(c, s) for s in stages],
            [s.mixup_alpha for s in stages], [s.cutmix_alpha for s in stages],
            [s.dropout for s in stages]]
    marks = [chk.mark(f"imagenet/{model}/{preset}/stages", len(stages), 4)]
    marks += [chk.mark(f"imagenet/{model}/{preset}/stage{i + 1}/{f}", o, r)
              for f, values, refs in zip(
                  ("size", "randaug", "mixup", "cutmix", "dropout"), ours, ref)
              for i, (o, r) in enumerate(zip(values, refs))]
    rows.append([f"ours, `{preset}` preset", *map(_fmt, ours),
                 _joined(marks)])
    if preset == "paper" and model in tables.PAPER_TABLE6:
      rows.append(_paper_stage_row(chk, model, ours))
  rows.append(["reference (main.py, main_tf2.py)", *map(_fmt, ref), ""])
  return _table([f"`{model}`", "Image size", "RandAugment", "Mixup",
                 "CutMix", "Dropout", "Dev."], rows)


def _paper_stage_row(chk, model, ours):
  """Table 6; ours (paper preset) first and last stages checked on it."""
  table6 = tables.PAPER_TABLE6[model]
  marks = [chk.mark(f"paper/{model}/{f}/{end}", o[i], p[j])
           for f, o, p in zip(("size", "randaug", "mixup", "dropout"),
                              ours[:3] + ours[4:], table6)
           for j, (i, end) in enumerate(((0, "min"), (-1, "max")))]
  cells = [f"{_fmt(lo)} → {_fmt(hi)}" for lo, hi in table6]
  return ["paper (Table 6)", *cells[:3], "none", cells[3], _joined(marks)]


def _stages_section(chk):
  out = ["### Progressive stages (ImageNet-1k)", "",
         "Stages 1..M. `paper` (default): every value at i / (M - 1) from "
         "its min to its max. `reference`: image size at (i + 1) / M from "
         "128, RandAugment from 5, mixup and CutMix from 0 at i / (M - 1), "
         "fixed dropout.", ""]
  for model in registry.list_models():
    if model in tables.REF_STAGES:
      out += _stage_table(chk, model)
  return out


def _dataset_rows(chk, name):
  runs = [_run(m, name) for m in registry.list_models()]
  columns = tables.REF_COLUMNS
  col = columns.index(name) + 1 if name in columns else None
  group = "transfer" if col and col > 3 else name
  rows = []
  for key, (label, value) in OURS.items():
    values = [value(c, s) for c, s in runs]
    ours = values[0] if len({_fmt(v) for v in values}) == 1 else tables.PM
    reference = tables.REFERENCE_DATASETS[key]
    ref, where = (reference[col], reference[0]) if col else (None, "")
    paper = (tables.PAPER_DATASETS.get(key, {}).get(group, tables.DASH)
             if col else tables.DASH)
    mark = chk.mark(f"dataset/{name}/{key}", ours, ref) if col else ""
    rows.append([label, _fmt(ours), _fmt(ref), where, paper, mark])
  return rows


def _dataset_section(chk):
  out = ["## 3. Dataset configs", "",
         "`per model`: see sections 2 and 4. Ours counts split sizes from "
         "the data; the reference's declared num_images are in parentheses.",
         ""]
  for name in dataset_configs.DATASET_CONFIGS:
    out += [f"### `{name}`", ""] + _table(
        ["Field", "Ours", "Reference", "Reference file", "Paper", "Dev."],
        _dataset_rows(chk, name))
  return out


def _finetune_section(chk):
  ft = [n for n in tables.REF_COLUMNS if n.endswith("ft")]
  rows = []
  for model in registry.list_models():
    ref_train, ref_eval, ref_ft = tables.REF_MODELS[model][:3]
    imagenet = _run(model, "imagenet")[0].model.train_size
    marks, cells = [chk.mark(f"imagenet/{model}/train_size", imagenet,
                             ref_train)], []
    for key, ref in (("train_size", ref_ft), ("eval_size", ref_eval)):
      ours = [OURS[key][1](*_run(model, n)) for n in ft]
      marks += [chk.mark(f"finetune/{n}/{model}/{key}", o, ref)
                for n, o in zip(ft, ours)]
      cells += [" / ".join(sorted({_fmt(o) for o in ours})), _fmt(ref)]
    rows.append([f"`{model}`", _fmt(imagenet), _fmt(ref_train), *cells,
                 _joined(marks)])
  header = ["Model", "ImageNet train (ours)", "(reference)",
            "Finetune train (ours)", "(reference)", "Finetune eval (ours)",
            "(reference)", "Dev."]
  return ["## 4. Finetune and V1 image sizes", "",
          f"Finetune configs ({', '.join(ft)}; ours: every one checked): "
          "train at `int(eval * 1.0) // 16 * 16` (reference ImagenetFt "
          "isize=1.0, main.py's rule), eval at the model's eval size. V1 "
          "trains on ImageNet at `int(eval * 0.8) // 16 * 16`.", ""
          ] + _table(header, rows)


_ROW_USERS = {"v2": ("efficientnetv2-s", "imagenet"),
              "legacy": ("efficientnet-b0", "imagenet"),
              "finetune": ("efficientnetv2-s", "cifar10ft")}


def _ours_field(data, field):
  value = data[field]
  if field == "input_scaling":
    text = preprocessing.SCALING_FORMULAS[value]
    if value == preprocessing.SCALE_IMAGENET:
      text += (f"; mean {preprocessing.IMAGENET_MEAN_RGB}, std "
               f"{preprocessing.IMAGENET_STDDEV_RGB}")
    return tables.N(text, f"`{value}`")
  unused = ((field in tables.CROP_FIELDS and not data.train_crop) or
            (field in tables.EVAL_CROP_FIELDS and not data.eval_crop))
  return tables.N(value, "unused") if unused else value


def _preprocessing_section(chk):
  out = ["## 5. Preprocessing rows (`effnetv2_tf/data/preprocessing.py`)", "",
         "Ours: the resolved `config.data` of a config using the row: "
         + ", ".join(f"{r}: {m}/{d}" for r, (m, d) in _ROW_USERS.items())
         + ".", ""]
  for row, (model, dataset) in _ROW_USERS.items():
    data = _run(model, dataset)[0].data
    assert data.preprocessing == row, (model, dataset, data.preprocessing)
    ref_file, ref = tables.REF_PREPROCESSING[row]
    rows = [[f"`{f}`", _fmt(_ours_field(data, f)), _fmt(ref[f][0]),
             f"{ref_file} {ref[f][1]}".strip(),
             chk.mark(f"preprocessing/{row}/{f}", _ours_field(data, f),
                      ref[f][0])] for f in preprocessing.FIELDS]
    out += [f"### `{row}`", ""] + _table(
        ["Field", "Ours", "Reference", "Where", "Dev."], rows)
  return out + _augment_table(chk)


def _arithmetic(preset):
  """Our `data.augment_arithmetic` under a progressive preset."""
  config, _ = _run("efficientnetv2-s", "imagenet", preset)
  return config.data.augment_arithmetic


def _augment_table(chk):
  consts = lambda d: (f"translate {d['translate_const']}, cutout "
                      f"{d['cutout_const']}")
  ours = {"num_layers": _run("efficientnetv2-s", "imagenet")[0].data
                        .num_layers,
          "ops": augment.RANDAUGMENT_OPS,
          "level": f"magnitude / {augment.MAX_LEVEL:g}",
          "randaug_consts": consts(augment.RANDAUGMENT_CONSTS),
          "autoaug_consts": consts(augment.AUTOAUGMENT_CONSTS),
          "autoaug_policy": f"v0, {len(augment.POLICY_V0)} sub-policies",
          "arithmetic": tables.N(_arithmetic("paper"),
                                 f"{_arithmetic('reference')} under "
                                 "progressive.preset=reference")}
  rows = [[f"`{k}`", _fmt(ours[k]), _fmt(v), where if ".py" in where else
           f"autoaugment.py {where}", chk.mark(f"augment/{k}", ours[k], v)]
          for k, (v, where) in tables.REF_AUGMENT.items()]
  return ["### RandAugment and AutoAugment", ""] + _table(
      ["Field", "Ours", "Reference", "Where", "Dev."], rows)


def render():
  """The text of docs/recipes.md; raises on an unexplained difference."""
  chk = _Checker(tables.DEVIATIONS)
  lines = [INTRO] + _models_section(chk) + _stages_section(chk) + \
      _dataset_section(chk) + _finetune_section(chk) + \
      _preprocessing_section(chk)
  chk.verify()
  rows = [[i, vs, what, why, chk.count(i)]
          for i, vs, _, what, why in tables.DEVIATIONS]
  lines += ["## 6. Deliberate deviations", "", "Differences: the table "
            "cells an entry explains (—: not a table value, or from the "
            "paper's text).", ""] + _table(
                ["Id", "From", "What", "Why", "Differences"], rows)
  return "\n".join(lines).rstrip("\n") + "\n"


def stale_diff(path=DOC):
  """A unified diff of the file at `path` against render() ('' if equal)."""
  current = open(path).read() if os.path.exists(path) else ""
  return "".join(difflib.unified_diff(
      current.splitlines(True), render().splitlines(True),
      "docs/recipes.md (committed)", "docs/recipes.md (generated)"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  with errors.reported("recipes_doc"):
    if flags.FLAGS.check:
      diff = stale_diff()
      sys.stdout.write(diff)
      sys.exit("docs/recipes.md is stale: run python -m "
               "effnetv2_tf.tools.recipes_doc" if diff else 0)
    text = render()
  with open(DOC, "w") as f:
    f.write(text)
  print(f"wrote {DOC}")


if __name__ == "__main__":
  flags.DEFINE_bool("check", False, "Exit 1 with a diff when docs/recipes.md "
                    "differs from what this would write.")
  app.run(main)
