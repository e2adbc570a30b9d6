"""README.md's results tables match benchmarks/results/*.json.

benchmarks/readme_tables.py uses only the standard library; these tests
import it by path and start it once in a fresh interpreter, which takes a
fraction of a second.
"""

import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "readme_tables.py"


def _load():
  spec = importlib.util.spec_from_file_location("readme_tables", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


readme_tables = _load()


def test_committed_readme_is_current():
  assert readme_tables.main(["--check"]) == 0


def test_script_runs_without_tensorflow():
  code = (f"import runpy, sys; sys.argv = [{str(SCRIPT)!r}, '--check']\n"
          "try:\n"
          f"  runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
          "except SystemExit as e:\n"
          "  assert e.code == 0, e.code\n"
          "assert 'tensorflow' not in sys.modules\n")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                 capture_output=True)


# (results file, path of a number in it, the new value)
CHANGES = [
    ("drivers_digits.json", ("results", 0, "eval", "top1"), 0.5),
    ("train_step.json", ("results", 2, "images_per_sec"), 99.0),
    ("inference.json", ("results", 1, "ms_per_call"), 1.0),
    ("memory.json", ("results", -1, "ours_mib"), 9999.0),
    ("progressive.json", ("results", 0, "stages", 0, "images_per_sec"), 1.0),
    ("peers.json", ("results", 3, "images_per_sec"), 1.0),
]


@pytest.mark.parametrize("name,path,value", CHANGES,
                         ids=[c[0] for c in CHANGES])
def test_a_changed_number_makes_the_check_fail(tmp_path, capsys, name, path,
                                               value):
  results = tmp_path / "results"
  shutil.copytree(ROOT / "benchmarks" / "results", results)
  data = json.loads((results / name).read_text())
  node = data
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = value
  (results / name).write_text(json.dumps(data))
  readme = tmp_path / "README.md"
  shutil.copy(ROOT / "README.md", readme)
  flags = ["--results_dir", str(results), "--readme", str(readme)]

  assert readme_tables.main(["--check"] + flags) == 1
  assert "stale" in capsys.readouterr().out
  # Rewriting brings the copy up to date and changes nothing else.
  assert readme_tables.main(flags) == 0
  assert readme_tables.main(["--check"] + flags) == 0
  old = (ROOT / "README.md").read_text().splitlines()
  new = readme.read_text().splitlines()
  assert len(old) == len(new)
  assert sum(a != b for a, b in zip(old, new)) in (1, 2, 3)


def test_a_missing_marker_is_an_error(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text((ROOT / "README.md").read_text().replace(
      "<!-- /table:speed -->", ""))
  with pytest.raises(SystemExit, match="table:speed"):
    readme_tables.main(["--check", "--readme", str(readme)])
