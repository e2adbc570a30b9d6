"""The package's layers: no module imports a layer above its own, and the
entry points that only read runs start without the training stack."""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Lowest first. A module may import its own layer and those below it.
# Each setting is defined beside the code that owns it (a model setting in
# models/, an optimizer name in training/), so the config that gathers them
# (configs/ and its builder, effnetv2_tf.config) sits above all of those.
LAYERS = (
    ("base", ("effnetv2_tf.errors", "effnetv2_tf.tpu_env",
              "effnetv2_tf.quiet_start", "effnetv2_tf.startup",
              "effnetv2_tf.fileio", "effnetv2_tf.settings")),
    ("data", ("effnetv2_tf.data",)),
    ("models", ("effnetv2_tf.models",)),
    ("runs", ("effnetv2_tf.runs",)),  # run I/O: what export, infer, plot read
    ("training", ("effnetv2_tf.training",)),
    ("configs", ("configs", "effnetv2_tf.config")),
    ("nas", ("effnetv2_tf.nas",)),  # trials train with the training code
    ("entry", ("effnetv2_tf.driver", "effnetv2_tf.cli", "effnetv2_tf.export",
               "effnetv2_tf.plot", "effnetv2_tf.model_table",
               "effnetv2_tf.tools")),
    ("scripts", ("main", "main_tf2", "infer")),
)
# What reads a run must not start: the loops, the step, the optimizers, the
# strategies, the config builder (it imports the optimizers) or the drivers.
TRAINING_STACK = (
    "effnetv2_tf.training.trainer", "effnetv2_tf.training.custom_loop",
    "effnetv2_tf.training.fit_loop", "effnetv2_tf.training.step",
    "effnetv2_tf.training.optim", "effnetv2_tf.training.fused_optim",
    "effnetv2_tf.training.distribute", "effnetv2_tf.config",
    "effnetv2_tf.driver", "effnetv2_tf.cli")
INPUT_PIPELINE = (
    "effnetv2_tf.data.pipeline", "effnetv2_tf.data.augment",
    "effnetv2_tf.data.image_ops", "effnetv2_tf.data.mix",
    "effnetv2_tf.data.preprocess", "effnetv2_tf.data.sources")


def layer_of(module):
  """Index of `module`'s layer in LAYERS, or None (outside the package)."""
  for index, (_, prefixes) in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return index
  return None


def module_name(path):
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source):
  """Modules an import statement anywhere in `source` names (a `from P
  import n` names P.n, which is a module or a name in P)."""
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield from (f"{node.module}.{alias.name}" for alias in node.names)


def upward_imports(module, source):
  """[(module, imported)] where `module` imports a higher layer."""
  own = layer_of(module)
  return [(module, name) for name in imported_modules(source)
          if layer_of(name) is not None and layer_of(name) > own]


def project_modules():
  paths = [p for p in (ROOT / "effnetv2_tf").rglob("*.py")
           if p.name != "__init__.py" or p.parent.name != "effnetv2_tf"]
  paths += list((ROOT / "configs").glob("*.py"))
  paths += [ROOT / f"{name}.py" for name in ("main", "main_tf2", "infer")]
  return {module_name(p): p.read_text() for p in paths}


def test_every_module_has_a_layer():
  assert [m for m in project_modules() if layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer():
  found = [pair for module, source in project_modules().items()
           for pair in upward_imports(module, source)]
  assert found == []


def test_an_upward_import_is_found():
  # The check itself: data importing training, even inside a function.
  source = ("def f():\n"
            "  from effnetv2_tf.training import optim\n")
  assert upward_imports("effnetv2_tf.data.pipeline", source) == [
      ("effnetv2_tf.data.pipeline", "effnetv2_tf.training.optim")]
  assert upward_imports("effnetv2_tf.training.trainer", source) == []
  assert upward_imports("effnetv2_tf.models.model",
                        "import effnetv2_tf.data.preprocessing\n") == []


def _loaded_after_import(statement):
  """Project modules in sys.modules of a fresh process after `statement`."""
  code = (f"{statement}\nimport json, sys\n"
          "print(json.dumps(sorted(m for m in sys.modules if m.startswith("
          "('effnetv2_tf', 'configs', 'main')))))")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          check=True)
  return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("statement,forbidden", [
    ("from effnetv2_tf import export", TRAINING_STACK),
    ("import infer", TRAINING_STACK),
    ("from effnetv2_tf import plot", TRAINING_STACK + INPUT_PIPELINE),
])
def test_readers_of_runs_start_without_the_training_stack(statement,
                                                          forbidden):
  loaded = _loaded_after_import(statement)
  assert loaded & set(forbidden) == set()
  assert "effnetv2_tf.runs.run_dir" in loaded  # it did import something


def test_the_drivers_do_load_the_training_stack():
  # The same probe sees the stack where it belongs.
  loaded = _loaded_after_import("import main")
  assert {"effnetv2_tf.training.custom_loop", "effnetv2_tf.training.optim",
          "effnetv2_tf.driver"} <= loaded


def import_graph(modules):
  """{module: project modules it imports} (a `from P import n` counts as
  P.n when that is a module, else as P)."""
  graph = {}
  for module, source in modules.items():
    deps = set()
    for name in imported_modules(source):
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name and name != module:
        deps.add(name)
    graph[module] = deps
  return graph


def find_cycle(graph):
  """One import cycle as [a, b, ..., a], or None."""
  state = {}  # module -> "open" while on the path, "done" after

  def visit(module, path):
    state[module] = "open"
    for dep in sorted(graph[module]):
      if state.get(dep) == "open":
        return path[path.index(dep):] + [dep]
      if dep not in state:
        cycle = visit(dep, path + [dep])
        if cycle:
          return cycle
    state[module] = "done"
    return None

  for module in sorted(graph):
    if module not in state:
      cycle = visit(module, [module])
      if cycle:
        return cycle
  return None


def test_no_import_cycle():
  assert find_cycle(import_graph(project_modules())) is None


def test_an_import_cycle_is_found():
  modules = {"a": "import b\n", "b": "def f():\n  from c import x\n",
             "c": "import a\n", "d": "import a\n"}
  assert find_cycle(import_graph(modules)) == ["a", "b", "c", "a"]
