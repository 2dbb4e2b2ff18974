"""`videomar bench tokenizer`: parameter counts and encode/decode throughput of a Cosmos
variant with random weights (what the weights are does not change the cost).

Times are medians over `repeats` calls after one compiling call; throughput is pixel
frames per second (encode: frames in, decode: frames out).

When torch and diffusers are importable (the `[torch]` extra), diffusers'
`AutoencoderKLCosmos` is timed too, on the same weights, clip and latents, float32, with
as many torch threads as XLA uses (the CPUs this process may run on); the JSON then has
`torch_encode_seconds`, `torch_decode_seconds`, `speedup_*_over_torch` (torch seconds /
JAX seconds: above 1 means JAX is faster) and `torch_threads`. Without them, or for a
non-float32 `dtype`, `torch_comparison` says in one line why there are no torch figures.
"""

import dataclasses
import os
import statistics
import time

import jax
import numpy as np

from videomar_jax.tokenizers.cosmos import CosmosAutoencoder, get_variant, random_params


def _median_seconds(fn, *args, repeats: int) -> tuple[float, float]:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_seconds = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times), compile_seconds


def _jax_threads() -> int:
  """XLA:CPU's thread pool has one thread per CPU this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def _torch_seconds(network, params: dict, video: np.ndarray, latents: np.ndarray,
                   repeats: int, threads: int) -> dict:
  """diffusers' AutoencoderKLCosmos on the same weights and inputs: median seconds."""
  import torch  # pylint: disable=import-outside-toplevel
  from diffusers import AutoencoderKLCosmos  # pylint: disable=import-outside-toplevel
  from videomar_jax.tokenizers.cosmos.convert import flax_to_diffusers  # pylint: disable=import-outside-toplevel
  model = AutoencoderKLCosmos(**network.to_diffusers()).eval()
  state = {k: torch.from_numpy(v) for k, v in flax_to_diffusers(params, network).items()}
  model.load_state_dict(state, strict=True)
  video_t = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3)))
  latents_t = torch.from_numpy(np.ascontiguousarray(np.asarray(latents).transpose(0, 4, 1, 2, 3)))
  calls = {"encode": lambda: model.encode(video_t).latent_dist.mode(),
           "decode": lambda: model.decode(latents_t).sample}
  previous = torch.get_num_threads()
  torch.set_num_threads(threads)
  try:
    seconds = {}
    with torch.no_grad():
      for name, call in calls.items():
        call()  # warm-up: allocator, oneDNN primitive caches
        times = []
        for _ in range(repeats):
          start = time.perf_counter()
          call()
          times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times)
  finally:
    torch.set_num_threads(previous)
  return seconds


def _torch_missing() -> str | None:
  try:
    import diffusers  # pylint: disable=import-outside-toplevel,unused-import
    import torch  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    return (f"skipped: {e.name or 'torch/diffusers'} is not installed (pip install "
            "'videomar-jax[torch]' to time diffusers' AutoencoderKLCosmos as well)")
  if not hasattr(diffusers, "AutoencoderKLCosmos"):
    return f"skipped: diffusers {diffusers.__version__} has no AutoencoderKLCosmos"
  return None


def bench_tokenizer(variant: str, num_frames: int, resolution: int, batch_size: int = 1,
                    repeats: int = 3, dtype: str = "float32", compare_torch: bool = True) -> dict:
  network = dataclasses.replace(get_variant(variant), dtype=dtype)
  model = CosmosAutoencoder(network)
  host_params = random_params(network, seed=0)
  params = jax.device_put(host_params)
  counts = {name: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
            for name, tree in params.items()}
  video = np.random.default_rng(0).uniform(
      -1, 1, (batch_size, num_frames, resolution, resolution, 3)).astype(np.float32)
  encode = jax.jit(lambda p, v: model.apply({"params": p}, v, method=CosmosAutoencoder.encode))
  decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=CosmosAutoencoder.decode))
  latents = encode(params, video)
  encode_s, encode_compile = _median_seconds(encode, params, video, repeats=repeats)
  decode_s, decode_compile = _median_seconds(decode, params, latents, repeats=repeats)
  frames = batch_size * num_frames
  result = {
      "variant": variant, "dtype": dtype, "device": str(jax.devices()[0].device_kind),
      "parameters": {**counts, "total": sum(counts.values())},
      "input_shape": list(video.shape), "latent_shape": list(latents.shape),
      "encode_seconds": encode_s, "decode_seconds": decode_s,
      "encode_frames_per_s": frames / encode_s, "decode_frames_per_s": frames / decode_s,
      "compile_seconds": {"encode": encode_compile, "decode": decode_compile},
      "repeats": repeats,
  }
  if not compare_torch:
    return result
  why_not = _torch_missing()
  if why_not is None and dtype != "float32":
    why_not = f"skipped: the torch comparison runs in float32 only (dtype is {dtype})"
  if why_not is None and jax.default_backend() != "cpu":
    why_not = f"skipped: the torch comparison is a CPU one (JAX runs on {jax.default_backend()})"
  if why_not is not None:
    result["torch_comparison"] = why_not
    return result
  threads = _jax_threads()
  torch_s = _torch_seconds(network, host_params, video, np.asarray(latents), repeats, threads)
  result.update({
      "torch_comparison": "diffusers AutoencoderKLCosmos, same weights and inputs, float32",
      "torch_threads": threads,
      "torch_encode_seconds": torch_s["encode"], "torch_decode_seconds": torch_s["decode"],
      "speedup_encode_over_torch": torch_s["encode"] / encode_s,
      "speedup_decode_over_torch": torch_s["decode"] / decode_s,
  })
  return result
