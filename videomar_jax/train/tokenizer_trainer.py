"""Training a Cosmos video tokenizer from scratch on reconstruction.

Sections: setup (network, optimiser, data-parallel jitted step), resume (latest checkpoint),
the loop (progress lines with steps/s and ETA, metrics.jsonl, TensorBoard, NaN guard,
SIGTERM), held-out evaluation (reconstruction PSNR every `train.eval_every` steps) and
export: `<workdir>/tokenizer` is a tokenizer directory (`tokenizers.store`) for VideoMAR
runs and `videomar data encode`, next to `<workdir>/report/` with reconstructions (GIF) and
`tokenizer_summary.json`.

Loss per clip: `l1 * mean|x^ - x| + l2 * mean (x^ - x)^2 + temporal * mean|d_t x^ - d_t x|`
on pixels in [-1, 1]. PSNR uses the peak-to-peak range 2 of [-1, 1], which equals the
usual PSNR on 8-bit pixels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from videomar_jax.data import pipeline, sources
from videomar_jax.errors import ConfigError
from videomar_jax.io import video_io
from videomar_jax.tokenizers import store
from videomar_jax.tokenizers.base import unit_to_video, video_to_unit
from videomar_jax.tokenizers.cosmos import (CosmosAutoencoder, abstract_params, get_variant,
                                            random_params)
from videomar_jax.train import loop, profiling
from videomar_jax.train import optimizer as optim_lib
from videomar_jax.train.checkpoint import Checkpointer
from videomar_jax.train.loss_report import write_loss_report
from videomar_jax.train.workdir_lock import WorkdirLock


@flax.struct.dataclass
class TokenizerTrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def psnr(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
  """Per-clip PSNR in dB of videos in [-1, 1] ([B, F, H, W, 3] -> [B])."""
  mse = jnp.mean(jnp.square(jnp.clip(reconstruction, -1, 1) - target), axis=(1, 2, 3, 4))
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


def reconstruction_loss(reconstruction, target, loss_config) -> tuple[jax.Array, dict]:
  error = reconstruction.astype(jnp.float32) - target
  l1 = jnp.mean(jnp.abs(error))
  l2 = jnp.mean(jnp.square(error))
  temporal = jnp.mean(jnp.abs(jnp.diff(error, axis=1))) if target.shape[1] > 1 else 0.0
  loss = (loss_config.l1_weight * l1 + loss_config.l2_weight * l2
          + loss_config.temporal_weight * temporal)
  return loss, {"l1": l1, "l2": l2, "temporal": temporal}


def make_train_step(model: CosmosAutoencoder, optimizer, loss_config):
  """`train_step(state, video_uint8) -> (state, metrics)`; pure, jit it with donation."""

  def train_step(state: TokenizerTrainState, video):
    target = video_to_unit(video)

    def loss_fn(params):
      reconstruction = model.apply({"params": params}, target)
      loss, parts = reconstruction_loss(reconstruction, target, loss_config)
      return loss, (parts, reconstruction)

    (loss, (parts, reconstruction)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **parts, "grad_norm": optax.global_norm(grads),
               "psnr": jnp.mean(psnr(reconstruction.astype(jnp.float32), target))}
    return TokenizerTrainState(state.step + 1, params, opt_state), metrics

  return train_step


def _open_dataset(config, workdir: str, split: str):
  """A split of pixel clips (`config.data.dataset` through the data-source registry)."""
  entry = sources.data_source(config)
  if entry.batch_key != "video":
    raise ValueError(f"data.dataset {config.data.dataset!r} holds {entry.batch_key}; a "
                     "tokenizer trains on pixel clips.")
  return entry.open(config, workdir, split)


def held_out_clips(config, workdir: str) -> np.ndarray:
  """uint8 [N, num_frames, R, R, 3]: the first `eval.num_clips` test clips."""
  source = _open_dataset(config, workdir, "test")
  count = min(config.eval.num_clips, len(source))
  return np.stack([pipeline.resize_video(source[i]["frames"][:config.num_frames],
                                         config.resolution) for i in range(count)])


def validate(config, network) -> None:
  if (config.num_frames - 1) % network.temporal_stride or config.num_frames < 1:
    raise ValueError(f"num_frames {config.num_frames} must be 1 + k * "
                     f"{network.temporal_stride} for {config.variant}.")
  if config.resolution % network.spatial_stride:
    raise ValueError(f"resolution {config.resolution} must be a multiple of the spatial "
                     f"stride {network.spatial_stride} of {config.variant}.")
  if config.num_frames > config.data.num_frames:
    raise ValueError(f"num_frames {config.num_frames} > the dataset's clips "
                     f"({config.data.num_frames} frames).")
  if jax.process_count() != 1:
    raise ValueError("tokenizer training runs in one process (data parallel over its "
                     "local devices).")
  window = profiling.parse_window(config.train.profile_steps)
  if window is not None and window[0] >= config.steps:
    raise ConfigError(f"config.train.profile_steps={window[0]},{window[1]} starts after the "
                      f"last step ({config.steps}): nothing would be traced.")


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) a tokenizer in `workdir`; returns a summary dict. One training per
  workdir at a time (`workdir_lock`)."""
  os.makedirs(workdir, exist_ok=True)
  with WorkdirLock(workdir):
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  # ---- Setup.
  network = dataclasses.replace(get_variant(config.variant), dtype=config.dtype)
  validate(config, network)
  # Direct 3x3 convs: faster to differentiate than Winograd's (CosmosConfig.conv3x3); the
  # tokenizer it writes keeps the default, Winograd for inference on a CPU.
  model = CosmosAutoencoder(dataclasses.replace(network, conv3x3="direct"))
  devices = jax.local_devices()[:config.num_devices or None]
  if config.batch_size % len(devices):
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                     f"{len(devices)} devices (set num_devices).")
  mesh = Mesh(np.array(devices), ("data",))
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  optimizer = optim_lib.make_optimizer(config.optim, config.batch_size, config.steps)
  schedule = optim_lib.lr_schedule(config.optim, config.batch_size, config.steps)

  def create_state(params):
    return TokenizerTrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  # torch's default initialisation drawn on the host from config.seed: compiling
  # `model.init` takes tens of seconds on a CPU (one random kernel per tensor).
  abstract = jax.eval_shape(create_state, abstract_params(network))
  state_sharding = jax.tree_util.tree_map(lambda _: replicated, abstract)
  step_fn = jax.jit(make_train_step(model, optimizer, config.loss),
                    in_shardings=(state_sharding, batch_sharding),
                    out_shardings=(state_sharding, replicated), donate_argnums=0)
  reconstruct = jax.jit(lambda params, video: model.apply(
      {"params": params}, video_to_unit(video)), out_shardings=replicated)
  encode = jax.jit(lambda params, video: model.apply(
      {"params": params}, video_to_unit(video), method=CosmosAutoencoder.encode))

  source = _open_dataset(config, workdir, "train")
  held_out = held_out_clips(config, workdir)
  checkpointer = Checkpointer(workdir, config.train.keep_checkpoints)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  loader = pipeline.make_loader(source, global_batch_size=config.batch_size,
                                num_frames=config.num_frames, resolution=config.resolution,
                                seed=config.seed, worker_count=config.data.worker_count)
  data_iter = iter(loader)
  run_start = time.perf_counter()

  # ---- Resume: the newest checkpoint that restores (damaged newer ones moved aside).
  abstract_sharded = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
      state_sharding)
  latest, state = checkpointer.newest_restorable(
      lambda step: checkpointer.restore(step, abstract_sharded, data_iter), quarantine=True)
  if latest is None:
    state = jax.jit(create_state, out_shardings=state_sharding)(
        random_params(network, config.seed))
    step = 0
  else:
    step = latest
    print(f"Resuming from checkpoint step {latest}.", flush=True)
  print(f"Training {config.variant} ({_count(abstract.params):,} parameters) on "
        f"{config.num_frames} frames at {config.resolution}px, batch {config.batch_size}, "
        f"{len(devices)} device(s), steps {step}..{config.steps}.", flush=True)

  # ---- Loop.
  evaluations = []
  status = "done"
  log = loop.MetricsLog(workdir, step, config.steps, checkpointer, schedule,
                        shown=("loss", "psnr", "grad_norm"))
  profiler = profiling.StepProfiler(config.train.profile_steps, workdir)
  try:
    with loop.PreemptionFlag() as preemption:
      while step < config.steps:
        video = jax.device_put(next(data_iter)["video"], batch_sharding)
        profiler.before_step(step)
        state, metrics = step_fn(state, video)
        step += 1
        profiler.after_step(step, (state, metrics))
        log.count_step()
        save = loop.must_save(step, config.steps, config.train.checkpoint_every,
                              preemption.raised)
        if save or step % config.train.log_every == 0:
          log.progress(step, log.record(step, {k: float(v) for k, v in metrics.items()}))
        if step % config.train.eval_every == 0 or step == config.steps:
          value = evaluate(reconstruct, state.params, held_out)
          evaluations.append({"step": step, "held_out_psnr": value})
          log.scalars(step, {"held_out_psnr": value}, prefix="eval")
          print(f"step {step}: held-out reconstruction PSNR {value:.2f} dB "
                f"({len(held_out)} clips)", flush=True)
        if save:
          checkpointer.save(step, state, data_iter, 0, config)
        if preemption.raised:
          print(preemption.stop_message(step), flush=True)
          return {"status": "preempted", "step": step}
    profiler.close(state)  # a window past the last step ends with the run
  finally:
    profiler.close()  # stopping early (preemption, an error): the trace so far
    log.close()
    checkpointer.close()

  # ---- Export and report.
  # encode / reconstruct take the params where training left them (host copies would be
  # placed differently and recompile them); the tokenizer is written from a host copy.
  params = jax.device_get(state.params)
  latents = np.concatenate([np.asarray(encode(state.params, held_out[i:i + config.batch_size]))
                            for i in range(0, len(held_out), config.batch_size)])
  latent_std = float(latents.std())
  scale = config.latent_scale or float(f"{1.0 / max(latent_std, 1e-6):.4g}")
  out = store.save(os.path.join(workdir, "tokenizer"), get_variant(config.variant), params,
                   variant=config.variant, latent_scale=scale,
                   source=f"videomar tokenizer train, {workdir}, step {step}")
  final_psnr, recon = evaluate(reconstruct, state.params, held_out, return_videos=True)
  report_dir = os.path.join(workdir, "report")
  os.makedirs(report_dir, exist_ok=True)
  gap = np.full(held_out.shape[:3] + (2, 3), 255, np.uint8)
  for i in range(min(4, len(held_out))):
    video_io.write_video(os.path.join(report_dir, f"reconstruction_{i:02d}_truth_vs_recon"),
                         video_io.upscale(np.concatenate([held_out[i], gap[i], recon[i]],
                                                         axis=2), 4), fps=4)
  loss_report = write_loss_report(workdir, [config.steps],
                                  this_run_seconds=time.perf_counter() - run_start)
  summary = {"variant": config.variant, "step": step, "status": status,
             "parameters": _count(params), "held_out_psnr": final_psnr,
             # Reference points: an all-black video, and each clip's first frame repeated.
             "held_out_psnr_black": float(np.mean(psnr(
                 -jnp.ones(held_out.shape), video_to_unit(held_out)))),
             "held_out_psnr_first_frame": float(np.mean(psnr(
                 video_to_unit(np.repeat(held_out[:, :1], held_out.shape[1], 1)),
                 video_to_unit(held_out)))),
             "held_out_clips": len(held_out), "num_frames": config.num_frames,
             "resolution": config.resolution, "latent_shape": list(latents.shape[1:]),
             "latent_std": latent_std, "latent_scale": scale, "tokenizer_dir": out,
             "evaluations": evaluations, "train_seconds": loss_report.get("train_seconds")}
  with open(os.path.join(report_dir, "tokenizer_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"Held-out reconstruction PSNR {final_psnr:.2f} dB (all-black video: "
        f"{summary['held_out_psnr_black']:.2f} dB, first frame repeated: "
        f"{summary['held_out_psnr_first_frame']:.2f} dB); tokenizer written to {out} "
        f"(latent_scale {scale}); report in {report_dir}", flush=True)
  return summary


def evaluate(reconstruct, params, clips: np.ndarray, batch_size: int = 8,
             return_videos: bool = False):
  """Mean per-clip PSNR (dB) of the reconstructions of uint8 `clips`."""
  values, videos = [], []
  for i in range(0, len(clips), batch_size):
    chunk = clips[i:i + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
    recon = np.asarray(reconstruct(params, padded))[:len(chunk)]
    values.append(np.asarray(psnr(jnp.asarray(recon), video_to_unit(chunk))))
    if return_videos:
      videos.append(np.asarray(unit_to_video(recon)))
  value = float(np.mean(np.concatenate(values)))
  return (value, np.concatenate(videos)) if return_videos else value


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
