"""Renders the README's results tables from benchmarks/results/*.json.

  python benchmarks/readme_tables.py          # rewrites the tables in README.md
  python benchmarks/readme_tables.py --check  # prints a diff, exit 1 if stale

Each table sits between marker comments in README.md,
`<!-- table:NAME -->` and `<!-- /table:NAME -->`; everything between them
is replaced. The tables and the JSON files they read:

  digits       drivers_digits.json (drivers_digits.py): per driver
               eval.top1, eval.top5, seconds, stages[].image_size and
               stages[].images_per_sec
  speed        train_step.json (train_step.py): the `fit` rows of
               keras.applications and ours, images_per_sec;
               inference.json (inference.py): keras.applications and
               "ours (BN folded)", ms_per_call at batch 1, images_per_sec
               above; memory.json (memory.py): applications_mib and
               ours_mib at the largest size
  progressive  progressive.json (progressive.py): per schedule seconds,
               retrace_seconds, seconds_without_retrace and
               stages[].image_size, steps, images_per_sec
  peers        peers.json (peers.py): per task, ours_model, size and
               batch the images_per_sec of keras.applications, ours (and
               for inference "ours, BN folded" and "ours, SavedModel"),
               timm and timm channels-last

Ratios are computed from the numbers shown. Only the standard library is
used (no TensorFlow), so the check runs in a fraction of a second.
"""

import argparse
import difflib
import json
import pathlib
import re
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"

DRIVER_NAMES = {"main.py": "main.py (custom loop)",
                "main_tf2.py": "main_tf2.py (Model.fit)"}
OURS_INFERENCE = "ours (BN folded)"
OPTIMIZERS = {"rmsprop": "RMSProp (the paper's)",
              "sgd": "SGD with momentum"}


def load(results_dir, name):
  path = pathlib.Path(results_dir) / name
  if not path.exists():
    raise SystemExit(f"{path}: missing (run benchmarks/"
                     f"{name.replace('.json', '.py')} first).")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def model_name(name):
  """'efficientnetv2-b0' -> 'EfficientNetV2-B0'."""
  family, _, variant = name.rpartition("-")
  family = {"efficientnetv2": "EfficientNetV2",
            "efficientnet": "EfficientNet"}.get(family, family)
  return f"{family}-{variant.upper()}"


def machine(data):
  m = data["machine"]
  return f"{m['cpus']} CPU cores, TensorFlow {m['tensorflow']}"


def table(header, align, rows):
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def wrap(note):
  return textwrap.fill(note, 78, break_on_hyphens=False)


def pct(x):
  return f"{100 * x:.1f}%"


def joined(values, fmt):
  return " / ".join(format(v, fmt) for v in values)


def render_digits(results_dir):
  data = load(results_dir, "drivers_digits.json")
  runs = data["results"]
  sizes = joined([s["image_size"] for s in runs[0]["stages"]], "d")
  rows = [[DRIVER_NAMES.get(r["driver"], r["driver"]), pct(r["eval"]["top1"]),
           pct(r["eval"]["top5"]), f"{r['seconds']:.0f} s",
           joined([s["images_per_sec"] for s in r["stages"]], ".0f")]
          for r in runs]
  text = table(["driver", "top-1 (EMA)", "top-5", "wall time",
                f"images/s at {sizes} px"], "lrrrl", rows)
  by_driver = {r["driver"]: r for r in runs}
  note = (f"{machine(data)}, one run of each driver "
          "(`benchmarks/results/drivers_digits.json`).")
  if {"main.py", "main_tf2.py"} <= set(by_driver):
    wall = (by_driver["main_tf2.py"]["seconds"] /
            by_driver["main.py"]["seconds"])
    note += f" main_tf2.py takes {wall:.2f}x main.py's wall time."
  return text + "\n\n" + wrap(note)


def _pick(rows, **match):
  found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
  if not found:
    raise SystemExit(f"No result with {match}.")
  return found[0]


def _in_order(rows, *keys):
  seen = []
  for r in rows:
    key = tuple(r[k] for k in keys)
    if key not in seen:
      seen.append(key)
  return seen


