"""Benchmarks: the machine's matmul peak and sampler timings (`videomar bench sampler`).

Each mode is compiled ahead of time (`jit(...).lower(...).compile()`, timed as compile
time) and then timed: the median of `repeats` runs (next_token, N / S times slower, runs
once). FLOPs of a generation are counted analytically with `flops.py`'s per-pass formulas
(see `generation_flops`).

Time split (what MAR users ask for): every mode is also timed with a 2-step diffusion head
(same transformer passes, the head's denoising loop cut from K = `num_sampling_steps`
steps to the fewest a schedule has). The difference is the head's share: head_s =
(full - two_step) * K / (K - 2), and transformer_s = full - head_s (the transformer passes
plus the little that is neither: unmasking bookkeeping, cache writes).
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videomar_jax.models.videomar import parse_dtype
from videomar_jax.sampling.generate import (SAMPLER_MODES, SamplerSettings, cache_groups,
                                           generate, unmask_schedule)
from videomar_jax.tokenizers import model_token_dim
from videomar_jax.tools import flops
from videomar_jax.train import setup

# The default shape: the paper's regime (6 generated frames, N / S = 16 as at N = 1024,
# S = 64) at a size two CPU cores time in minutes.
DEFAULT_GRID, DEFAULT_STEPS, DEFAULT_FRAMES = 16, 16, 6
DEFAULT_PRESET = "sampler_bench"  # configs/videomar.py


def peak_matmul_size() -> int:
  """The matmul side that nears a device's peak: 2048 on CPU; an accelerator needs a larger
  one (a 2048 matmul takes microseconds on a GPU, mostly launch overhead)."""
  return 2048 if jax.default_backend() == "cpu" else 8192


def measure_peak_flops(size: int | None = None, repeats: int = 5, dtype=jnp.float32) -> float:
  """FLOP/s of a large square matmul on the default device (median of `repeats`);
  `size` None = `peak_matmul_size()`."""
  size = size or peak_matmul_size()
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, a))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    times.append(time.perf_counter() - start)
  return 2.0 * size ** 3 / float(np.median(times))


def generation_flops(config, tokens_per_frame: int, given: int, total: int,
                     settings: SamplerSettings, batch: int = 1) -> dict:
  """Analytic FLOPs of one generation in `settings.mode`: {"transformer", "head", "total"}.

  kv_cache / next_token: a prefill of the given frames, then per frame (S + 1) passes of
  its N tokens over the keys it reads (its cache slice, see `cache_groups`, and itself);
  no_cache: S passes of the whole clip per frame (dense attention over all of it, as it
  runs). The head samples `max_revealed` tokens per step (the padded reveal count) for
  `num_sampling_steps` denoising steps."""
  n, c = tokens_per_frame, model_token_dim(config)
  plan = unmask_schedule(settings, n)
  frames = np.arange(given, total)
  if settings.mode == "no_cache":
    per_frame = plan.num_steps * flops.transformer_pass_flops(config, total * n, total * n, c)
    transformer = len(frames) * per_frame
  else:
    transformer = flops.transformer_pass_flops(config, given * n, given * n, c)
    for visible, group in cache_groups(frames, total, settings.cache_slicing):
      transformer += len(group) * (plan.num_steps + 1) * flops.transformer_pass_flops(
          config, n, visible * n + n, c)
  head = len(frames) * plan.num_steps * plan.max_revealed * \
      config.head.num_sampling_steps * flops.head_flops_per_token(config, c)
  return {"transformer": batch * transformer, "head": batch * head,
          "total": batch * (transformer + head)}


def _compile_and_time(model, params, given, settings, grid, runs: int):
  """(median seconds of `runs` runs, compile seconds) of one generation."""
  start = time.perf_counter()
  compiled = generate.lower(model, params, given, jax.random.key(2), settings, grid).compile()
  compile_seconds = time.perf_counter() - start
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, given, jax.random.key(2))["tokens"])
    times.append(time.perf_counter() - start)
  return float(np.median(times)), compile_seconds


SPLIT_HEAD_STEPS = 2


def _short_head(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.head.num_sampling_steps = SPLIT_HEAD_STEPS
  return config


def bench_sampler(config: ml_collections.ConfigDict, grid_side: int = DEFAULT_GRID,
                  generated_frames: int = DEFAULT_FRAMES, steps_per_frame: int = DEFAULT_STEPS,
                  repeats: int = 3, batch: int = 1, time_split: bool = True,
                  modes=SAMPLER_MODES, log=None) -> dict:
  """Times kv_cache, no_cache and next_token generation of one (randomly initialised) model
  on the same input; returns the figures (see the module docstring)."""
  log = log or (lambda line: print(line, flush=True))
  n = grid_side * grid_side
  unknown = [mode for mode in modes if mode not in SAMPLER_MODES]
  if unknown or not modes:
    raise ValueError(f"--bench_modes={','.join(modes)}: choose one or more of "
                     f"{','.join(SAMPLER_MODES)}.")
  if not 1 <= steps_per_frame <= n:
    raise ValueError(f"--bench_steps={steps_per_frame} must be in [1, {n}] (tokens per frame "
                     f"at --bench_grid={grid_side}).")
  model = setup.make_model(config)
  params = model.init(jax.random.key(0))
  given = jax.random.normal(jax.random.key(1), (batch, 1, n, model.token_dim))
  total = 1 + generated_frames
  head_steps = config.head.num_sampling_steps
  split_model = (setup.make_model(_short_head(config))
                 if time_split and head_steps > SPLIT_HEAD_STEPS else None)
  result = {"generated_frames": generated_frames, "steps_per_frame": steps_per_frame,
            "tokens_per_frame": n, "batch": batch, "diffusion_steps": head_steps,
            "model_width": config.model.width, "model_depth": config.model.depth,
            "head_width": config.head.width, "head_depth": config.head.depth,
            "preset": config.get("preset", "")}
  for mode in modes:
    settings = SamplerSettings(num_frames=total, num_steps=steps_per_frame, mode=mode)
    runs = repeats if mode != "next_token" else 1
    log(f"[bench] {mode}: compiling and timing ({runs} run(s))...")
    seconds, compile_seconds = _compile_and_time(model, params, given, settings,
                                                 (grid_side, grid_side), runs)
    result[f"{mode}_runs"] = runs
    result[f"{mode}_s"] = seconds
    result[f"{mode}_compile_s"] = compile_seconds
    counted = generation_flops(config, n, 1, total, settings, batch)
    result[f"{mode}_flops"] = counted["total"]
    result[f"{mode}_transformer_flops_share"] = counted["transformer"] / counted["total"]
    line = f"[bench] {mode}: {seconds:.2f} s (compile {compile_seconds:.1f} s)"
    if split_model is not None:
      short, _ = _compile_and_time(split_model, params, given, settings,
                                   (grid_side, grid_side), runs)
      head = min(max(seconds - short, 0.0) * head_steps / (head_steps - SPLIT_HEAD_STEPS),
                 seconds)
      result[f"{mode}_head_s"] = head
      result[f"{mode}_transformer_s"] = seconds - head
      line += f"; transformer {seconds - head:.2f} s, head {head:.2f} s"
    log(line)
  if "kv_cache" in modes:
    for mode in ("no_cache", "next_token"):
      if mode in modes:
        result[f"speedup_{mode}_over_kv"] = result[f"{mode}_s"] / result["kv_cache_s"]
    result["achieved_flops"] = result["kv_cache_flops"] / result["kv_cache_s"]
  result["peak_flops"] = measure_peak_flops(dtype=parse_dtype(config.model.dtype))
  result["device"] = str(jax.devices()[0].device_kind)
  return result
