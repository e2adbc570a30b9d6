"""Pictures of a training run from its summary.json.

  python -m effnetv2_tf.plot --model_dir=runs/digits

writes `schedule.png` (image size and regularization per progressive stage,
over the training steps) and `learning_curve.png` (training loss per step,
stages shaded and labelled with their image size, eval top-1 at stage ends
when the run evaluated there; the learning rate below, at every step of
the run's schedule) into --out_dir (default: --model_dir).
"""

from effnetv2_tf import startup

# Run as a program, start up before the imports below load TensorFlow
# (see startup); imported as a module, this changes nothing.
if __name__ == "__main__":
  startup.start()

# pylint: disable=g-import-not-at-top,wrong-import-position
import os

from absl import app
from absl import flags
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from effnetv2_tf import errors  # pylint: disable=g-import-not-at-top
from effnetv2_tf.runs import run_dir  # pylint: disable=g-import-not-at-top
from effnetv2_tf.training import schedule as schedule_lib  # pylint: disable=g-import-not-at-top

REGULARIZATION = (("randaug_magnitude", "RandAugment magnitude", "tab:red"),
                  ("mixup_alpha", "mixup alpha", "tab:green"),
                  ("cutmix_alpha", "CutMix alpha", "tab:purple"),
                  ("dropout", "dropout rate", "tab:orange"))


def stage_bounds(summary):
  """[(first step, last step)] of each recorded stage, in order."""
  bounds, start = [], 0
  for stage in summary["stages"]:
    bounds.append((start, start + stage["steps"]))
    start += stage["steps"]
  return bounds


def _steps(summary, key):
  """Step-function points of a per-stage value over training steps."""
  xs, ys = [], []
  for (start, end), stage in zip(stage_bounds(summary), summary["stages"]):
    xs += [start, end]
    ys += [stage[key], stage[key]]
  return xs, ys


def num_stages(summary):
  """The run's planned stages (runs before issue 37: those recorded)."""
  return summary.get("num_stages") or len(summary["stages"])


def stages_text(summary):
  """"1 stage", "4 stages, paper preset", "12 random-resize stages"."""
  count = num_stages(summary)
  if summary["preset"] == "random_resize":
    return f"{count} random-resize stage{'s' if count != 1 else ''}"
  if count == 1:  # one stage at the max values: no preset in it
    return "1 stage"
  return f"{count} stages, {summary['preset']} preset"


def learning_rates(summary):
  """(steps, learning rates): the schedule at every step 0..total_steps
  (as the history logs it: the rate after that many steps), else, for
  runs before issue 37, the logged history."""
  config = summary.get("learning_rate_schedule")
  if not config:
    history = summary["history"]
    return ([h["step"] for h in history],
            [h["learning_rate"] for h in history])
  steps = np.arange(config["total_steps"] + 1)
  return list(steps), list(np.asarray(
      schedule_lib.WarmupDecaySchedule(**config)(steps), np.float64))


def plot_schedule(summary):
  """Figure: image size (top) and regularization (bottom) per stage."""
  fig, (size_ax, reg_ax) = plt.subplots(2, 1, sharex=True, figsize=(7, 5))
  size_ax.plot(*_steps(summary, "image_size"), color="tab:blue")
  size_ax.set_ylabel("image size (px)")
  title = ("Progressive learning" if num_stages(summary) > 1 else
           "Training schedule")
  size_ax.set_title(f"{title}: {summary['model']} on {summary['dataset']} "
                    f"({stages_text(summary)})")
  # RandAugment magnitude (0-30) gets its own axis, only when it is used.
  magnitude_ax = (reg_ax.twinx() if any(
      stage["randaug_magnitude"] for stage in summary["stages"]) else None)
  for key, label, color in REGULARIZATION:
    if not any(stage[key] for stage in summary["stages"]):
      continue  # e.g. no CutMix in this recipe
    ax = magnitude_ax if key == "randaug_magnitude" else reg_ax
    ax.plot(*_steps(summary, key), label=label, color=color,
            linestyle="--" if ax is magnitude_ax else "-")
  reg_ax.set_ylabel("alpha / rate")
  if magnitude_ax is not None:
    magnitude_ax.set_ylabel("RandAugment magnitude")
  handles = [h for ax in fig.axes[1:]
             for h in ax.get_legend_handles_labels()[0]]
  if handles:
    reg_ax.legend(handles=handles, loc="upper left")
  reg_ax.set_xlabel("training step")
  fig.tight_layout()
  return fig


def plot_learning_curve(summary):
  """Figure: loss per step, stages shaded, eval top-1 at stage ends (top);
  learning rate (bottom)."""
  fig, (loss_ax, lr_ax) = plt.subplots(
      2, 1, sharex=True, figsize=(8, 5.5), height_ratios=(3, 1))
  history = summary["history"]
  steps = [h["step"] for h in history]
  loss_ax.plot(steps, [h["loss"] for h in history], color="tab:blue",
               label="training loss")
  loss_ax.set_ylabel("loss")
  lr_ax.plot(*learning_rates(summary), color="tab:gray",
             label="learning rate")
  lr_ax.set_ylabel("learning rate")
  lr_ax.set_xlabel("training step")
  for index, ((start, end), stage) in enumerate(
      zip(stage_bounds(summary), summary["stages"])):
    for ax in (loss_ax, lr_ax):
      ax.axvspan(start, end, alpha=0.08 if index % 2 else 0.16,
                 color="tab:orange")
    loss_ax.text((start + end) / 2, 0.98, f"{stage['image_size']} px",
                 transform=loss_ax.get_xaxis_transform(), ha="center",
                 va="top", fontsize=8)
  evals = [(end, stage["top1"]) for (_, end), stage in
           zip(stage_bounds(summary), summary["stages"]) if "top1" in stage]
  axes = [loss_ax]
  if evals:
    top1_ax = loss_ax.twinx()
    top1_ax.plot(*zip(*evals), "o-", color="tab:green", label="eval top-1")
    top1_ax.set_ylim(0, 1)
    top1_ax.set_ylabel("eval top-1 (EMA)")
    axes.append(top1_ax)
  handles = [h for ax in axes for h in ax.get_legend_handles_labels()[0]]
  loss_ax.legend(handles=handles, loc="center right", fontsize=8)
  loss_ax.set_title(f"{summary['model']} on {summary['dataset']}: "
                    f"{stages_text(summary)}")
  fig.tight_layout()
  return fig


class PlotError(errors.UserError, ValueError):
  """A run that cannot be plotted yet; the message says why."""


def write_plots(model_dir, out_dir=None):
  """Writes both PNGs; returns their paths."""
  summary = run_dir.read_summary(model_dir)
  if summary is None:
    raise errors.MissingInputError(
        f"--model_dir {model_dir}: no {run_dir.SUMMARY_FILENAME} (run "
        "training there first).")
  if not summary["stages"]:
    raise PlotError(f"{model_dir}: summary.json has no finished stage yet.")
  out_dir = out_dir or model_dir
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, plot in (("schedule", plot_schedule),
                     ("learning_curve", plot_learning_curve)):
    fig = plot(summary)
    paths.append(os.path.join(out_dir, f"{name}.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  with errors.reported("plot"):
    for path in write_plots(FLAGS.model_dir, FLAGS.out_dir):
      print(f"Wrote {path}", flush=True)


FLAGS = flags.FLAGS

if __name__ == "__main__":
  flags.DEFINE_string("model_dir", None, "Run directory with summary.json.")
  flags.DEFINE_string("out_dir", None, "Where to write the PNGs "
                      "(default: --model_dir).")
  flags.mark_flag_as_required("model_dir")
  app.run(main)
