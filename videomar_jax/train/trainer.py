"""The training loop: curriculum stages, logging, checkpoints, preemption, NaN guard.

Sections: setup (model, tokenizer, optimizer, jitted step), resume (latest checkpoint ->
train state, curriculum stage and data-iterator state), and the loop over stages. A stage
fixes the clip length, resolution and batch size; moving to the next stage re-jits the step
for the new shapes and keeps the parameters (3D RoPE needs no resizing).

Every step's loss goes to `<workdir>/metrics.jsonl`; every `log_every` steps a progress line
(step, loss, grad norm, steps/s, ETA) goes to the console and scalars to TensorBoard
(`<workdir>/tensorboard`). A non-finite loss stops the run before anything is saved, so the
last checkpoint stays the last good one. SIGTERM (a TPU preemption notice) makes the loop
save at the next step boundary and return.
"""

import contextlib
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from videomar_jax.data import bouncing_balls, latent_cache, pipeline
from videomar_jax.errors import ConfigError
from videomar_jax.losses import next_frame
from videomar_jax.models.videomar import VideoMAR
from videomar_jax.parallel import partition
from videomar_jax.parallel.mesh import make_mesh
from videomar_jax.parallel.rules import rules_from_config
from videomar_jax.tokenizers import base as tokenizer_base
from videomar_jax.tokenizers import geometry, make_tokenizer, store
from videomar_jax.train import optimizer as optim_lib
from videomar_jax.train.checkpoint import Checkpointer, ResumeMismatchError, model_differences
from videomar_jax.train import tensorboard
from videomar_jax.train.report import truncate_metrics, write_loss_report
from videomar_jax.train.state import TrainState, make_train_step
from videomar_jax.train.workdir_lock import WorkdirLock


class NonFiniteLossError(RuntimeError):
  """Raised when a step's loss or gradient norm is NaN or Inf."""


def stage_bounds(config: ml_collections.ConfigDict) -> list[tuple[int, int]]:
  """[start, end) global steps of every curriculum stage."""
  bounds, start = [], 0
  for stage in config.stages:
    bounds.append((start, start + stage.steps))
    start += stage.steps
  return bounds


def stage_batch_size(config, stage) -> int:
  return stage.batch_size or config.batch_size


