"""Every import inside the package points down the layers (docs/design.md, "Folder map").

A module may import its own folder and the folders listed below its own; nothing else, at
module level or inside a function. The table is the architecture: to add a folder, give it
a row; to add an import that breaks it, move the code instead.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "videomar_jax"

# folder -> the folders it may import (besides itself). Bottom first.
ALLOWED = {
    "errors": set(),
    # Finds the config files shipped with the package (they are loaded by path, as user
    # files are: not imports).
    "config_files": {"errors"},
    "io": {"errors"},
    "diffusion": {"errors"},
    "models": {"errors", "io", "diffusion"},
    "losses": {"errors", "io", "diffusion", "models"},
    "tokenizers": {"errors", "io", "diffusion", "models"},
    "data": {"errors", "io", "tokenizers"},
    "parallel": {"errors", "models"},
    "train": {"errors", "io", "diffusion", "models", "losses", "tokenizers", "data",
              "parallel"},
    "sampling": {"errors", "io", "diffusion", "models", "tokenizers"},
    "eval": {"errors", "io", "models", "tokenizers", "data", "sampling"},
    "interop": {"errors", "io", "diffusion", "models", "tokenizers", "train"},
    "tools": {"errors", "io", "diffusion", "models", "losses", "tokenizers", "data",
              "parallel", "train", "sampling"},
    "cli": {"errors", "config_files", "io", "diffusion", "models", "losses", "tokenizers",
            "data", "parallel", "train", "sampling", "eval", "interop", "tools"},
}


def _unit(path: pathlib.Path) -> str:
  """The folder of a module (`errors.py` at the top level is a unit of its own)."""
  return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imported_units(source: str, package: tuple[str, ...]):
  """(line, unit) of every videomar_jax import in `source`, a module of the subpackage
  `package` (relative imports resolved against it)."""
  tree = ast.parse(source)
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package[:len(package) - node.level + 1]
        module = ".".join(("videomar_jax",) + base + ((node.module,) if node.module else ()))
      else:
        module = node.module or ""
      names = ([f"{module}.{alias.name}" for alias in node.names]
               if module == "videomar_jax" else [module])
    for name in names:
      parts = name.split(".")
      if parts[0] == "videomar_jax" and len(parts) > 1:
        yield node.lineno, parts[1]


def _modules():
  return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"
                or p.parent != PACKAGE)


def test_every_folder_has_a_row():
  units = {_unit(p) for p in _modules()}
  assert units <= set(ALLOWED), f"folders without a layering row: {units - set(ALLOWED)}"


def test_the_table_has_no_cycle():
  for unit, allowed in ALLOWED.items():
    for other in allowed:
      assert unit not in ALLOWED[other], f"{unit} and {other} may import each other"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
  unit = _unit(path)
  wrong = [f"{path.relative_to(PACKAGE.parent)}:{line} imports videomar_jax.{other}"
           for line, other in _imported_units(path.read_text(),
                                              path.relative_to(PACKAGE).parent.parts)
           if other != unit and other not in ALLOWED[unit]]
  assert not wrong, ("imports against the layering (tests/test_layering.py ALLOWED):\n"
                     + "\n".join(wrong))


def test_the_check_sees_every_kind_of_import():
  source = ("import videomar_jax.io.video_io\n"
            "from videomar_jax import errors\n"
            "from ..diffusion import gaussian\n"
            "def f():\n  from videomar_jax.train import setup\n")
  assert {u for _, u in _imported_units(source, ("models",))} == {
      "io", "errors", "diffusion", "train"}
