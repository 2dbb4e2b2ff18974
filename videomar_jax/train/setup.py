"""The composition layer: a config in, every part of an experiment out.

`resolve(config)` computes the values derived from a config once (per curriculum stage:
batch size, latent frames, token grid, sequence length; the token width; the step range),
and `build(config)` assembles model, tokenizer, mesh, rules, optimizer, learning-rate
schedule, shardings, the abstract state and the jitted train step from it. The trainer,
`plan`, `bench train` and `bench sampler` all start here; `restore_weights` gives sampling
and evaluation the weights of a checkpoint without building an optimizer.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import optax

from videomar_jax.losses import next_frame
from videomar_jax.models.videomar import VideoMAR
from videomar_jax.parallel import partition
from videomar_jax.parallel.mesh import make_mesh
from videomar_jax.parallel.rules import param_shardings, rules_from_config
from videomar_jax.tokenizers import make_tokenizer, model_token_dim, tokenizer_geometry
from videomar_jax.tokenizers.base import Tokenizer, num_latent_frames
from videomar_jax.tokenizers.geometry import TokenizerGeometry
from videomar_jax.train import optimizer as optim_lib
from videomar_jax.train.checkpoint import (Checkpointer, CheckpointRestoreError,
                                           NoRestorableCheckpointError, checkpoint_location)
from videomar_jax.train.state import TrainState, create_state, make_train_step


# ---- Derived values, computed in one place.
@dataclasses.dataclass(frozen=True)
class StageShape:
  """One curriculum stage with everything its shapes imply."""
  index: int
  num_frames: int  # pixel frames of a training clip
  resolution: int
  batch_size: int  # global
  steps: int
  start: int  # [start, end) global steps
  end: int
  latent_frames: int | None  # None when the frames do not fit the temporal stride
  grid: int  # tokens per frame side (resolution / (tokenizer stride x model patch))
  tokens_per_frame: int
  supervised_frames: int | None  # latent frames the loss predicts


@dataclasses.dataclass(frozen=True)
class Resolved:
  geometry: TokenizerGeometry
  token_dim: int
  stages: tuple[StageShape, ...]
  total_steps: int


def stage_batch_size(config: ml_collections.ConfigDict, stage) -> int:
  """A stage's global batch size (`stage.batch_size` 0 means `config.batch_size`)."""
  return stage["batch_size"] or config.batch_size


def resolve(config: ml_collections.ConfigDict) -> Resolved:
  """The derived values of `config` (no validation beyond what computing them needs; see
  `trainer.validate`)."""
  geometry = tokenizer_geometry(config.tokenizer)
  stride = geometry.spatial_stride * config.model.patch_size
  stages, start = [], 0
  for i, stage in enumerate(config.stages):
    try:
      t = num_latent_frames(stage["num_frames"], geometry.temporal_stride)
    except ValueError:
      t = None
    grid = stage["resolution"] // stride
    supervised = (None if t is None else next_frame.num_supervised_frames(
        config.loss.mode, t, config.loss.num_cond_frames))
    stages.append(StageShape(
        index=i, num_frames=stage["num_frames"], resolution=stage["resolution"],
        batch_size=stage_batch_size(config, stage), steps=stage["steps"], start=start,
        end=start + stage["steps"], latent_frames=t, grid=grid, tokens_per_frame=grid * grid,
        supervised_frames=supervised))
    start += stage["steps"]
  return Resolved(geometry=geometry, token_dim=model_token_dim(config),
                  stages=tuple(stages), total_steps=start)


def make_model(config: ml_collections.ConfigDict) -> VideoMAR:
  """The VideoMAR of `config`, its token width taken from the tokenizer's geometry."""
  return VideoMAR(config, model_token_dim(config))


# ---- The train state laid out over a mesh.
def state_shardings(model, optimizer: optax.GradientTransformation, mesh, rules,
                    seed: int = 0) -> TrainState:
  """A `TrainState` of `NamedSharding`s: params and EMA by the rules table, optimizer
  moments following their parameter, step and RNG replicated."""
  abstract = jax.eval_shape(lambda: create_state(model, optimizer, seed))
  params = param_shardings(model.logical_axes(), abstract.params, mesh, rules)
  return TrainState(step=partition.replicated(mesh), params=params,
                    opt_state=partition.optimizer_shardings(optimizer, abstract.opt_state,
                                                            params, mesh),
                    ema_params=params, rng=partition.replicated(mesh))


def abstract_state(model, optimizer, shardings: TrainState, seed: int = 0) -> TrainState:
  """`ShapeDtypeStruct`s carrying the target shardings (what Orbax restores into)."""
  return partition.with_shardings(
      jax.eval_shape(lambda: create_state(model, optimizer, seed)), shardings)


