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
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from videomar_jax.data import latent_cache, pipeline, sources
from videomar_jax.data.integrity import DatasetFileError
from videomar_jax.errors import ConfigError
from videomar_jax.io import key_map
from videomar_jax.losses import next_frame
from videomar_jax.parallel import partition
from videomar_jax.tokenizers import base as tokenizer_base
from videomar_jax.tokenizers import store, tokenizer_geometry
from videomar_jax.train import loop, setup
from videomar_jax.train.checkpoint import Checkpointer, ResumeMismatchError, model_differences
from videomar_jax.train.loss_report import write_loss_report
from videomar_jax.train.loop import NonFiniteLossError  # pylint: disable=unused-import
from videomar_jax.train.state import TrainState
from videomar_jax.train.workdir_lock import WorkdirLock

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
    key_map.load_key_map(config.train.init_key_map)  # a bad map fails now, not after setup
  # Without a mesh (checks before anything is built) the batch split is checked later.
  batch_ways = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  if mesh is not None and batch_ways % jax.process_count():
    raise ConfigError(f"the mesh splits the batch {batch_ways} ways (data x fsdp), which "
                      f"{jax.process_count()} processes cannot share: each process must own "
                      "whole batch shards.")
  if tokenizer is None:
    shape = tokenizer_geometry(config.tokenizer)
    spatial_stride = shape.spatial_stride
    latent_frames = lambda f: tokenizer_base.num_latent_frames(f, shape.temporal_stride)
  else:
    spatial_stride, latent_frames = tokenizer.spatial_stride, tokenizer.num_latent_frames
  data = sources.data_source(config)
  clip_frames = data.clip_frames(config) if data.clip_frames is not None else None
  for i, stage in enumerate(config.stages):
    key = f"config.stages[{i}]"
    batch_size = setup.stage_batch_size(config, stage)
    if batch_size <= 0 or batch_size % batch_ways or batch_size % jax.process_count():
      raise ConfigError(f"{key}: batch size {batch_size} must be > 0 and divisible by the "
                        f"mesh's data x fsdp = {batch_ways} and by the "
                        f"{jax.process_count()} process(es).")
    if stage.steps <= 0:
      raise ConfigError(f"{key}.steps must be > 0, got {stage.steps}.")
    if stage.num_frames <= 0 or stage.resolution <= 0:
      raise ConfigError(f"{key}: num_frames {stage.num_frames} and resolution "
                        f"{stage.resolution} must be > 0.")
    if clip_frames is not None and stage.num_frames > clip_frames:
      raise ConfigError(f"{key}.num_frames {stage.num_frames} > the dataset's clips "
                        f"({clip_frames} frames).")
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


def train(config: ml_collections.ConfigDict, workdir: str,
          init_params: Callable[[], dict] | None = None) -> dict:
  """Trains (or resumes) a run in `workdir`; returns a summary dict. One training per
  workdir at a time: a second one fails at once (`workdir_lock`).

  `init_params`: with `config.train.init_from` set, a function returning the starting
  weights as host arrays (the CLI passes `interop.load_params` of that file; the trainer
  sits below `interop` and does not read PyTorch files itself). Called on a fresh run only.
  """
  if config.train.init_from and init_params is None:
    raise ConfigError("config.train.init_from is set, but no loader was given: pass "
                      "init_params= (e.g. interop.init_params_loader(config)), or train with "
                      "`videomar train`.")
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  with WorkdirLock(workdir) if is_main else contextlib.nullcontext():
    return _train(config, workdir, init_params)