def render_speed(results_dir):
  train = load(results_dir, "train_step.json")
  infer = load(results_dir, "inference.json")
  memory = load(results_dir, "memory.json")
  rows = []
  for variant, size, batch in _in_order(train["results"], "variant", "size",
                                        "batch"):
    keys = dict(variant=variant, size=size, batch=batch, loop="fit")
    theirs = _pick(train["results"], model="keras.applications", **keys)
    ours = _pick(train["results"], model="ours", **keys)
    rows.append([
        f"train EfficientNetV2-{variant.upper()}, {size} px, batch {batch}, "
        "`fit` (images/s)", f"{theirs['images_per_sec']:.1f}",
        f"{ours['images_per_sec']:.1f}",
        f"{ours['images_per_sec'] / theirs['images_per_sec']:.2f}"])
  for variant, size, batch in _in_order(infer["results"], "variant", "size",
                                        "batch"):
    keys = dict(variant=variant, size=size, batch=batch)
    theirs = _pick(infer["results"], model="keras.applications", **keys)
    ours = _pick(infer["results"], model=OURS_INFERENCE, **keys)
    what = f"{variant.upper()} SavedModel, {size} px, batch {batch}"
    if batch == 1:  # latency: lower is better
      rows.append([f"{what} (ms)", f"{theirs['ms_per_call']:.1f}",
                   f"{ours['ms_per_call']:.1f}",
                   f"{theirs['ms_per_call'] / ours['ms_per_call']:.2f}"])
    else:
      rows.append([f"{what} (images/s)", f"{theirs['images_per_sec']:.1f}",
                   f"{ours['images_per_sec']:.1f}",
                   f"{ours['images_per_sec'] / theirs['images_per_sec']:.2f}"])
  largest = max(memory["results"], key=lambda r: r["size"])
  short = model_name(memory["model"]).rpartition("-")[2]
  rows.append([
      f"peak RSS, {short} train step, {largest['size']} px, batch "
      f"{largest['batch']} (MiB)", f"{largest['applications_mib']:.0f}",
      f"{largest['ours_mib']:.0f}",
      f"{largest['ours_mib'] / largest['applications_mib']:.2f}"])
  text = table(["what", "keras.applications", "ours", "ratio"], "lrrr", rows)
  machines = {machine(d) for d in (train, infer, memory)}
  where = ("; ".join(f"{name}: {machine(d)}" for name, d in (
      ("train_step.json", train), ("inference.json", infer),
      ("memory.json", memory))) if len(machines) > 1 else machines.pop())
  rounds = ({train["rounds"], infer["rounds"]}.pop()
            if train["rounds"] == infer["rounds"]
            else f"{train['rounds']} and {infer['rounds']}")
  optimizer = OPTIMIZERS.get(train["optimizer"], train["optimizer"])
  note = (f"{where}; training with {optimizer}; training and inference "
          f"the median of {rounds} rounds "
          "(`benchmarks/results/train_step.json`, `inference.json`, "
          "`memory.json`). Ratio: how many times faster ours is (for ms, "
          "keras.applications' time over ours); for memory, ours over "
          "keras.applications.")
  return text + "\n\n" + wrap(note)


def render_progressive(results_dir):
  data = load(results_dir, "progressive.json")
  runs = {r["schedule"]: r for r in data["results"]}
  rows = []
  for r in data["results"]:
    stages = r["stages"]
    name = r["schedule"]
    if len(stages) > 1:
      name += f" ({len(stages)} stages)"
    rows.append([
        name, joined([s["image_size"] for s in stages], "d"),
        f"{sum(s['steps'] for s in stages)}",
        joined([s["images_per_sec"] for s in stages], ".1f"),
        f"{r['seconds']:.1f}", f"{r['retrace_seconds']:.1f}",
        f"{r['seconds_without_retrace']:.1f}"])
  text = table(["schedule", "image size (px)", "steps", "images/s",
                "wall (s)", "retrace (s)", "wall without retrace (s)"],
               "llrlrrr", rows)
  note = (f"{model_name(data['model'])}, batch {data['batch_size']}, "
          f"{data['dataset_cfg']}, {machine(data)} "
          "(`benchmarks/results/progressive.json`).")
  if {"progressive", "fixed"} <= set(runs):
    fixed, prog = runs["fixed"], runs["progressive"]
    training = (fixed["seconds_without_retrace"] /
                prog["seconds_without_retrace"])
    note += (f" Fixed / progressive: {training:.2f}x in training time "
             "without the retraces, "
             f"{fixed['seconds'] / prog['seconds']:.2f}x in wall time.")
  return text + "\n\n" + wrap(note)


