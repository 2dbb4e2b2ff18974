"""Training throughput and MFU (`videomar bench train`).

Runs the sharded train step of one curriculum stage (the last by default) on all devices of
`config.mesh`, on random latents (the tokenizer is not part of the step: this is the
cached-latent setting, and what the analytic FLOPs count), and reports:

  step_s                median wall time of a step, compilation excluded
  tokens_per_s          transformer tokens per second: batch x sequence length / step_s
  model_flops_per_step  analytic: 3 x (transformer forward over the training sequence +
                        diffusion head forward over the supervised tokens x
                        diffusion_batch_mul), see `flops.train_flops_per_example`. The 3 is
                        forward + backward (2x forward). Attention counts the full S x S
                        score matrix, as it is computed (the frame-causal mask skips no work);
                        rematerialisation is not counted (it is overhead, not model FLOPs).
  achieved_flops        model_flops_per_step / step_s (all devices together)
  peak_flops            the measured matmul peak of one device x the number of devices
  mfu                   achieved_flops / peak_flops
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videomar_jax.tools import flops
from videomar_jax.models.videomar import parse_dtype
from videomar_jax.parallel import partition
from videomar_jax.tools.bench_sampler import measure_peak_flops
from videomar_jax.tools.bench_sampler import peak_matmul_size as default_peak_matmul_size
from videomar_jax.train import setup


def bench_train(config: ml_collections.ConfigDict, steps: int = 10, stage_index: int = -1,
                peak_matmul_size: int | None = None, profile_dir: str = "") -> dict:
  """See the module docstring; with `profile_dir`, the timed steps also run under a
  `jax.profiler` trace written there (TensorBoard's profile plugin / xprof read it), which
  adds some overhead to `step_s`."""
  # The schedule's length does not change the step's cost; 1000 steps keeps warmup short.
  experiment = setup.build(config, with_tokenizer=False, total_steps=1000)
  mesh, model, step = experiment.mesh, experiment.model, experiment.train_step
  stage = experiment.resolved.stages[stage_index]
  batch_size = stage.batch_size
  state = experiment.create_state()
  geometry = experiment.resolved.geometry
  shape = flops.sequence_shape(config, stage.num_frames, stage.resolution)
  side = stage.resolution // geometry.spatial_stride
  latents = np.random.default_rng(0).standard_normal(
      (batch_size, stage.latent_frames, side, side, geometry.latent_channels), np.float32)
  batch = partition.global_batch({"latents": latents}, mesh)

  start = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  times = []
  if profile_dir:
    jax.profiler.start_trace(profile_dir)
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  if profile_dir:
    jax.profiler.stop_trace()
  step_s = float(np.median(times))

  dtype = parse_dtype(config.model.dtype)
  peak_matmul_size = peak_matmul_size or default_peak_matmul_size()
  peak_one = measure_peak_flops(peak_matmul_size, dtype=dtype)
  model_flops = flops.train_flops_per_example(config, stage.num_frames, stage.resolution,
                                              model.token_dim) * batch_size
  achieved = model_flops / step_s
  peak = peak_one * mesh.size
  return {
      "preset": config.preset, "width": config.model.width, "depth": config.model.depth,
      "device": jax.devices()[0].device_kind,
      "num_devices": mesh.size, "mesh": dict(mesh.shape), "dtype": config.model.dtype,
      "batch_size": batch_size, "num_frames": stage.num_frames,
      "resolution": stage.resolution, "sequence_length": shape["sequence_length"],
      "timed_steps": steps, "step_s": step_s, "step_s_all": times,
      "compile_s": max(first - step_s, 0.0),
      "tokens_per_s": batch_size * shape["sequence_length"] / step_s,
      "model_flops_per_step": model_flops, "achieved_flops": achieved,
      "peak_flops": peak, "peak_flops_per_device": peak_one,
      "peak_matmul_size": peak_matmul_size, "mfu": achieved / peak,
      "final_loss": float(np.asarray(metrics["loss"].addressable_data(0))),
      "profile_dir": profile_dir,
  }
