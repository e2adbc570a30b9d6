"""Finetuning with and without the frozen-backbone phase and keep-best.

Starts from the digits main job's trained EfficientNetV2-B0 (its run
directory, `runs/digits` after `bash scripts/run_main_job.sh`) and finetunes
it on another task made of real photos: four coarse classes of the shared
ImageNet photos (one photo per ImageNet class, `../shared/data/`), grouped by
their ImageNet index (fish, birds, dogs, fruit and vegetables; `GROUPS`).
Every 4th photo of a class is held out: its crops are the validation split,
so validation photos are never seen in training. Both runs use
`--dataset_cfg=folderft` with the same seed, steps, image size and batch;
one adds the controls (`--controls`), the other turns them off.

  PYTHONPATH=. python benchmarks/finetune_controls.py \
      [--init_checkpoint=runs/digits] [--out_dir=runs/finetune_controls]

Prints the final top-1 of each run, and for the run with keep-best the
top-1 of its best checkpoint evaluated anew (`--checkpoint=best`). With
about 50 validation crops, one image is 2 points of top-1: compare runs of
one invocation, and expect a few points of run-to-run noise.
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image

import bench_util  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Coarse classes: ranges of ImageNet class indices (the sorted synset order
# of the shared photos' file names), 16 to 22 photos each.
GROUPS = {
    "bird": [range(7, 25)],
    "dog": [range(151, 169)],
    "fish": [range(0, 7), range(389, 398)],
    "produce": [range(936, 958)],
}
HELD_OUT_EVERY = 4  # every 4th photo of a group is a validation photo
TRAIN_CROPS = 10  # random crops per training photo
CROP_SIZE = 96  # px of the saved crops

FLAGS = flags.FLAGS
flags.DEFINE_string("init_checkpoint", "runs/digits",
                    "The backbone to start from: the digits main job's run.")
flags.DEFINE_string("out_dir", "runs/finetune_controls",
                    "Where the folder of crops and the two runs go.")
flags.DEFINE_string("driver", "main.py", "main.py or main_tf2.py.")
flags.DEFINE_string(
    "common", "model.eval_size=64,train.batch_size=32,train.epochs=12,"
    "train.seed=0,eval.batch_size=16",
    "Overrides of the folderft config both runs share.")
flags.DEFINE_string(
    "controls", "", "Overrides of the second run's controls (default: "
    "folderft's own: a frozen first epoch, an evaluation every epoch, "
    "keep-best).")
flags.DEFINE_string(
    "no_controls", "train.freeze_epochs=0,train.keep_best=false",
    "The first run's overrides that turn the controls off (its evaluation "
    "every epoch changes no weight).")
flags.DEFINE_string("json_out", "benchmarks/results/finetune_controls.json",
                    "Where to write the results ('' to skip).")


def _crop(image, rng):
  """A random crop of 35-100% of the area, aspect 3/4 to 4/3, resized."""
  width, height = image.size
  for _ in range(10):
    area = rng.uniform(0.35, 1.0) * width * height
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    w, h = int(round((area * aspect) ** 0.5)), int(round((area / aspect) **
                                                         0.5))
    if w <= width and h <= height:
      left, top = rng.integers(0, width - w + 1), rng.integers(0,
                                                               height - h + 1)
      return image.crop((left, top, left + w, top + h))
  return image


def _fixed_crops(image):
  """The whole photo and two 80% crops (top-left, bottom-right)."""
  width, height = image.size
  w, h = int(width * 0.8), int(height * 0.8)
  return [image, image.crop((0, 0, w, h)),
          image.crop((width - w, height - h, width, height))]


def make_folder(root, seed=0):
  """Writes ROOT/train/<group>/ and ROOT/validation/<group>/ JPEG crops;
  returns {split: count}."""
  photos = sorted(os.listdir(bench_util.SAMPLES_DIR))
  rng = np.random.default_rng(seed)
  counts = {"train": 0, "validation": 0}
  for group, ranges in GROUPS.items():
    members = [photos[i] for r in ranges for i in r]
    for k, name in enumerate(members):
      image = Image.open(os.path.join(bench_util.SAMPLES_DIR,
                                      name)).convert("RGB")
      split = ("validation" if k % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
               else "train")
      crops = (_fixed_crops(image) if split == "validation" else
               [_crop(image, rng) for _ in range(TRAIN_CROPS)])
      folder = os.path.join(root, split, group)
      os.makedirs(folder, exist_ok=True)
      for j, crop in enumerate(crops):
        crop.resize((CROP_SIZE, CROP_SIZE), Image.BICUBIC).save(
            os.path.join(folder, f"{os.path.splitext(name)[0]}_{j}.jpg"),
            quality=90)
      counts[split] += len(crops)
  return counts


def _main_py(model_dir, data_dir, *args):
  command = [sys.executable, os.path.join(ROOT, FLAGS.driver),
             "--model=efficientnetv2-b0", "--dataset_cfg=folderft",
             f"--data_dir={data_dir}", f"--model_dir={model_dir}", *args]
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  subprocess.run(command, check=True, env=env)


def run(name, data_dir, hparams):
  """Finetunes one run; returns its summary.json's final eval and stages."""
  model_dir = os.path.join(FLAGS.out_dir, name)
  _main_py(model_dir, data_dir, "--mode=train_and_eval",
           f"--init_checkpoint={FLAGS.init_checkpoint}",
           f"--hparam_str={','.join(filter(None, [FLAGS.common, hparams]))}")
  with open(os.path.join(model_dir, "summary.json")) as f:
    summary = json.load(f)
  result = {"name": name, "hparams": hparams, "final_step": summary[
      "final_step"], "top1": summary["eval"]["top1"],
            "evals": summary.get("evals")}
  best_json = os.path.join(model_dir, "best", "best.json")
  if os.path.exists(best_json):
    with open(best_json) as f:
      result["best"] = json.load(f)
    _main_py(model_dir, data_dir, "--mode=eval", "--checkpoint=best")
  return result


def main(argv):
  del argv
  if not os.path.isdir(FLAGS.init_checkpoint):
    raise app.UsageError(
        f"--init_checkpoint {FLAGS.init_checkpoint} does not exist: run "
        "`bash scripts/run_main_job.sh` first (it writes runs/digits).")
  data_dir = os.path.join(FLAGS.out_dir, "photos")
  counts = make_folder(data_dir)
  print(f"Folder {data_dir}: {counts['train']} training crops, "
        f"{counts['validation']} validation crops of held-out photos, "
        f"{len(GROUPS)} classes", flush=True)
  results = [run("without", data_dir, FLAGS.no_controls),
             run("with", data_dir, FLAGS.controls)]
  print("\n| run | overrides | final top-1 | best checkpoint |")
  print("|---|---|---:|---|")
  for r in results:
    best = r.get("best")
    best_text = (f"step {best['step']}, top-1 {best['score']:.4f}"
                 if best else "-")
    print(f"| {r['name']} | `{r['hparams']}` | {r['top1']:.4f} | "
          f"{best_text} |")
  bench_util.write_results(FLAGS.json_out, {
      "common": FLAGS.common, "driver": FLAGS.driver, "counts": counts,
      "results": results})


if __name__ == "__main__":
  app.run(main)
