"""User errors: every error class of the project derives from the one base
class, and an entry point reports one as a single line and exit status 1."""

import ast
import builtins
import pathlib

import pytest

from effnetv2_tf import errors

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILTIN_ERRORS = {name for name, value in vars(builtins).items()
                  if isinstance(value, type) and issubclass(value,
                                                            BaseException)}


def _classes():
  """{class name: [base names, last dotted part]} of the project's code."""
  paths = list((ROOT / "effnetv2_tf").rglob("*.py")) + [
      ROOT / f"{name}.py" for name in ("main", "main_tf2", "infer")]
  found = {}
  for path in paths:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ClassDef):
        found[f"{path.relative_to(ROOT)}:{node.name}"] = [
            ast.unparse(base).split(".")[-1] for base in node.bases]
  return found


def test_every_error_class_is_a_user_error():
  classes = _classes()
  by_name = {key.split(":")[1]: bases for key, bases in classes.items()}
  user = {"UserError"}
  exceptions = set(BUILTIN_ERRORS)
  for _ in range(len(classes)):  # to the fixed point of the hierarchy
    for name, bases in by_name.items():
      if set(bases) & exceptions:
        exceptions.add(name)
      if set(bases) & user:
        user.add(name)
  project_errors = {key for key, bases in classes.items()
                    if key.split(":")[1] in exceptions - BUILTIN_ERRORS}
  assert "infer.py:InferError" in project_errors  # the scan sees them
  assert sorted(key for key in project_errors
                if key.split(":")[1] not in user) == []


def test_reported_prints_one_line_and_exits_1(capsys):
  with pytest.raises(SystemExit) as exit_info:
    with errors.reported("tool"):
      raise errors.MissingInputError("--data_dir /nowhere does not exist.")
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == (
      "tool: error: --data_dir /nowhere does not exist.\n")


def test_other_exceptions_keep_their_traceback():
  with pytest.raises(KeyError):
    with errors.reported("tool"):
      raise KeyError("a bug")


def test_a_missing_input_is_still_a_file_not_found_error():
  with pytest.raises(FileNotFoundError):
    raise errors.MissingInputError("gone")
