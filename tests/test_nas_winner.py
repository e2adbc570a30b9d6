"""The search's best.json: the README's train-the-winner command builds the
network the search measured (issue 37 item 6)."""

import json
import types

import pytest

from configs import nas as nas_configs
from effnetv2_tf import cli
from effnetv2_tf.data import sources
from effnetv2_tf.nas import search
from effnetv2_tf.nas import space as space_lib
from effnetv2_tf.runs import run_dir

# Trial 1 of the README's digits demo (benchmarks/results/nas_digits.json):
# its blocks and the parameters the trial counted. Built from a best.json
# without the space's width 0.25, it had 1,962,490.
TRIAL_1 = ("r1_k3_s1_e1_i32_o16_c1", "r1_k3_s2_e1_i16_o32_se0.25",
           "r1_k3_s2_e1_i32_o48_c1", "r1_k3_s2_e1_i48_o96_se0.25",
           "r2_k3_s1_e1_i96_o112_c1", "r2_k5_s2_e1_i112_o192_c1")
TRIAL_1_PARAMS = 135_768


def _row(trial, blocks, params, best):
  """A results row as `search.results` makes it."""
  return {"trial": trial, "accuracy": 0.9, "step_time": 0.02,
          "params": params, "reward": 1.0, "seconds": 1.0,
          "blocks": list(blocks), "best": best}


def _readme_winner(best_json, tmp_path):
  """The network of the README's `python main.py --config_file=best.json
  --dataset_cfg=digits --model_dir=...`, built as main.py builds it: the
  drivers' config, the data's class count, the trainer's model."""
  values = types.SimpleNamespace(
      # main.py's --model default; best.json's model.name replaces it.
      model="efficientnetv2-s", dataset_cfg="digits", hparam_str="",
      config_file=str(best_json), data_dir=None, steps_per_loop=None,
      mixed_precision=False, deterministic=False, mode="train_and_eval",
      init_checkpoint=None)
  draft = cli.draft_from_flags(values, str(tmp_path / "nas-best"))
  source = sources.from_config(draft.config)
  config = draft.lock(values, source)
  return run_dir.model_from_config(config.model, source.num_classes)


def test_best_json_is_the_searched_digits_candidate(tmp_path):
  config = nas_configs.get_config("digits")
  backbone = space_lib.backbone_blocks(config.space)
  search.write_outputs([_row("backbone", backbone, 449_268, False),
                        _row(1, TRIAL_1, TRIAL_1_PARAMS, True)],
                       config, str(tmp_path))
  best = json.loads((tmp_path / "best.json").read_text())
  # The digits space's quarter width, and the layer counts as sampled.
  assert best == {"model": {
      "name": "efficientnetv2-b0", "width_coefficient": 0.25,
      "depth_coefficient": 1.0, "blocks": " ".join(TRIAL_1)}}
  model = _readme_winner(tmp_path / "best.json", tmp_path)
  assert model.count_params() == TRIAL_1_PARAMS


@pytest.mark.slow
def test_the_winner_of_a_search_has_the_trials_parameters(tmp_path):
  config = nas_configs.get_config("digits")
  # One training step: the parameter counts do not depend on training.
  config.proxy.update(steps=1, image_size=16, timing_steps=1)
  out_dir = tmp_path / "nas"
  search.run(config, str(out_dir), 1, echo=lambda line: None)
  rows = json.loads((out_dir / "results.json").read_text())
  assert [row["trial"] for row in rows] == ["backbone", 0]
  best = next(row for row in rows if row["best"])
  model = _readme_winner(out_dir / "best.json", tmp_path)
  assert model.count_params() == best["params"]
  # So is each row's network, made the winner (a candidate, the backbone).
  (tmp_path / "each").mkdir()
  for row in rows:
    marked = [dict(other, best=other is row) for other in rows]
    search.write_outputs(marked, config, str(tmp_path / "each"))
    model = _readme_winner(tmp_path / "each" / "best.json", tmp_path)
    assert model.count_params() == row["params"], row["trial"]
