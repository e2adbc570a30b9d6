"""The search: random sampling of the space as Optuna trials, resumable.

Optuna keeps the study (every trial's candidate, state, metrics and reward)
in a database: `sqlite:///<out_dir>/study.db` by default, so a killed search
rerun with the same command goes on where it stopped; several processes (or
hosts, with `--storage=postgresql://...` or `mysql://...`) given the same
storage share one search. Trials keep a heartbeat: a trial whose process
died is failed after the grace period and retried once (Optuna's
`RetryHeartbeatStaleTrialCallback`). A sampled candidate that another trial already
has (finished or running) is pruned, not trained again, so N finished
trials are N distinct architectures.

The backbone is measured once per study the same way (its accuracy, step
time and parameters are the study's `backbone` attribute) and normalises
every reward (`reward.reward`).
"""

import contextlib
import dataclasses
import json
import os
import warnings

import optuna

from effnetv2_tf import fileio
from effnetv2_tf.models import registry
from effnetv2_tf.nas import reward as reward_lib
from effnetv2_tf.nas import space as space_lib
from effnetv2_tf.nas import trial as trial_lib
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import trainer as trainer_lib

STUDY_NAME = "effnetv2-nas"
METRICS = ("accuracy", "step_time", "params", "seconds")  # trial.Measured
# At most this many sampled candidates per requested trial (duplicates in a
# small space are pruned); the search stops early past it.
MAX_ATTEMPTS_PER_TRIAL = 20
# The `config.model` keys that replace a registered variant's architecture
# (`ModelSpec` fields that `run_dir.model_from_config` passes on): with the
# backbone's name, they are the network a trial trains (best.json).
ARCHITECTURE_KEYS = tuple(
    key for key in run_dir.CONFIG_OVERRIDES
    if key in {f.name for f in dataclasses.fields(registry.ModelSpec)})


def storage_url(out_dir, storage=None):
  return storage or "sqlite:///" + os.path.abspath(
      os.path.join(out_dir, "study.db"))


def open_study(out_dir, storage=None, seed=0, heartbeat_s=60):
  """The study in `storage` (created on first use), random sampling.

  The sampler's seed is `seed` plus the number of trials already in the
  study, so a resumed search draws new candidates, reproducibly.
  """
  with warnings.catch_warnings():
    # Heartbeats are "experimental" since Optuna 2.8; they are how Optuna
    # finds the trials of a dead worker.
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    rdb = optuna.storages.RDBStorage(
        storage_url(out_dir, storage), heartbeat_interval=heartbeat_s,
        grace_period=2 * heartbeat_s,
        heartbeat_stale_trial_callback=(
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)))
  study = optuna.create_study(storage=rdb, study_name=STUDY_NAME,
                              direction="maximize", load_if_exists=True)
  study.sampler = optuna.samplers.RandomSampler(
      seed=seed + len(study.trials))
  return study


@contextlib.contextmanager
def _locked(path):
  """An exclusive lock on `path` (fcntl) among this host's processes."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:  # not POSIX: workers may both measure the backbone
    yield
    return
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def completed(study):
  return study.get_trials(deepcopy=False,
                          states=(optuna.trial.TrialState.COMPLETE,))


def measure_backbone(study, config, out_dir, echo=print):
  """The backbone's metrics: the study's, else measured now and stored."""
  if "backbone" not in study.user_attrs:
    blocks = space_lib.backbone_blocks(config.space)
    echo(f"backbone {config.space.backbone}: training the proxy")
    measured = trial_lib.run(config, blocks,
                             os.path.join(out_dir, "trials", "backbone"))
    study.set_user_attr("backbone", {
        **{k: getattr(measured, k) for k in METRICS}, "blocks": blocks})
    echo(_line("backbone", measured, config.reward, None))
  return study.user_attrs["backbone"]


def _line(name, measured, weights, backbone):
  text = (f"{name}: minival top-1 {measured.accuracy:.4f}, step "
          f"{measured.step_time * 1000:.1f} ms, {measured.params:,} params")
  if backbone:
    text += f", reward {_reward(measured, backbone, weights):.4f}"
  return text


def _reward(measured, backbone, weights):
  return reward_lib.reward(measured.accuracy, measured.step_time,
                           measured.params, backbone["step_time"],
                           backbone["params"], w=weights.w, v=weights.v)


def make_objective(config, out_dir, backbone, echo=print):
  """Optuna's objective: sample, skip a duplicate, train, reward."""
  def objective(trial):
    values = space_lib.sample(config.space, trial.suggest_categorical)
    for other in trial.study.get_trials(deepcopy=False, states=(
        optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)):
      if other.number != trial.number and other.params == values:
        raise optuna.TrialPruned(f"the candidate of trial {other.number}")
    blocks = space_lib.blocks_of(config.space, values)
    measured = trial_lib.run(config, blocks, os.path.join(
        out_dir, "trials", f"{trial.number:04d}"))
    for key in METRICS:
      trial.set_user_attr(key, getattr(measured, key))
    trial.set_user_attr("blocks", list(blocks))
    echo(_line(f"trial {trial.number}", measured, config.reward, backbone))
    return _reward(measured, backbone, config.reward)
  return objective


