"""The persistent XLA compilation cache of a training run (`config.train.compilation_cache_dir`).

A restarted run (a preempted TPU job, a resumed or extended curriculum) loads the programs it
compiled before instead of compiling them again, which for a large model on a pod takes
minutes. The cache is keyed by the program, the devices and the JAX version, so a stale
entry is never used: a changed model simply compiles afresh.
"""

import os

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

# `config.train.compilation_cache_dir` values that turn the cache off.
DISABLED = ("none", "off", "false", "0")
_ENV = "JAX_COMPILATION_CACHE_DIR"


def cache_dir(setting: str, workdir: str) -> str | None:
  """The cache directory of a setting: "" = `<workdir>/compilation_cache`, one of `DISABLED`
  = None, a URI (gs://...) as it is, a local path made absolute."""
  if setting.strip().lower() in DISABLED:
    return None
  if not setting:
    return os.path.join(os.path.abspath(workdir), "compilation_cache")
  return setting if "://" in setting else os.path.abspath(os.path.expanduser(setting))


def enable(setting: str, workdir: str) -> str | None:
  """Points JAX's persistent compilation cache at the run's cache directory; returns the
  directory in use (None when off).

  Call it before anything compiles: JAX opens its cache at the first compilation. A
  `JAX_COMPILATION_CACHE_DIR` environment variable wins over the setting and is left as it
  is (the test suite sets one per test process, shared by the training runs it starts).
  """
  if os.environ.get(_ENV):
    return os.environ[_ENV]
  path = cache_dir(setting, workdir)
  if path is None:
    if jax.config.jax_compilation_cache_dir is not None:  # an earlier run in this process
      jax_cache.reset_cache()
      jax.config.update("jax_compilation_cache_dir", None)
    return None
  local = "://" not in path
  if local:
    os.makedirs(path, exist_ok=True)
  if jax.config.jax_compilation_cache_dir not in (None, path):
    jax_cache.reset_cache()  # a second run in this process: its own directory, not the first's
  jax.config.update("jax_compilation_cache_dir", path)
  # JAX writes only programs that took >= 1 s to compile. On a local disk an entry costs
  # next to nothing, so every program is kept (on a CPU most compile faster than that); on
  # a remote one (gs://) each is an object written while compiling, so JAX's threshold
  # stays. An environment variable (JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS) wins.
  if local and "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return path


def describe(path: str | None) -> str:
  """One line for the run's log: where the cache is and how many programs it holds."""
  if path is None:
    return "XLA compilation cache: off (config.train.compilation_cache_dir=none)."
  if "://" in path or not os.path.isdir(path):
    return f"XLA compilation cache: {path}."
  return f"XLA compilation cache: {path} ({len(os.listdir(path))} entries)."
