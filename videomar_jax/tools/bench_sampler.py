"""Benchmarks: the machine's matmul peak and sampler timings (`videomar bench sampler`).

Timings are medians over `repeats` runs after one compile-and-run call, whose extra time
is reported separately as compile time. FLOPs of a generation are counted analytically with
`flops.py`'s per-pass formulas (see `generation_flops`).
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videomar_jax.tools import flops
from videomar_jax.tokenizers import model_token_dim
from videomar_jax.train import setup
from videomar_jax.sampling.generate import SamplerSettings, generate, unmask_schedule


def measure_peak_flops(size: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
  """FLOP/s of a large square matmul on the default device (median of `repeats`)."""
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
                     settings: SamplerSettings, batch: int = 1) -> float:
  """Analytic FLOPs of one `kv_cache`/`next_token` generation (dense attention over the whole
  preallocated cache, as it runs)."""
  n, c = tokens_per_frame, model_token_dim(config)
  plan = unmask_schedule(settings, n)
  cache = total * n
  prefill = flops.transformer_pass_flops(config, given * n, given * n, c)
  per_frame = (plan.num_steps + 1) * flops.transformer_pass_flops(config, n, cache + n, c)
  head = plan.num_steps * plan.max_revealed * config.head.num_sampling_steps * \
      flops.head_flops_per_token(config, c)
  return batch * (prefill + (total - given) * (per_frame + head))


def _time(fn, repeats: int):
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  return median, max(first - median, 0.0)


def bench_sampler(config: ml_collections.ConfigDict, grid_side: int, generated_frames: int = 6,
                  steps_per_frame: int = 64, repeats: int = 3, batch: int = 1,
                  log=print) -> dict:
  """Times kv_cache, no_cache and next_token generation of one (randomly initialised) model
  on the same input; returns the figures."""
  model = setup.make_model(config)
  params = model.init(jax.random.key(0))
  n = grid_side * grid_side
  given = jax.random.normal(jax.random.key(1), (batch, 1, n, model.token_dim))
  total = 1 + generated_frames
  result = {"generated_frames": generated_frames, "steps_per_frame": steps_per_frame,
            "tokens_per_frame": n, "batch": batch,
            "diffusion_steps": config.head.num_sampling_steps,
            "model_width": config.model.width, "model_depth": config.model.depth}
  for mode in ("kv_cache", "no_cache", "next_token"):
    settings = SamplerSettings(num_frames=total, num_steps=steps_per_frame, mode=mode)
    fn = lambda: generate(model, params, given, jax.random.key(2), settings,
                          (grid_side, grid_side))["tokens"]
    # next_token takes N/S times the steps of kv_cache: it is timed once.
    runs = repeats if mode != "next_token" else 1
    log(f"[bench] {mode}: compiling and timing ({runs} run(s))...")
    seconds, compile_seconds = _time(fn, runs)
    result[f"{mode}_runs"] = runs
    result[f"{mode}_s"] = seconds
    result[f"{mode}_compile_s"] = compile_seconds
    log(f"[bench] {mode}: {seconds:.2f} s (compile {compile_seconds:.1f} s)")
  result["speedup_no_cache_over_kv"] = result["no_cache_s"] / result["kv_cache_s"]
  result["speedup_next_token_over_kv"] = result["next_token_s"] / result["kv_cache_s"]
  kv_settings = SamplerSettings(num_frames=total, num_steps=steps_per_frame)
  result["kv_cache_flops"] = generation_flops(config, n, 1, total, kv_settings, batch)
  result["achieved_flops"] = result["kv_cache_flops"] / result["kv_cache_s"]
  result["peak_flops"] = measure_peak_flops()
  result["device"] = str(jax.devices()[0].device_kind)
  return result
