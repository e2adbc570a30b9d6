"""docs/recipes.md is current, and every difference from the reference is
documented (effnetv2_tf.tools.recipes_doc)."""

import pytest

from effnetv2_tf.tools import recipes_doc
from effnetv2_tf.tools import recipes_reference as tables


def test_committed_doc_is_current():
  with open(recipes_doc.DOC) as f:
    committed = f.read()
  assert committed == recipes_doc.render(), (
      "docs/recipes.md is stale: run python -m effnetv2_tf.tools.recipes_doc")


def test_an_undocumented_reference_difference_is_an_error(monkeypatch):
  file, imagenet, *rest = tables.REFERENCE_DATASETS["epochs"]
  monkeypatch.setitem(tables.REFERENCE_DATASETS, "epochs",
                      (file, imagenet + 1, *rest))
  with pytest.raises(recipes_doc.UndocumentedDifference,
                     match=r"dataset/imagenet/epochs: ours 350, "
                           r"reference 351"):
    recipes_doc.render()


def test_a_stage_difference_is_an_error(monkeypatch):
  sizes, ram, mix = tables.REF_STAGES["efficientnetv2-s"]
  monkeypatch.setitem(tables.REF_STAGES, "efficientnetv2-s",
                      ((170,) + sizes[1:], ram, mix))
  with pytest.raises(recipes_doc.UndocumentedDifference) as err:
    recipes_doc.render()
  # Under the reference preset it is undocumented; under the paper preset
  # D1 (the paper's stages) already covers every stage difference.
  assert "imagenet/efficientnetv2-s/reference/stage1/size" in str(err.value)
  assert "/paper/" not in str(err.value)


def test_removing_a_deviation_makes_its_differences_errors(monkeypatch):
  kept = tuple(d for d in tables.DEVIATIONS if d[0] != "D5")
  monkeypatch.setattr(tables, "DEVIATIONS", kept)
  with pytest.raises(recipes_doc.UndocumentedDifference,
                     match="dataset/imagenet21k/eval_batch_size"):
    recipes_doc.render()


def test_a_deviation_covering_nothing_is_an_error(monkeypatch):
  stale = ("D99", "reference", ("dataset/imagenet/no_such_field",), "", "")
  monkeypatch.setattr(tables, "DEVIATIONS",
                      tables.DEVIATIONS + (stale,))
  with pytest.raises(recipes_doc.StaleDeviation, match="D99"):
    recipes_doc.render()


def test_check_reports_a_stale_file_as_a_diff(tmp_path):
  path = tmp_path / "recipes.md"
  path.write_text(recipes_doc.render())
  assert recipes_doc.stale_diff(str(path)) == ""
  path.write_text(recipes_doc.render().replace("| 350 |", "| 349 |", 1))
  diff = recipes_doc.stale_diff(str(path))
  assert diff.startswith("--- docs/recipes.md (committed)")
  assert "-| Epochs | 349 |" in diff and "+| Epochs | 350 |" in diff
