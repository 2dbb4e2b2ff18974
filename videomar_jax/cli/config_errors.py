"""Config mistakes as one line that names the key: a misspelled key or an index past the end
of a list in a `--config.*` override, and an error raised while the config file itself is
loaded (the presets are locked, so a typo in a file built from one fails there).

absl parses the flags, and ml_collections applies the overrides while it does; their
errors arrive as chained tracebacks with escaped quotes. `run_reporting_config_errors`
turns such an error into `ERROR: <what and where>` (exit 1).

A `--config` value may be a short name of a packaged config (`tiny`, `videomar:small`,
`tokenizer:ARG`; see videomar_jax/config_files.py): absl gets the file's path, and the
messages say what the user typed.
"""

import difflib
import os
import re
import sys
import traceback

from videomar_jax import config_files
from videomar_jax.errors import ConfigError

_INDEX = re.compile(r"\[(-?\d+)\]")


def run_reporting_config_errors(run_app, argv: list[str], want_traceback) -> None:
  """`run_app(started, argv)` runs absl's app on argv (which it parses, then calls the
  command, which must call `started()` first); it gets argv with a short `--config` name
  replaced by the packaged file's path. An exception raised before the command started
  came from parsing the flags, i.e. from the config: it prints as one line (exit 1) unless
  a traceback was asked for (`want_traceback()` or --verbosity>=1)."""
  state = {"started": False}
  spec = _config_spec(argv)
  quiet = not (want_traceback() or _verbosity(argv) >= 1)
  app_argv = argv
  if spec is not None:
    try:
      resolved = config_files.resolve(spec)
    except ConfigError as e:  # a short name that names nothing
      if not quiet:
        raise
      print(f"ERROR: {e}", file=sys.stderr, flush=True)
      sys.exit(1)
    app_argv = _with_config_spec(argv, resolved)
    if quiet and os.path.isfile(resolved.partition(":")[0]):
      # absl reports a config file that raises (an unknown preset, a typo at some line) as
      # a multi-line FATAL with the traceback inside: load it first, say it in one line.
      try:
        config_files.load_file(resolved)
      except Exception as e:  # pylint: disable=broad-except
        print(f"ERROR: {describe(argv, e)}", file=sys.stderr, flush=True)
        sys.exit(1)
  try:
    run_app(lambda: state.update(started=True), app_argv)
  except Exception as e:  # pylint: disable=broad-except
    if state["started"] or want_traceback() or _verbosity(argv) >= 1:
      raise
    print(f"ERROR: {describe(argv, e)}", file=sys.stderr, flush=True)
    sys.exit(1)


def _verbosity(argv: list[str]) -> int:
  for arg in argv:
    m = re.fullmatch(r"--(?:verbosity|v)=(-?\d+)", arg)
    if m:
      return int(m.group(1))
  return 0


def _clean(error: BaseException) -> str:
  """ml_collections wraps KeyErrors in AttributeErrors: strip the quoting and escapes."""
  text = str(error)
  for _ in range(2):
    text = text.strip("'\"").replace("\\'", "'").replace('\\"', '"').replace("\\n", " ")
  return " ".join(text.split())


