"""`videomar bench tokenizer`: parameter counts and encode/decode throughput of a Cosmos
variant with random weights (what the weights are does not change the cost).

Times are medians over `repeats` calls after one compiling call; throughput is pixel
frames per second (encode: frames in, decode: frames out).
"""

import dataclasses
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


def bench_tokenizer(variant: str, num_frames: int, resolution: int, batch_size: int = 1,
                    repeats: int = 3, dtype: str = "float32") -> dict:
  network = dataclasses.replace(get_variant(variant), dtype=dtype)
  model = CosmosAutoencoder(network)
  params = jax.device_put(random_params(network, seed=0))
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
  return {
      "variant": variant, "dtype": dtype, "device": str(jax.devices()[0].device_kind),
      "parameters": {**counts, "total": sum(counts.values())},
      "input_shape": list(video.shape), "latent_shape": list(latents.shape),
      "encode_seconds": encode_s, "decode_seconds": decode_s,
      "encode_frames_per_s": frames / encode_s, "decode_frames_per_s": frames / decode_s,
      "compile_seconds": {"encode": encode_compile, "decode": decode_compile},
      "repeats": repeats,
  }