def validate(config: ml_collections.ConfigDict, tokenizer=None, mesh=None) -> None:
  """Config checks that would otherwise fail deep inside jit with an unclear message. `train`,
  `info`, `plan` and `bench train` all run them first. Without a built `tokenizer` its
  strides come from the config (`tokenizers.geometry`)."""
  if not config.stages:
    raise ConfigError("config.stages is empty: give at least one curriculum stage.")
  for key in ("model.width", "model.depth", "model.num_heads", "model.mlp_ratio",
              "head.width", "head.depth", "head.num_sampling_steps", "batch_size"):
    section, _, name = key.rpartition(".")
    value = (config[section] if section else config)[name]
    if value <= 0:
      raise ConfigError(f"config.{key}={value} must be > 0.")
  next_frame.check_config(config.loss, next_frame.temporal_attention(config))
  init_from = config.train.init_from
  if init_from and "://" not in init_from and not os.path.isfile(init_from):
    raise FileNotFoundError(f"config.train.init_from: no checkpoint file at {init_from}")
  if config.train.init_key_map:
    from videomar_jax.interop import keys  # pylint: disable=import-outside-toplevel
    keys.load_key_map(config.train.init_key_map)  # a bad map fails now, not after setup
  batch_ways = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_ways % jax.process_count():
    raise ConfigError(f"the mesh splits the batch {batch_ways} ways (data x fsdp), which "
                      f"{jax.process_count()} processes cannot share: each process must own "
                      "whole batch shards.")
  if tokenizer is None:
    shape = geometry.tokenizer_geometry(config.tokenizer)
    spatial_stride = shape.spatial_stride
    latent_frames = lambda f: tokenizer_base.num_latent_frames(f, shape.temporal_stride)
  else:
    spatial_stride, latent_frames = tokenizer.spatial_stride, tokenizer.num_latent_frames
  for i, stage in enumerate(config.stages):
    key = f"config.stages[{i}]"
    batch_size = stage_batch_size(config, stage)
    if batch_size <= 0 or batch_size % batch_ways or batch_size % jax.process_count():
      raise ConfigError(f"{key}: batch size {batch_size} must be > 0 and divisible by the "
                        f"mesh's data x fsdp = {batch_ways} and by the "
                        f"{jax.process_count()} process(es).")
    if stage.steps <= 0:
      raise ConfigError(f"{key}.steps must be > 0, got {stage.steps}.")
    if stage.num_frames <= 0 or stage.resolution <= 0:
      raise ConfigError(f"{key}: num_frames {stage.num_frames} and resolution "
                        f"{stage.resolution} must be > 0.")
    if config.data.dataset != "latents" and stage.num_frames > config.data.num_frames:
      raise ConfigError(f"{key}.num_frames {stage.num_frames} > the dataset's clips "
                        f"(config.data.num_frames = {config.data.num_frames}).")
    stride = spatial_stride * config.model.patch_size
    if stage.resolution % stride:
      raise ConfigError(f"{key}.resolution {stage.resolution} is not divisible by the "
                        f"tokenizer stride x model.patch_size = {stride}.")
    grid = stage.resolution // stride
    if config.model.pos_embed_size and grid > config.model.pos_embed_size:
      raise ConfigError(f"{key}: {grid}x{grid} tokens per frame exceed the learned position "
                        f"table (model.pos_embed_size={config.model.pos_embed_size}).")
    try:
      t = latent_frames(stage.num_frames)
    except ValueError as e:  # frames that do not fit the temporal stride
      raise ConfigError(f"{key}.num_frames: {e}") from None
    if t <= config.loss.num_cond_frames:
      raise ConfigError(f"{key}: {t} latent frames leave nothing to predict after "
                        f"loss.num_cond_frames = {config.loss.num_cond_frames} given frame(s).")