def create_sharded_state(model, optimizer, shardings: TrainState, seed: int) -> TrainState:
  """A fresh state initialised under `jit` with its `out_shardings`: every device only ever
  holds its own shards."""
  return jax.jit(lambda: create_state(model, optimizer, seed), out_shardings=shardings)()


# ---- The experiment.
@dataclasses.dataclass
class Experiment:
  """Everything `build` assembles; `train_step` is jitted over the mesh, state donated."""
  config: ml_collections.ConfigDict
  resolved: Resolved
  model: VideoMAR
  tokenizer: Tokenizer | None  # None when built without one (latent batches only)
  mesh: Any
  rules: Any
  optimizer: optax.GradientTransformation
  schedule: Any  # step -> learning rate
  shardings: TrainState
  abstract_state: TrainState
  train_step: Any

  def create_state(self) -> TrainState:
    return create_sharded_state(self.model, self.optimizer, self.shardings, self.config.seed)


def build(config: ml_collections.ConfigDict, *, mesh=None, with_tokenizer: bool = True,
          total_steps: int | None = None) -> Experiment:
  """Assembles the experiment of `config`. `mesh`: default `config.mesh` over the devices
  (`plan` passes fake CPU devices); without a tokenizer the step takes `latents` batches
  only (what `plan` and `bench train` time); `total_steps` sizes the learning-rate
  schedule (default: the curriculum's)."""
  resolved = resolve(config)
  model = VideoMAR(config, resolved.token_dim)
  tokenizer = make_tokenizer(config.tokenizer) if with_tokenizer else None
  mesh = make_mesh(config.mesh) if mesh is None else mesh
  rules = rules_from_config(config.sharding.rules)
  total_steps = total_steps or resolved.total_steps
  optimizer = optim_lib.make_optimizer(config.optim, config.batch_size, total_steps)
  schedule = optim_lib.lr_schedule(config.optim, config.batch_size, total_steps)
  shardings = state_shardings(model, optimizer, mesh, rules, config.seed)
  step = partition.shard_train_step(
      make_train_step(model, tokenizer, optimizer, config.optim.ema_decay,
                      next_frame.LossSettings.from_config(config)), shardings, mesh, rules)
  return Experiment(config=config, resolved=resolved, model=model, tokenizer=tokenizer,
                    mesh=mesh, rules=rules, optimizer=optimizer, schedule=schedule,
                    shardings=shardings,
                    abstract_state=abstract_state(model, optimizer, shardings, config.seed),
                    train_step=step)


# ---- Weights for sampling and evaluation.
def _find_run_tokenizer(config: ml_collections.ConfigDict, checkpoint_dir: str) -> None:
  """A run keeps its Cosmos tokenizer in `<run>/tokenizer` (see `trainer.resolve_tokenizer`);
  if the recorded path is gone (the run was moved or copied), use the run's copy."""
  tokenizer = config.tokenizer
  if tokenizer.get("name") != "cosmos" or os.path.isdir(tokenizer.get("checkpoint") or ""):
    return
  own = os.path.join(os.path.dirname(checkpoint_dir.rstrip("/")), "tokenizer")
  if "://" not in own and os.path.isdir(own):
    tokenizer.checkpoint = own


def restore_weights(path: str, use_ema: bool = True):
  """A run directory (its latest checkpoint), `<run>/checkpoints/<step>`, or a checkpoint
  directory URI -> (config, params, step). EMA weights by default. Only the weights are
  read: no optimizer is built and the optimizer moments stay on disk. Given a run, a
  damaged newest checkpoint is skipped with a warning for the newest one that restores
  (nothing is moved or deleted); a step named explicitly is that step or an error."""
  directory, step = checkpoint_location(path)
  checkpointer = Checkpointer("", keep=1_000_000, directory=directory, create=False)
  name = "ema_params" if use_ema else "params"

  def restore(step):
    config = ml_collections.ConfigDict(json.loads(checkpointer.restore_meta(step)["config"]))
    _find_run_tokenizer(config, directory)
    return config, checkpointer.restore_subtree(step, name, make_model(config).abstract_params())

  try:
    if step is None:
      step, restored = checkpointer.newest_restorable(restore)
      if step is None:
        raise FileNotFoundError(f"{directory} holds no checkpoint.")
    else:
      if step not in checkpointer.steps_newest_first():
        raise FileNotFoundError(f"{directory} holds no checkpoint step {step}.")
      try:
        restored = restore(step)
      except CheckpointRestoreError as e:
        raise NoRestorableCheckpointError(f"{e}. Name another step, or the run directory "
                                          "for the newest that restores.") from None
  finally:
    checkpointer.close()
  config, params = restored
  return config, params, step
