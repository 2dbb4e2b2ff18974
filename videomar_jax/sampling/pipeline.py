"""From a checkpoint and pixels to generated pixels: loading, tokenizing, decoding."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videomar_jax.models import sequence
from videomar_jax.models.videomar import VideoMAR
from videomar_jax.sampling.generate import SamplerSettings, generate, generate_teacher_forced
from videomar_jax.tokenizers import make_tokenizer
from videomar_jax.tokenizers.base import unit_to_video
from videomar_jax.train import optimizer as optim_lib
from videomar_jax.train.checkpoint import Checkpointer
from videomar_jax.train.state import create_state, video_to_tokens


def _checkpoint_location(path: str) -> tuple[str, int | None]:
  """(checkpoint directory, step or None = latest) for a run directory, a run whose
  `config.train.checkpoint_dir` is elsewhere, a checkpoint directory URI (gs://...), or one
  `<checkpoints>/<step>` folder."""
  local = "://" not in path
  path = os.path.abspath(path) if local else path.rstrip("/")
  parent, base = os.path.dirname(path), os.path.basename(path)
  if base.isdigit() and (not local or os.path.basename(parent) == "checkpoints"):
    return parent, int(base)
  if not local:  # a checkpoint directory URI (a run's gs://.../checkpoints)
    return path, None
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  if os.path.isfile(os.path.join(path, "config.json")):
    with open(os.path.join(path, "config.json")) as f:
      remote = json.load(f).get("train", {}).get("checkpoint_dir", "")
    if remote:
      return remote.rstrip("/"), None
  raise FileNotFoundError(f"{path} is neither a run directory with checkpoints/ nor a "
                          "checkpoints/<step> folder.")


def load_checkpoint(path: str, use_ema: bool = True):
  """A run directory (its latest checkpoint), `<run>/checkpoints/<step>`, or a checkpoint
  directory URI -> (config, params, step). EMA weights by default."""
  directory, step = _checkpoint_location(path)
  checkpointer = Checkpointer("", keep=1_000_000, directory=directory, create=False)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{directory} holds no checkpoint.")
    meta = checkpointer.restore_meta(step)
    config = ml_collections.ConfigDict(json.loads(meta["config"]))
    _find_run_tokenizer(config, directory)
    model = VideoMAR(config)
    total = sum(stage["steps"] for stage in config.stages)
    optimizer = optim_lib.make_optimizer(config.optim, config.batch_size, total)
    abstract = jax.eval_shape(lambda: create_state(model, optimizer, config.seed))
    state = checkpointer.restore(step, abstract)
  finally:
    checkpointer.close()
  return config, (state.ema_params if use_ema else state.params), step


def _find_run_tokenizer(config: ml_collections.ConfigDict, checkpoint_dir: str) -> None:
  """A run keeps its Cosmos tokenizer in `<run>/tokenizer` (see `trainer.resolve_tokenizer`);
  if the recorded path is gone (the run was moved or copied), use the run's copy."""
  tokenizer = config.tokenizer
  if tokenizer.get("name") != "cosmos" or os.path.isdir(tokenizer.get("checkpoint") or ""):
    return
  own = os.path.join(os.path.dirname(checkpoint_dir.rstrip("/")), "tokenizer")
  if "://" not in own and os.path.isdir(own):
    tokenizer.checkpoint = own


class VideoGenerator:
  """Pixels in, pixels out, for one model: wraps tokenizer, `generate` and decoding."""

  def __init__(self, config: ml_collections.ConfigDict, params):
    self.config, self.params = config, params
    self.model = VideoMAR(config)
    self.tokenizer = make_tokenizer(config.tokenizer)
    self.stride = self.tokenizer.spatial_stride * config.model.patch_size

  def tokens(self, video: np.ndarray):
    """uint8 [B, F, H, W, 3] -> (tokens [B, T, N, C], grid)."""
    return video_to_tokens(self.model, self.tokenizer, jnp.asarray(video))

  def pixels(self, tokens: jax.Array, grid) -> np.ndarray:
    """tokens [B, T, N, C] -> uint8 video [B, F, H, W, 3]."""
    p = self.config.model.patch_size
    latents = sequence.unpatchify(tokens, p, grid[0] * p, grid[1] * p)
    return np.asarray(unit_to_video(self.tokenizer.decode(latents)))

  def __call__(self, given_video: np.ndarray, settings: SamplerSettings, seed: int = 0,
               context=None, context_mask=None):
    """Generates after the given frames; returns (uint8 video incl. the given frames,
    tokens)."""
    tokens, grid = self.tokens(given_video)
    out = generate(self.model, self.params, tokens, jax.random.key(seed), settings, grid,
                   context, context_mask)
    return self.pixels(out["tokens"], grid), out["tokens"]

  def teacher_forced(self, true_video: np.ndarray, settings: SamplerSettings, seed: int = 0,
                     num_given: int = 1, context=None, context_mask=None):
    """Every frame after the first `num_given` generated from the TRUE frames before it
    (see `generate_teacher_forced`); returns (uint8 video, tokens) like `__call__`."""
    tokens, grid = self.tokens(true_video)
    out = generate_teacher_forced(self.model, self.params, tokens, jax.random.key(seed),
                                  settings, grid, num_given, context, context_mask)
    return self.pixels(out["tokens"], grid), out["tokens"]
