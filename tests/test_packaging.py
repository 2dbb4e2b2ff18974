"""The package as a user installs it: a wheel (`pip install .`, not editable) carries the
configs, and `--config=tiny` / `videomar:tiny` find them with no checkout in sight.

Offline and fast: the wheel is built without build isolation, and the fresh venv it goes
into sees this interpreter's site-packages (the dependencies) through a `.pth` line, which
does not run the `.pth` files there (so not the editable install's finder either).
"""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import load_config as load_the_file

from videomar_jax import config_files
from videomar_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py"))


def _env():
  """No PYTHONPATH: nothing of the checkout may leak into the installed package's runs."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _build_wheel(tmp_path: pathlib.Path) -> pathlib.Path:
  """A wheel of a copy of the sources (a build writes build/ and *.egg-info next to
  setup.py, and a stale build/ of the checkout would leak old files into the wheel)."""
  src = tmp_path / "src"
  ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
  for folder in ("videomar_jax", "configs"):
    shutil.copytree(REPO / folder, src / folder, ignore=ignore)
  shutil.copy(REPO / "setup.py", src / "setup.py")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "--no-index", "-w", str(tmp_path / "wheels"),
                  str(src)], check=True, capture_output=True, text=True, timeout=300,
                 cwd=tmp_path, env=_env())
  (wheel,) = (tmp_path / "wheels").glob("videomar_jax-*.whl")
  return wheel


def _fresh_venv(path: pathlib.Path) -> pathlib.Path:
  """A venv whose own site-packages comes first and whose dependencies are this
  interpreter's (its site-packages folders, none of the checkout)."""
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                 timeout=120)
  python = path / "bin" / "python"
  purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                            "print(sysconfig.get_paths()['purelib'])"], check=True,
                           capture_output=True, text=True, env=_env()).stdout.strip()
  # The site-packages folders themselves, wherever they are (launch/_env.sh puts the venv
  # inside the checkout): a .pth file's lines only extend sys.path, the .pth files in those
  # folders (the editable install's pointer to the checkout) are not run.
  deps = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
  assert deps, sys.path
  pathlib.Path(purelib, "_videomar_test_deps.pth").write_text("\n".join(deps) + "\n")
  return python


def test_a_wheel_installed_elsewhere_finds_its_configs_by_name(tmp_path):
  wheel = _build_wheel(tmp_path)
  names = zipfile.ZipFile(wheel).namelist()
  for name in CONFIGS:
    assert f"videomar_jax/configs/{name}" in names, names
  assert "videomar_jax/config_files.py" in names

  python = _fresh_venv(tmp_path / "venv")
  subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                  "--ignore-installed", str(wheel)], check=True, capture_output=True,
                 text=True, timeout=300, cwd=tmp_path, env=_env())
  elsewhere = tmp_path / "elsewhere"  # no configs/ here: only the installed ones
  elsewhere.mkdir()
  probe = subprocess.run(
      [str(python), "-c", "import videomar_jax\nfrom videomar_jax import config_files\n"
       "print(videomar_jax.__file__)\nprint(config_files.configs_dir())\n"
       "print(config_files.load_config('videomar:small').preset)\n"
       "print(config_files.load_config('tokenizer').variant)"],
      check=True, capture_output=True, text=True, timeout=300, cwd=elsewhere, env=_env())
  package_file, configs_dir, preset, variant = probe.stdout.split()
  venv = (tmp_path / "venv").resolve()
  assert pathlib.Path(package_file).resolve().is_relative_to(venv), probe.stdout
  assert (pathlib.Path(configs_dir).resolve()
          == pathlib.Path(package_file).resolve().parent / "configs")
  assert (preset, variant) == ("small", "CV4x8x8-narrow")

  videomar = tmp_path / "venv" / "bin" / "videomar"  # the wheel's console script
  info = subprocess.run([str(videomar), "info", "--config=tiny"], capture_output=True,
                        text=True, timeout=300, cwd=elsewhere, env=_env())
  assert info.returncode == 0, info.stderr
  assert "config preset: tiny" in info.stdout and "total" in info.stdout
  # A packaged config that loads its sibling by path (configs/moving_mnist.py -> videomar.py).
  info = subprocess.run([str(videomar), "info", "--config=moving_mnist"], capture_output=True,
                        text=True, timeout=300, cwd=elsewhere, env=_env())
  assert info.returncode == 0, info.stderr
  assert "64x64" in info.stdout, info.stdout


def test_short_names_resolve_to_the_packaged_files(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ in the working directory
  videomar, tokenizer = (str(REPO / "configs" / f) for f in ("videomar.py", "tokenizer.py"))
  assert config_files.configs_dir() == str(REPO / "configs")  # a checkout: its configs/
  assert config_files.names() == ["moving_mnist", "tokenizer", "videomar"]
  assert config_files.resolve("tiny") == f"{videomar}:tiny"
  assert config_files.resolve("videomar:paper") == f"{videomar}:paper"
  assert config_files.resolve("videomar") == videomar
  assert config_files.resolve("tokenizer:CV8x8x8") == f"{tokenizer}:CV8x8x8"
  # A path, existing or not, is left to the file loader (and its errors) as before.
  for spec in ("configs/videomar.py:tiny", "/nowhere/x.py:tiny", "mine.py"):
    assert config_files.resolve(spec) == spec
  (tmp_path / "tiny").write_text("def get_config():\n  return None\n")
  assert config_files.resolve("tiny") == "tiny"  # an existing file wins over a short name
  with pytest.raises(ConfigError, match=r"--config=videomr:tiny: 'videomr' is neither a "
                     r"file nor a packaged config; the packaged configs are moving_mnist, "
                     r"tokenizer, videomar"):
    config_files.resolve("videomr:tiny")


def test_load_config_is_the_locked_config_of_the_command_line():
  config = config_files.load_config("tiny")
  assert config.to_dict() == load_the_file("tiny").to_dict()
  with pytest.raises(AttributeError, match="lrr"):
    config.optim.lrr = 1e-3
  with pytest.raises(ConfigError, match="unknown preset 'huge'"):
    config_files.load_config("huge")