PEERS = ("keras.applications", "ours", "ours, BN folded", "ours, SavedModel",
         "timm", "timm channels-last")


TASKS = {"train": "train (SGD)", "train_rmsprop": "train (RMSProp)"}


def render_peers(results_dir):
  data = load(results_dir, "peers.json")
  rates, rows = {}, []
  for r in data["results"]:
    key = (r["task"], r["ours_model"], r["size"], r["batch"])
    rates.setdefault(key, {})[r["model"]] = r["images_per_sec"]
  for (task, ours, size, batch), row in rates.items():
    best_peer = row.get("timm channels-last")
    ratios = [f"{row[m] / best_peer:.2f}" if best_peer and m in row else ""
              for m in ("ours", "ours, SavedModel")]
    rows.append([f"{TASKS.get(task, task)} {model_name(ours)}, {size} px, "
                 f"batch {batch}"] +
                [f"{row[m]:.1f}" if m in row else "" for m in PEERS] +
                ratios)
  text = table(["images/s", *PEERS, "ours / timm channels-last",
                "SavedModel / timm channels-last"], "l" + "r" * 8, rows)
  note = (f"{machine(data)} ({data['machine']['cpu']}), PyTorch "
          "side as installed by benchmarks/README.md; the same train step "
          "on every side (SGD with momentum 0.9, or the paper's RMSProp: "
          "Keras' RMSprop and timm's RMSpropTF), inference a `tf.function` "
          "of the model / `torch.inference_mode()` (ours also with its batch norms "
          "folded as export serves it, and the exported SavedModel's "
          "`preprocessed` signature); median of "
          f"{data['rounds']} rounds of {data['steps']} steps, each round "
          "timing every model in turn (`benchmarks/results/peers.json`).")
  return text + "\n\n" + wrap(note)


RENDERERS = {"digits": render_digits, "speed": render_speed,
             "progressive": render_progressive, "peers": render_peers}


def render_all(results_dir=RESULTS_DIR):
  return {name: render(results_dir) for name, render in RENDERERS.items()}


def update(text, tables):
  """`text` with each marked table replaced; SystemExit on a missing marker."""
  for name, body in tables.items():
    pattern = re.compile(
        rf"(<!-- table:{name} -->\n).*?(<!-- /table:{name} -->)", re.DOTALL)
    if not pattern.search(text):
      raise SystemExit(f"README has no <!-- table:{name} --> ... "
                       f"<!-- /table:{name} --> markers.")
    text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text,
                       count=1)
  return text


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="Print a diff and exit 1 when README is stale.")
  parser.add_argument("--results_dir", default=str(RESULTS_DIR))
  parser.add_argument("--readme", default=str(README))
  args = parser.parse_args(argv)
  readme = pathlib.Path(args.readme)
  old = readme.read_text(encoding="utf-8")
  new = update(old, render_all(args.results_dir))
  if args.check:
    if new == old:
      print(f"{readme}: tables up to date.")
      return 0
    sys.stdout.writelines(difflib.unified_diff(
        old.splitlines(True), new.splitlines(True), str(readme),
        f"{readme} (from {args.results_dir})"))
    print(f"{readme}: tables stale; run python benchmarks/readme_tables.py")
    return 1
  if new != old:
    readme.write_text(new, encoding="utf-8")
    print(f"{readme}: tables rewritten.")
  else:
    print(f"{readme}: tables up to date.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
