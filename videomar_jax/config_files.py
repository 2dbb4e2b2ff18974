"""The config files that ship with the package, and the short `--config` names of them.

The configs are the checkout's top-level `configs/` folder; setup.py installs that folder as
`videomar_jax/configs` (package_dir), so an installed package (`pip install .`, no checkout
at hand) carries them. A `--config` value, `NAME[:ARG]`, is read as:

  path/to/file.py[:ARG]   an existing file (or anything with a `/` or ending in `.py`):
                          that file, as ml_collections reads it (unchanged)
  videomar[:ARG]          the packaged `videomar.py` (get_config(ARG)); `tokenizer[:ARG]`
                          likewise: any `<stem>` of the packaged configs
  tiny                    a bare name that is no packaged config: a preset of `videomar`
                          (`videomar:tiny`)

`load_config("videomar:small")` gives from Python (a notebook, say) the config that
`--config=videomar:small` gives the command line.
"""

import importlib.util
import os

from videomar_jax.errors import ConfigError

# The config a bare preset name (`--config=tiny`) belongs to.
DEFAULT_CONFIG = "videomar"


def configs_dir() -> str | None:
  """The folder of the packaged configs: `videomar_jax/configs` of an installed package,
  else the `configs/` beside the package (a checkout, or an editable install of one)."""
  package = os.path.dirname(os.path.abspath(__file__))
  for folder in (os.path.join(package, "configs"),
                 os.path.join(os.path.dirname(package), "configs")):
    if os.path.isfile(os.path.join(folder, f"{DEFAULT_CONFIG}.py")):
      return folder
  return None


def names() -> list[str]:
  """The packaged configs by file stem: `videomar`, `tokenizer`, ..."""
  folder = configs_dir()
  if folder is None:
    return []
  return sorted(f[:-3] for f in os.listdir(folder)
                if f.endswith(".py") and not f.startswith("_"))


def packaged_path(name: str) -> str | None:
  """The file of the packaged config `name` (a stem), or None."""
  return os.path.join(configs_dir(), f"{name}.py") if name in names() else None


def hint() -> str:
  """What a `--config` can name, for error messages."""
  found = names()
  if not found:
    return "this videomar_jax has no packaged configs: give a config file's path"
  return (f"the packaged configs are {', '.join(found)} (--config=NAME[:ARG]; a bare "
          f"preset, --config=tiny, is {DEFAULT_CONFIG}'s), else give a config file's path")


def _is_path(name: str) -> bool:
  return not name or "/" in name or os.sep in name or name.endswith(".py")


def is_short_name(spec: str) -> bool:
  """Whether `spec` names a packaged config rather than a file."""
  name = spec.partition(":")[0]
  return not os.path.isfile(name) and not _is_path(name)


def resolve(spec: str) -> str:
  """`spec` (a `--config` value) with a short name replaced by the packaged file's path;
  a file's path as it is. Raises ConfigError for a short name that names nothing."""
  if not is_short_name(spec):
    return spec
  name, sep, arg = spec.partition(":")
  path = packaged_path(name)
  if path is not None:
    return path + sep + arg
  default = packaged_path(DEFAULT_CONFIG)
  if not sep and default is not None:
    return f"{default}:{name}"  # its get_config says if there is no such preset
  raise ConfigError(f"--config={spec}: {name!r} is neither a file nor a packaged config; "
                    f"{hint()}.")


def load_file(spec: str):
  """`get_config(ARG)` of the file `path[:ARG]`, called as ml_collections calls it (no
  `:` -> get_config(), `path:` -> get_config(''))."""
  path, *arg = spec.split(":", 1)
  module_spec = importlib.util.spec_from_file_location("_videomar_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(*arg)


def load_config(spec: str = f"{DEFAULT_CONFIG}:tiny"):
  """The config `--config=spec` gives the command line (before `--config.KEY=VALUE`
  overrides), locked as there: a misspelled key is an error. `spec` is a short name
  (`tiny`, `videomar:small`, `tokenizer`) or a file's `path[:ARG]`."""
  path = resolve(spec)
  if not os.path.isfile(path.partition(":")[0]):
    raise ConfigError(f"no config file at {path.partition(':')[0]}; {hint()}.")
  config = load_file(path)
  config.lock()
  return config