def _config_spec(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg[len("--config="):]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _with_config_spec(argv: list[str], spec: str) -> list[str]:
  """argv with its (first) `--config` value replaced by `spec`."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = f"--config={spec}"
      return out
    if arg == "--config" and i + 1 < len(out):
      out[i + 1] = spec
      return out
  return out


def _suggest(name: str, options) -> str:
  close = difflib.get_close_matches(name, [str(o) for o in options], n=1)
  return f"; did you mean {close[0]!r}?" if close else ""


def check_override(config, path: str) -> None:
  """Raises ConfigError naming the part of `a.b[2].c` that `config` does not have."""
  node, where = config, "config"
  for part in re.split(r"\.(?![^\[]*\])", path):
    name = _INDEX.sub("", part)
    if name:
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if name not in keys:
        raise ConfigError(f"--config.{path}: {where} has no key {name!r}{_suggest(name, keys)} "
                          f"(its keys: {', '.join(sorted(map(str, keys)))}).")
      node, where = node[name], f"{where}.{name}"
    for index in (int(i) for i in _INDEX.findall(part)):
      if not isinstance(node, (list, tuple)):
        raise ConfigError(f"--config.{path}: {where} is not a list.")
      if not -len(node) <= index < len(node):
        raise ConfigError(f"--config.{path}: {where} has {len(node)} entries (indices 0 to "
                          f"{len(node) - 1}); override an existing one, or give the whole "
                          f"list in a config file.")
      node, where = node[index], f"{where}[{index}]"


def describe(argv: list[str], error: BaseException) -> str:
  """One line for an error raised while absl parsed argv (config file or overrides)."""
  spec = _config_spec(argv)
  if spec is None:
    return f"{type(error).__name__}: {_clean(error)}"
  try:
    resolved = config_files.resolve(spec)
  except ConfigError as e:
    return str(e)
  path = resolved.partition(":")[0]
  if not os.path.isfile(path):
    return f"--config={spec}: no config file at {path}; {config_files.hint()}."
  try:
    config = config_files.load_file(resolved)
  except Exception as load_error:  # pylint: disable=broad-except
    line = next((f.lineno for f in reversed(traceback.extract_tb(load_error.__traceback__))
                 if os.path.abspath(f.filename) == os.path.abspath(path)), None)
    where = f"{path}, line {line}" if line else path
    bare = config_files.is_short_name(spec) and ":" not in spec and spec not in (
        config_files.names())
    also = f" ({config_files.hint()})" if bare else ""
    return f"--config={spec}: {where}: {_clean(load_error)}{also}"
  for arg in argv:
    if arg.startswith("--config."):
      try:
        check_override(config, arg[len("--config."):].split("=", 1)[0])
      except ConfigError as e:
        return str(e)
  return f"--config={spec}: {type(error).__name__}: {_clean(error)}"


def _keys(tree, prefix: str = "") -> set[str]:
  """Dotted key paths of a ConfigDict; a list's entries share one `name[]` schema."""
  out = set()
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if hasattr(value, "items"):
      out |= _keys(value, path + ".")
    elif isinstance(value, (list, tuple)) and value and all(hasattr(v, "items") for v in value):
      for entry in value:
        out |= _keys(entry, path + "[].")
    else:
      out.add(path)
  return out


def check_schema(config, base) -> None:
  """Raises ConfigError if `config` (e.g. built from scratch by a user's file rather than
  from a locked preset) has a key `base` lacks, or lacks one `base` has."""
  keys, known = _keys(config), _keys(base)
  unknown, missing = sorted(keys - known), sorted(known - keys)
  if unknown:
    key = unknown[0]
    parent = key.rpartition(".")[0]
    siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
    more = (f" (and {len(unknown) - 1} more: {', '.join(unknown[1:4])})"
            if len(unknown) > 1 else "")
    hint = _suggest(key.rpartition(".")[2], siblings)
    raise ConfigError(f"config key {key!r} is not a setting{hint}{more}; the settings are "
                      f"those of the presets in {config_files.configs_dir()}.")
  if missing:
    raise ConfigError(f"the config lacks {len(missing)} setting(s) the presets have: "
                      f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}; build it "
                      "from a preset (get_config of configs/videomar.py) and change what differs.")


def base_config(config):
  """The preset a VideoMAR config is checked against: its own `preset`, else `tiny`; None
  when the package has no configs (see config_files.configs_dir)."""
  path = config_files.packaged_path("videomar")
  if path is None:
    return None
  preset = config.get("preset", "tiny")
  try:
    return config_files.load_file(f"{path}:{preset}")
  except ValueError:  # a preset name of the user's own: compare with `tiny`
    return config_files.load_file(f"{path}:tiny")
