"""Shared fixtures: a very small config and model so that tests run fast on a CPU."""

import importlib.util
import os
import shutil
import tempfile

# One persistent XLA compilation cache per test process, inherited by the training
# processes the tests launch: tests that run the same program several times (a run, then
# its kill and resume; one process, then two) compile it once. The compiled programs are
# the same, so nothing a test checks changes; an existing JAX_COMPILATION_CACHE_DIR wins.
_COMPILE_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _COMPILE_CACHE = tempfile.mkdtemp(prefix="videomar-test-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILE_CACHE
  # Every program, not only those that took JAX's default 1 s to compile: on a CPU most
  # compile in less, and the command-line runs the tests launch (each a new process) and
  # the other pytest-xdist worker (it inherits this environment from the controller, so
  # the cache is one for the session) compile many of the same ones.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# XLA:CPU at LLVM optimisation level 0 for the suite (and the processes it launches): the
# test programs are tiny, so compiling them is most of their cost, and level 0 halves it
# (a 2-layer train step: 12 s -> 6 s); the heavy kernels (matmuls, convolutions) are
# library calls that run as fast either way. Every comparison a test makes is between
# programs compiled alike. VIDEOMAR_TEST_XLA_OPT=default tests what users compile.
if os.environ.get("VIDEOMAR_TEST_XLA_OPT", "0") != "default":
  os.environ["XLA_FLAGS"] = " ".join(filter(None, [
      os.environ.get("XLA_FLAGS", ""),
      f"--xla_backend_optimization_level={os.environ.get('VIDEOMAR_TEST_XLA_OPT', '0')}"]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import ml_collections
import pytest

# Eight fake CPU devices for the sharding tests (a config option, not XLA_FLAGS, so that
# the command-line runs the tests launch keep one device unless they ask for more).
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  """`configs/videomar.py:<arg>`, loaded as the CLI would."""
  spec = importlib.util.spec_from_file_location("videomar_config",
                                                os.path.join(REPO, "configs", "videomar.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def small_config(**model_overrides) -> ml_collections.ConfigDict:
  """A 2-layer width-32 model on 16x16 clips of 6 frames: compiles and runs in seconds."""
  config = load_config("tiny")
  config.model.width = 32
  config.model.depth = 2
  config.model.num_heads = 2
  config.model.scan_layers = True  # the library default (the tiny preset turns it off)
  # The paper's method, whatever the tiny preset's recipe: tests of its extra options set
  # them explicitly.
  config.model.pos_embed_size = 0
  config.model.rope_base = 10000.0
  config.loss.mode = "paper"
  config.loss.mask_ratio_min, config.loss.mask_ratio_std = 0.7, 0.25
  config.loss.context_noise = config.loss.context_fade = config.loss.context_token_drop = 0.0
  config.data.crop_first_frame_prob = 0.0
  config.head.width = 32
  config.head.depth = 1
  config.head.diffusion_batch_mul = 2
  config.head.num_sampling_steps = 10
  config.data.num_train_clips = 24
  config.data.num_test_clips = 4
  config.data.num_frames = 6
  config.data.resolution = 16
  config.batch_size = 4
  config.optim.warmup_steps = 2
  config.stages = [
      ml_collections.ConfigDict(dict(num_frames=3, resolution=16, steps=4, batch_size=0)),
      ml_collections.ConfigDict(dict(num_frames=4, resolution=16, steps=4, batch_size=2)),
  ]
  config.train.log_every = 2
  config.mesh.num_devices = 1  # the 8 fake devices are for test_sharding's explicit meshes
  config.train.checkpoint_every = 2
  for key, value in model_overrides.items():
    config.model[key] = value
  return config


def perturb(params, rng, scale=0.1):
  """Moves every parameter off its init (zero-init layers would hide dependencies)."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


@pytest.fixture
def config():
  return small_config()


def pytest_collection_modifyitems(config, items):
  """Files holding `slow` tests run first: over several workers (`-n`, one file per
  worker at a time) a long file left to the end would run alone on one core."""
  del config
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow_files)  # stable: files stay contiguous


def pytest_unconfigure(config):
  del config
  if _COMPILE_CACHE:
    shutil.rmtree(_COMPILE_CACHE, ignore_errors=True)


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: end-to-end tests that launch training processes "
      "(deselect with -m 'not slow')")
  # pytest-xdist (3.6 on) hands out files in order of their number of tests, most first,
  # unless told not to: that put a two-test file of minutes (test_multihost) last, alone
  # on one worker while the other idled. Keep the order pytest_collection_modifyitems sets.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False