def resolve_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Points `config.tokenizer.checkpoint` at the run's own copy of its tokenizer.

  A Cosmos tokenizer directory is copied to `<workdir>/tokenizer` so that sampling decodes
  through the very weights the run trained with, even if the original moves. With cached
  latents and no checkpoint given, the tokenizer is the one the cache was encoded with;
  a given one must be that same tokenizer (same weights).
  """
  tokenizer = config.tokenizer
  cache_meta = None
  if config.data.dataset == "latents":
    if not config.data.latents_dir:
      raise ConfigError("data.dataset is 'latents' but config.data.latents_dir is empty.")
    cache_meta = latent_cache.read_meta(config.data.latents_dir)["tokenizer"]
    if tokenizer.name == "cosmos" and not tokenizer.checkpoint:
      tokenizer.checkpoint = cache_meta.get("checkpoint", "")
  if tokenizer.name != "cosmos" or not tokenizer.checkpoint:
    return  # make_tokenizer names what is missing
  if cache_meta is not None and cache_meta.get("fingerprint") not in (
      None, store.fingerprint(tokenizer.checkpoint)):
    raise latent_cache.LatentCacheError(
        f"config.tokenizer.checkpoint {tokenizer.checkpoint} holds other weights than the "
        f"tokenizer the latent cache {config.data.latents_dir} was encoded with "
        f"({cache_meta.get('checkpoint')}).")
  own = os.path.abspath(os.path.join(workdir, "tokenizer"))
  if os.path.abspath(tokenizer.checkpoint) == own:
    return
  if os.path.isdir(own):  # a resumed run: it must keep its tokenizer
    if store.fingerprint(own) != store.fingerprint(tokenizer.checkpoint):
      raise ConfigError(f"this run was trained with the tokenizer in {own}, which differs "
                       f"from config.tokenizer.checkpoint {tokenizer.checkpoint}.")
  else:
    store.copy(tokenizer.checkpoint, own)
  tokenizer.checkpoint = own


def open_dataset(config: ml_collections.ConfigDict, workdir: str, split: str = "train"):
  """Builds the built-in dataset if needed and returns a random-access source (for
  dataset 'latents': the cache's split)."""
  if config.data.dataset == "latents":
    return latent_cache.load(config.data.latents_dir, split)[0]
  if config.data.dataset != "bouncing_balls":
    raise ConfigError(f"data.dataset {config.data.dataset!r} is not known: 'bouncing_balls' "
                     "(built in) or 'latents' (a cache from `videomar data encode`).")
  data_dir = config.data.data_dir or os.path.join(workdir, "data")
  load = lambda: bouncing_balls.load(
      data_dir, split, num_train_clips=config.data.num_train_clips,
      num_test_clips=config.data.num_test_clips, num_frames=config.data.num_frames,
      resolution=config.data.resolution, num_balls=config.data.num_balls)
  if jax.process_count() == 1:
    return load()
  # Process 0 builds the dataset if it is missing; the others wait, then read it.
  source = load() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("videomar dataset ready")
  return source if source is not None else load()


class _PreemptionFlag:
  """Set by SIGTERM (preemption) or a first SIGINT (Ctrl-C); the loop checks it at step
  boundaries, saves and stops. A second Ctrl-C stops at once (KeyboardInterrupt), keeping
  the newest finished checkpoint."""

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.raised = False
    self.signal_name = ""
    self._previous = {}

  def __enter__(self):
    for signum in self._SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread: no handler, no preemption support
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.raised:
      raise KeyboardInterrupt
    self.raised = True
    self.signal_name = signal.Signals(signum).name
    if signum == signal.SIGINT and jax.process_index() == 0:
      print("Ctrl-C: saving a checkpoint at the next step, then stopping (Ctrl-C again to "
            "stop now without saving).", flush=True)

  def agreed(self, check_now: bool) -> bool:
    """Whether to stop: this process's flag with one process; with several, whether any
    process has it, asked only when `check_now` (a small all-gather, so not every step)."""
    if jax.process_count() == 1:
      return self.raised
    if not check_now:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.raised))
    return bool(np.any(flags))

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def _check_finite(step: int, metrics: dict, checkpointer: Checkpointer) -> None:
  bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    latest = checkpointer.latest_step()
    kept = (f"the last good checkpoint is step {latest} in {checkpointer.directory}"
            if latest is not None else "no checkpoint had been written yet")
    raise NonFiniteLossError(f"non-finite training metrics at step {step}: {bad}. Stopping; "
                             f"{kept} and was not overwritten.")


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) a run in `workdir`; returns a summary dict. One training per
  workdir at a time: a second one fails at once (`workdir_lock`)."""
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  with WorkdirLock(workdir) if is_main else contextlib.nullcontext():
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  # ---- Setup.
  is_main = jax.process_index() == 0  # logs, metrics and reports come from process 0
  model = VideoMAR(config)
  resolve_tokenizer(config, workdir)
  tokenizer = make_tokenizer(config.tokenizer)
  mesh = make_mesh(config.mesh)
  rules = rules_from_config(config.sharding.rules)
  validate(config, tokenizer, mesh)
  bounds = stage_bounds(config)
  total_steps = bounds[-1][1]
  optimizer = optim_lib.make_optimizer(config.optim, config.batch_size, total_steps)
  shardings = partition.state_shardings(model, optimizer, mesh, rules, config.seed)
  step_fn = partition.shard_train_step(
      make_train_step(model, tokenizer, optimizer, config.optim.ema_decay), shardings, mesh,
      rules)
  schedule = optim_lib.lr_schedule(config.optim, config.batch_size, total_steps)
  source = open_dataset(config, workdir)
  checkpointer = Checkpointer(workdir, config.train.keep_checkpoints,
                              config.train.checkpoint_dir)
  if config.train.checkpoint_dir:  # as resolved, so readers elsewhere find the same place
    config.train.checkpoint_dir = checkpointer.directory
  writer = tensorboard.summary_writer(os.path.join(workdir, "tensorboard")) if is_main else None
  if is_main:
    print(f"Mesh {dict(mesh.shape)} over {jax.device_count()} devices in "
          f"{jax.process_count()} process(es).", flush=True)

  run_start = time.perf_counter()

  # ---- Resume.
  latest = checkpointer.latest_step()
  if jax.process_count() > 1:
    seen = multihost_utils.process_allgather(np.int64(-1 if latest is None else latest))
    if len(set(np.asarray(seen).tolist())) != 1:
      raise ValueError(f"processes see different latest checkpoints {list(seen)} in "
                       f"{checkpointer.directory}: a multi-process run needs a checkpoint "
                       "directory they all share (config.train.checkpoint_dir=gs://...).")
  meta = checkpointer.restore_meta(latest) if latest is not None else None
  if meta is not None and "config" in meta:
    differences = model_differences(meta["config"], config)
    if differences:
      raise ResumeMismatchError(
          f"{workdir} holds checkpoint step {latest} of another model ({'; '.join(differences)}). "
          "Train this config in a new --workdir, or resume with the run's own model settings "
          f"({os.path.join(workdir, 'config.json')}).")
  if meta is not None and is_main:
    print(f"Resuming from checkpoint step {latest} (stage {meta['stage']}).", flush=True)
  # Restoring into these shardings places every shard directly on its device, whatever
  # mesh the checkpoint was written from.
  abstract_state = partition.abstract_state(model, optimizer, shardings, config.seed)
  state: TrainState | None = None
  step = latest or 0
  status = "done"

  # ---- Loop over curriculum stages.
  if is_main:  # one row per step: forget what a killed run logged after its checkpoint
    truncate_metrics(workdir, step)
  metrics_file = (open(os.path.join(workdir, "metrics.jsonl"), "a") if is_main
                  else open(os.devnull, "w"))
  try:
    with _PreemptionFlag() as preemption:
      for stage_index, (stage, (start, end)) in enumerate(zip(config.stages, bounds)):
        if step >= end:
          continue
        batch_size = stage_batch_size(config, stage)
        loader = pipeline.make_loader(
            source, global_batch_size=batch_size, num_frames=stage.num_frames,
            resolution=stage.resolution, seed=config.seed + 1000 * stage_index,
            worker_count=config.data.worker_count,
            batch_rows=partition.process_batch_rows(mesh, batch_size),
            transforms=_latent_transforms(config, tokenizer, stage),
            first_frame_prob=config.data.crop_first_frame_prob)
        data_iter = iter(loader)
        if state is None:
          if meta is None:
            state = partition.create_sharded_state(model, optimizer, shardings, config.seed)
            if config.train.init_from:
              state = _init_from_torch(state, optimizer, config, shardings)
          else:
            same_stage = meta["stage"] == stage_index and step > start
            # Data-iterator states are per process: with another process count, rebuild
            # the position from the step (the global batches do not depend on it).
            same_processes = meta.get("process_count", 1) == jax.process_count()
            state = checkpointer.restore(
                latest, abstract_state, data_iter if same_stage and same_processes else None)
            if same_stage and not same_processes:
              data_iter.set_state(pipeline.iterator_state_after(loader, step - start))
          if is_main:  # written once the state exists: a failed resume leaves the old one
            with open(os.path.join(workdir, "config.json"), "w") as f:
              f.write(config.to_json_best_effort(indent=2))
        if is_main:
          print(f"Stage {stage_index}: {stage.num_frames} frames at {stage.resolution}px, "
                f"batch {batch_size}, steps {start}..{end}.", flush=True)

        batch_key = "latents" if config.data.dataset == "latents" else "video"
        window_start, window_steps, pending = time.perf_counter(), 0, None
        while step < end:
          batch = partition.global_batch({batch_key: next(data_iter)[batch_key]}, mesh)
          state, metrics = step_fn(state, batch)
          step += 1
          # Read the previous step's metrics while this one runs (no per-step stall).
          if pending is not None:
            _log_step(*pending, metrics_file, checkpointer)
          pending = (step, metrics)
          window_steps += 1
          # Every process must take the same branch (saving is collective): a SIGTERM
          # seen by one host counts once all hosts agree on it, at a log step.
          preempted = preemption.agreed(step % config.train.log_every == 0)
          must_save = (step % config.train.checkpoint_every == 0 or step == end
                       or preempted)
          if must_save or step % config.train.log_every == 0:
            values = _log_step(*pending, metrics_file, checkpointer)
            pending = None
            if is_main and (step % config.train.log_every == 0 or step == end):
              elapsed = time.perf_counter() - window_start
              rate = window_steps / max(elapsed, 1e-9)
              eta = (total_steps - step) / max(rate, 1e-9)
              lr = float(schedule(step))
              print(f"step {step}/{total_steps}  loss {values['loss']:.4f}  grad_norm "
                    f"{values['grad_norm']:.3f}  lr {lr:.2e}  {rate:.2f} steps/s  "
                    f"ETA {_format_seconds(eta)}", flush=True)
              for key, value in values.items():
                writer.add_scalar(f"train/{key}", value, step)
              writer.add_scalar("train/lr", lr, step)
              writer.add_scalar("train/steps_per_s", rate, step)
              writer.flush()
              window_start, window_steps = time.perf_counter(), 0
          if must_save:
            checkpointer.save(step, state, data_iter, stage_index, config)
          if preempted:
            if is_main:
              # Another process of the run may be the one signalled (a preemption: SIGTERM).
              print(f"{preemption.signal_name or 'SIGTERM'} received: saved checkpoint "
                    f"{step} and stopping.", flush=True)
            status = "preempted"
            return {"status": status, "step": step}
  finally:
    metrics_file.close()
    if writer is not None:
      writer.close()
    checkpointer.close()
  if not is_main:
    return {"status": status, "step": step}
  report = write_loss_report(workdir, [end for _, end in bounds],
                             this_run_seconds=time.perf_counter() - run_start)
  if report["loss_first_window_mean"] is not None:
    print(f"Loss {report['loss_first_window_mean']:.4f} (first {report['window']} steps) "
          f"-> {report['loss_last_window_mean']:.4f} (last {report['window']}); curve in "
          f"{workdir}/loss_curve.png", flush=True)
  return {"status": status, "step": step}


def _latent_transforms(config, tokenizer, stage):
  """For cached latents: the crop that replaces the pixel pipeline's (checked against the
  cache); None for pixels."""
  if config.data.dataset != "latents":
    return None
  num_latent_frames = tokenizer.num_latent_frames(stage.num_frames)
  meta = latent_cache.read_meta(config.data.latents_dir)
  latent_cache.check_run(meta, config.data.latents_dir, config.tokenizer, num_latent_frames,
                         stage.resolution, config.data.random_flip)
  return [latent_cache.LatentCrop(num_latent_frames, config.data.random_flip)]


def _init_from_torch(state: TrainState, optimizer, config, shardings) -> TrainState:
  """A fresh state whose params and EMA are the weights of `config.train.init_from`.
  Every process reads the file and places its own shards."""
  from videomar_jax import interop  # pylint: disable=import-outside-toplevel
  loaded = interop.load_params(config.train.init_from, config,
                               key_map=config.train.init_key_map)
  params = jax.tree_util.tree_map(
      lambda a, sh: jax.make_array_from_callback(a.shape, sh, lambda index: a[index]),
      loaded, shardings.params)
  if jax.process_index() == 0:
    print(f"Initialised the weights from {config.train.init_from}.", flush=True)
  opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
  ema = jax.jit(lambda p: jax.tree_util.tree_map(jnp.copy, p),
                out_shardings=shardings.ema_params)(params)
  return state.replace(params=params, opt_state=opt_state, ema_params=ema)


def _log_step(step: int, metrics: dict, metrics_file, checkpointer: Checkpointer) -> dict:
  # Metrics are replicated: every process reads its own copy (no cross-host gather).
  values = {k: float(np.asarray(v.addressable_data(0))) for k, v in metrics.items()}
  _check_finite(step, values, checkpointer)
  metrics_file.write(json.dumps({"step": step, **values}) + "\n")
  metrics_file.flush()
  return values


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