def run(config, out_dir, num_trials, storage=None, seed=0, heartbeat_s=60,
        echo=print):
  """Runs (or resumes) the search to `num_trials` finished trials; writes
  the results table, the winner's config and the plot; returns the rows."""
  os.makedirs(out_dir, exist_ok=True)
  space_lib.choices(config.space)  # a bad space fails before any training
  trial_lib.proxy_config(config, space_lib.backbone_blocks(config.space))
  # Workers started together in one out_dir: the first creates the study
  # and measures the backbone, the others wait for it.
  with _locked(os.path.join(out_dir, "study.lock")):
    study = open_study(out_dir, storage, seed, heartbeat_s)
    backbone = measure_backbone(study, config, out_dir, echo)
  done = len(completed(study))
  if done:
    echo(f"resuming: {done} of {num_trials} trials finished")
  if done < num_trials:
    study.optimize(
        make_objective(config, out_dir, backbone, echo),
        n_trials=(num_trials - done) * MAX_ATTEMPTS_PER_TRIAL,
        callbacks=[optuna.study.MaxTrialsCallback(
            num_trials, states=(optuna.trial.TrialState.COMPLETE,))],
        # A candidate whose loss diverges fails its trial, not the search.
        catch=(trainer_lib.TrainingError,), gc_after_trial=True)
  rows = results(study)
  write_outputs(rows, config, out_dir)
  return rows


def results(study):
  """One dict per finished trial, the backbone first, best reward marked."""
  backbone = study.user_attrs["backbone"]
  rows = [{"trial": "backbone", **{k: backbone[k] for k in METRICS},
           "reward": backbone["accuracy"], "blocks": backbone["blocks"]}]
  for trial in completed(study):
    rows.append({"trial": trial.number,
                 **{k: trial.user_attrs[k] for k in METRICS},
                 "reward": trial.value, "blocks": trial.user_attrs["blocks"]})
  best = max(rows, key=lambda r: r["reward"])
  for row in rows:
    row["best"] = row is best
  return rows


def write_outputs(rows, config, out_dir):
  """results.csv / results.json, best.json (a --config_file for main.py),
  results.png."""
  header = ("trial", "accuracy", "step_time", "params", "reward", "best",
            "seconds", "blocks")
  lines = [",".join(header)] + [
      ",".join(str(row[k]) if k != "blocks" else '"' + " ".join(row[k]) + '"'
               for k in header) for row in rows]
  fileio.write_atomic(os.path.join(out_dir, "results.csv"),
                    "\n".join(lines) + "\n")
  fileio.write_atomic(os.path.join(out_dir, "results.json"),
                    json.dumps(rows, indent=1) + "\n")
  best = next(row for row in rows if row["best"])
  fileio.write_atomic(os.path.join(out_dir, "best.json"), json.dumps(
      winner_config(config, best["blocks"]), indent=1) + "\n")
  plot(rows, os.path.join(out_dir, "results.png"))


def winner_config(config, blocks):
  """best.json: the network a trial of `blocks` trained, as config keys.

  The trial config's `model.name` and its `ARCHITECTURE_KEYS` (the blocks,
  the space's width and depth coefficients; the registry's where the trial
  kept them), so `main.py --config_file=best.json` trains the searched
  candidate. Left out: the class count (the data's: `--dataset_cfg`), the
  proxy's image size and stages, and the recipe's regularization (the
  winner trains with its own).
  """
  model = trial_lib.proxy_config(config, blocks).model
  spec = registry.get_model_spec(model.name)
  return {"model": {"name": model.name, **{
      key: getattr(spec, key) if model[key] is None else model[key]
      for key in ARCHITECTURE_KEYS}}}


def plot(rows, path):
  """Accuracy against step time, point area by parameters, best marked."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  figure, axes = pyplot.subplots(figsize=(6, 4.5))
  largest = max(row["params"] for row in rows)
  for row in rows:
    axes.scatter(row["step_time"] * 1000, row["accuracy"],
                 s=20 + 300 * row["params"] / largest,
                 c="tab:red" if row["best"] else (
                     "black" if row["trial"] == "backbone" else "tab:blue"),
                 alpha=0.7)
    if row["best"] or row["trial"] == "backbone":
      axes.annotate("best" if row["best"] else "backbone",
                    (row["step_time"] * 1000, row["accuracy"]),
                    textcoords="offset points", xytext=(6, 6))
  axes.set_xlabel("training step time (ms, this device)")
  axes.set_ylabel("minival top-1")
  axes.set_title("Architecture search: point area ~ parameters")
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  pyplot.close(figure)