def _train(config: ml_collections.ConfigDict, workdir: str, init_params) -> dict:
  # ---- Setup.
  is_main = jax.process_index() == 0  # logs, metrics and reports come from process 0
  resolve_tokenizer(config, workdir)
  validate(config)  # before anything is built from the config
  experiment = setup.build(config)
  mesh, tokenizer = experiment.mesh, experiment.tokenizer
  validate(config, tokenizer, mesh)
  stages, total_steps = experiment.resolved.stages, experiment.resolved.total_steps
  data = sources.data_source(config)
  source = data.open(config, workdir, "train")
  checkpointer = Checkpointer(workdir, config.train.keep_checkpoints,
                              config.train.checkpoint_dir)
  if config.train.checkpoint_dir:  # as resolved, so readers elsewhere find the same place
    config.train.checkpoint_dir = checkpointer.directory
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

  def restore(step):  # a checkpoint of another model is an error, not damage
    meta = checkpointer.restore_meta(step)
    _check_same_model(meta, config, workdir, step)
    return meta, checkpointer.restore(step, experiment.abstract_state)

  # The newest checkpoint that restores; damaged newer ones are moved aside, not deleted.
  latest, restored = checkpointer.newest_restorable(restore, quarantine=True)
  meta, state = restored if restored is not None else (None, None)
  if meta is not None and is_main:
    print(f"Resuming from checkpoint step {latest} (stage {meta['stage']}).", flush=True)
  step = latest or 0
  status = "done"

  # ---- Loop over curriculum stages.
  log = loop.MetricsLog(workdir, step, total_steps, checkpointer, experiment.schedule,
                        is_main=is_main)
  config_written = False
  try:
    with loop.PreemptionFlag() as preemption:
      for stage in stages:
        if step >= stage.end:
          continue
        loader = pipeline.make_loader(
            source, global_batch_size=stage.batch_size, num_frames=stage.num_frames,
            resolution=stage.resolution, seed=config.seed + 1000 * stage.index,
            worker_count=config.data.worker_count,
            batch_rows=partition.process_batch_rows(mesh, stage.batch_size),
            transforms=(data.train_transforms(config, stage)
                        if data.train_transforms is not None else None),
            first_frame_prob=config.data.crop_first_frame_prob)
        data_iter = iter(loader)
        if meta is not None and stage.start < step < stage.end:
          _position_data(checkpointer, meta, latest, step, stage, loader, data_iter)
        if state is None:
          state = experiment.create_state()
          if config.train.init_from:
            state = _with_params(state, experiment, init_params())
        if not config_written and is_main:
          # Written once the state exists: a failed resume leaves the run's own config.
          with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
        config_written = True
        if is_main:
          print(f"Stage {stage.index}: {stage.num_frames} frames at {stage.resolution}px, "
                f"batch {stage.batch_size}, steps {stage.start}..{stage.end}.", flush=True)

        pending = None
        while step < stage.end:
          try:
            record = next(data_iter)
          except DatasetFileError:
            # Damaged data mid-run: keep what was trained so far, then stop with the file.
            if pending is not None:
              _log_step(log, *pending)
              pending = None
            if step > (checkpointer.latest_step() or 0):
              checkpointer.save(step, state, data_iter, stage.index, config)
              if is_main:
                print(f"Saved checkpoint {step} before stopping on damaged data.",
                      file=sys.stderr, flush=True)
            raise
          batch = partition.global_batch({data.batch_key: record[data.batch_key]}, mesh)
          state, metrics = experiment.train_step(state, batch)
          step += 1
          # Read the previous step's metrics while this one runs (no per-step stall).
          if pending is not None:
            _log_step(log, *pending)
          pending = (step, metrics)
          log.count_step()
          # Every process must take the same branch (saving is collective): a SIGTERM
          # seen by one host counts once all hosts agree on it, at a log step.
          is_log_step = step % config.train.log_every == 0
          preempted = preemption.agreed(is_log_step)
          save = loop.must_save(step, stage.end, config.train.checkpoint_every, preempted)
          if save or is_log_step:
            values = _log_step(log, *pending)
            pending = None
            if is_log_step or step == stage.end:
              log.progress(step, values)
          if save:
            checkpointer.save(step, state, data_iter, stage.index, config)
          if preempted:
            if is_main:
              print(preemption.stop_message(step), flush=True)
            status = "preempted"
            return {"status": status, "step": step}
  finally:
    log.close()
    checkpointer.close()
  if not is_main:
    return {"status": status, "step": step}
  report = write_loss_report(workdir, [stage.end for stage in stages],
                             this_run_seconds=time.perf_counter() - run_start)
  if report["loss_first_window_mean"] is not None:
    print(f"Loss {report['loss_first_window_mean']:.4f} (first {report['window']} steps) "
          f"-> {report['loss_last_window_mean']:.4f} (last {report['window']}); curve in "
          f"{workdir}/loss_curve.png", flush=True)
  return {"status": status, "step": step}


def _check_same_model(meta: dict, config, workdir: str, step: int) -> None:
  if "config" not in meta:
    return
  differences = model_differences(meta["config"], config)
  if differences:
    raise ResumeMismatchError(
        f"{workdir} holds checkpoint step {step} of another model "
        f"({'; '.join(differences)}). Train this config in a new --workdir, or resume with "
        f"the run's own model settings ({os.path.join(workdir, 'config.json')}).")


def _position_data(checkpointer: Checkpointer, meta: dict, latest: int, step: int,
                   stage: setup.StageShape, loader, data_iter) -> None:
  """Puts `data_iter` where the resumed run was inside `stage`: the saved iterator state, or
  (saved by another number of processes, whose iterator states are per process) the
  position rebuilt from the step; the global batches do not depend on it."""
  if meta.get("process_count", 1) == jax.process_count() and meta["stage"] == stage.index:
    checkpointer.restore_data(latest, data_iter)
  else:
    data_iter.set_state(pipeline.iterator_state_after(loader, step - stage.start))


def _with_params(state: TrainState, experiment: setup.Experiment, loaded) -> TrainState:
  """`state` with params and EMA set to the host arrays `loaded` (e.g. the weights of
  `config.train.init_from`) and a fresh optimizer state. Every process places its own
  shards."""
  shardings = experiment.shardings
  params = jax.tree_util.tree_map(
      lambda a, sh: jax.make_array_from_callback(a.shape, sh, lambda index: a[index]),
      loaded, shardings.params)
  if jax.process_index() == 0:
    print(f"Initialised the weights from {experiment.config.train.init_from}.", flush=True)
  opt_state = jax.jit(experiment.optimizer.init, out_shardings=shardings.opt_state)(params)
  ema = jax.jit(lambda p: jax.tree_util.tree_map(jnp.copy, p),
                out_shardings=shardings.ema_params)(params)
  return state.replace(params=params, opt_state=opt_state, ema_params=ema)


def _log_step(log: loop.MetricsLog, step: int, metrics: dict) -> dict:
  # Metrics are replicated: every process reads its own copy (no cross-host gather).
  return log.record(step, {k: float(np.asarray(v.addressable_data(0)))
                           for k, v in metrics.items()})
