"""Config mistakes at the command line: one line that names the key or file (exit 1), the
traceback only when asked for (--verbosity=1 or VIDEOMAR_TRACEBACK=1)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/videomar.py:tiny"


def _cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "videomar_jax.cli.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


def _one_error_line(result):
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("ERROR: ")]
  assert len(lines) == 1, result.stderr
  return lines[0]


@pytest.mark.parametrize("override, expected", [
    ("--config.optim.lrr=3e-3", "config.optim has no key 'lrr'; did you mean 'lr'?"),
    ("--config.modle.width=64", "config has no key 'modle'; did you mean 'model'?"),
    ("--config.stages[0].stepz=5", "config.stages[0] has no key 'stepz'; did you mean 'steps'?"),
    ("--config.stages[5].steps=3", "config.stages has 2 entries (indices 0 to 1)"),
    ("--config.model.num_heads=5", "model.width 128 is not divisible by model.num_heads 5"),
    ("--config.loss.mode=mar_typo", "loss.mode 'mar_typo' not in"),
    ("--config.train.profile_steps=5,3", "config.train.profile_steps must be two step "
     "numbers start,stop with 0 <= start < stop"),
])
def test_a_bad_override_is_one_line_naming_the_key(override, expected):
  line = _one_error_line(_cli("info", TINY, override))
  assert expected in line
  if "has no key" in expected or "entries" in expected:
    assert line.startswith(f"ERROR: {override.split('=')[0]}: ")


def test_a_typo_inside_a_config_file_names_the_file_line_and_the_key(tmp_path):
  path = tmp_path / "my_config.py"
  path.write_text(
      "import importlib.util\n"
      f"_spec = importlib.util.spec_from_file_location('base', {REPO + '/configs/videomar.py'!r})\n"
      "base = importlib.util.module_from_spec(_spec)\n"
      "_spec.loader.exec_module(base)\n"
      "def get_config(arg='tiny'):\n"
      "  config = base.get_config(arg)\n"
      "  config.optim.lr = 1e-3  # an existing key: fine\n"
      "  config.optim.lrr = 3e-3  # a typo: the preset is locked\n"
      "  return config\n")
  line = _one_error_line(_cli("info", f"--config={path}:tiny"))
  assert f"{path}, line 8" in line and '"lrr"' in line and 'Did you mean "lr"' in line


@pytest.mark.parametrize("change, expected", [
    ("d['optim']['lrr'] = 3e-3",
     "config key 'optim.lrr' is not a setting; did you mean 'lr'?"),
    ("d['stages'][1]['stepz'] = 5",
     "config key 'stages[].stepz' is not a setting; did you mean 'steps'?"),
    ("del d['optim']['ema_decay']", "the config lacks 1 setting(s) the presets have: "
     "optim.ema_decay"),
])
def test_a_config_file_built_from_scratch_is_checked_against_the_presets(tmp_path, change,
                                                                         expected):
  """A file that returns its own (unlocked) ConfigDict gets the same check: a key the
  presets lack, or one they have and it lacks, is one line before any work."""
  path = tmp_path / "from_scratch.py"
  path.write_text(
      "import importlib.util\n"
      "import ml_collections\n"
      f"_spec = importlib.util.spec_from_file_location('base', {REPO + '/configs/videomar.py'!r})\n"
      "base = importlib.util.module_from_spec(_spec)\n"
      "_spec.loader.exec_module(base)\n"
      "def get_config(arg='tiny'):\n"
      "  d = base.get_config(arg).to_dict()\n"
      f"  {change}\n"
      "  return ml_collections.ConfigDict(d)\n")
  assert expected in _one_error_line(_cli("info", f"--config={path}:tiny"))


@pytest.mark.parametrize("how", ["--verbosity=1", "VIDEOMAR_TRACEBACK=1"])
def test_the_traceback_is_there_when_asked_for(how):
  args, env = ("info", TINY, "--config.stages[5].steps=3"), {}
  if how.startswith("--"):
    args += (how,)
  else:
    env = dict([how.split("=")])
  result = _cli(*args, env=env)
  assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("command, args, expected", [
    ("info", ("--config.model.width=-64",), "config.model.width=-64 must be > 0"),
    ("info", ("--info_num_frames=-5",), "--info_num_frames=-5 must be >= 1"),
    ("info", ("--config.stages[1].resolution=30",),
     "config.stages[1].resolution 30 is not divisible by the tokenizer stride"),
    ("info", ("--config.tokenizer.name=cosmos", "--config.tokenizer.variant=CV8x8x8"),
     "config.stages[0].num_frames: num_frames=4 does not fit temporal_stride=8"),
    ("plan", ("--mesh=data:0",), "bad mesh entry 'data:0'"),
    ("plan", ("--mesh=data:1", "--config.stages[0].steps=0"),
     "config.stages[0].steps must be > 0"),
])
def test_info_and_plan_reject_what_train_rejects_before_any_work(command, args, expected):
  """The same validation as `train`, first: `plan` fails in seconds, not after compiling."""
  assert expected in _one_error_line(_cli(command, TINY, *args))


def test_a_missing_config_file_is_one_line(tmp_path):
  line = _one_error_line(_cli("info", f"--config={tmp_path}/nope.py:tiny"))
  assert f"no config file at {tmp_path}/nope.py" in line


def test_an_unknown_preset_is_one_line():
  line = _one_error_line(_cli("info", "--config=configs/videomar.py:huge"))
  assert "unknown preset 'huge'; choose one of ['base', 'paper', 'sampler_bench', 'small', 'tiny'" in line


# Short names of the packaged configs (videomar_jax/config_files.py): the same file, the
# same messages, and a name that names nothing is one line listing the names.

def test_a_short_config_name_is_the_packaged_file_with_its_overrides():
  result = _cli("info", "--config", "small", "--config.model.depth=2")
  assert result.returncode == 0, result.stderr
  assert "config preset: small" in result.stdout
  line = _one_error_line(_cli("info", "--config=videomar:tiny", "--config.optim.lrr=3e-3"))
  assert line.startswith("ERROR: --config.optim.lrr: config.optim has no key 'lrr'")


@pytest.mark.parametrize("spec, expected", [
    ("videomr:tiny", "--config=videomr:tiny: 'videomr' is neither a file nor a packaged "
     "config; the packaged configs are moving_mnist, tokenizer, videomar"),
    ("huge", "unknown preset 'huge'; choose one of ['base', 'paper', 'sampler_bench', 'small', 'tiny'"),
])
def test_a_short_name_that_names_nothing_is_one_line_listing_the_configs(spec, expected):
  line = _one_error_line(_cli("info", f"--config={spec}"))
  assert expected in line and "the packaged configs are moving_mnist, tokenizer, videomar" in line
