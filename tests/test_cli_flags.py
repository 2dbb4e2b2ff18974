"""Per-command flags: a flag of another command is one error line, `--help` lists the
command's own flags with their meaning there, and every flag a handler reads is in its row
of `cli/command_flags.COMMAND_FLAGS`."""

import ast
import os
import subprocess
import sys

import pytest

from videomar_jax.cli import command_flags
from videomar_jax.cli import main  # pylint: disable=unused-import  (defines the flags)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_FILES = ["main.py", "tokenizer_commands.py", "torch_commands.py"]


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "videomar_jax.cli.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _flags_read_by_handlers() -> dict[str, set[str]]:
  """command -> every flag its handler reads: module-level flag holders (`_X.value`),
  `flags.FLAGS["name"]` and `_flag("name", ...)`, following calls to the module's own
  functions (not `_require`, which only reports on the flag it is handed)."""
  holders, functions, handlers = {}, {}, {}
  for name in CLI_FILES:
    tree = ast.parse(open(os.path.join(REPO, "videomar_jax", "cli", name)).read())
    for node in tree.body:
      if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
          and getattr(node.value.func, "attr", "").startswith("DEFINE")):
        holders[node.targets[0].id] = node.value.args[0].value
      elif isinstance(node, ast.FunctionDef):
        functions[node.name] = node
      elif (isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "HANDLERS"
            and isinstance(node.value, ast.Dict)):
        handlers.update({k.value: v.id for k, v in zip(node.value.keys, node.value.values)
                         if k is not None})

  def reads(function, seen):
    if function in seen or function not in functions or function == "_require":
      return set()
    seen.add(function)
    found = set()
    for node in ast.walk(functions[function]):
      if isinstance(node, ast.Name) and node.id in holders:
        found.add(holders[node.id])
      elif isinstance(node, ast.Name):
        found |= reads(node.id, seen)
      elif (isinstance(node, ast.Subscript) and getattr(node.value, "attr", "") == "FLAGS"
            and isinstance(node.slice, ast.Constant)):
        found.add(node.slice.value)
      elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_flag"
            and node.args and isinstance(node.args[0], ast.Constant)):
        found.add(node.args[0].value)
    return found

  return {command: reads(function, set()) for command, function in handlers.items()}


def test_every_flag_a_command_reads_is_in_its_row():
  read = _flags_read_by_handlers()
  assert set(read) == set(command_flags.COMMAND_FLAGS)
  for command, names in read.items():
    missing = names - set(command_flags.COMMAND_FLAGS[command]) - {"verbosity"}
    assert not missing, f"`{command}` reads {sorted(missing)} but its row lacks them"


def test_a_flag_of_another_command_is_one_error_line():
  result = _cli("info", "--config=configs/videomar.py:tiny", "--num_balls=3", "--image=x.png")
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
  assert len(errors) == 1, result.stderr
  assert "`videomar info` does not take --image, --num_balls; its flags: --config" in errors[0]


def test_help_lists_the_command_flags_with_their_meaning_there():
  build = _cli("data", "build", "--help")
  assert build.returncode == 0, build.stderr
  assert ("--num_frames: Frames per stored clip (0 = config.data.num_frames, 16; "
          "moving_mnist: 20)." in build.stdout)
  assert "--path: The folder of videos (--dataset=folder)" in build.stdout
  assert "--image" not in build.stdout and "--workdir" not in build.stdout
  sample = _cli("sample", "--help")
  assert "--num_frames: Frames of the output video, given ones included" in sample.stdout
  assert "--num_balls" not in sample.stdout


@pytest.mark.parametrize("command", sorted(command_flags.COMMAND_FLAGS))
def test_usage_names_only_existing_flags(command):
  text = command_flags.usage(command)  # a name absl does not define raises here
  for name in command_flags.COMMAND_FLAGS[command]:
    assert f"\n  --{name}: " in text
