"""From weights and pixels to generated pixels: tokenizing, `generate`, decoding.

The weights come from the caller (`train.setup.restore_weights` reads them from a
checkpoint), so sampling knows nothing of training."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videomar_jax.models import sequence
from videomar_jax.models.videomar import VideoMAR
from videomar_jax.sampling.generate import SamplerSettings, generate, generate_teacher_forced
from videomar_jax.tokenizers import make_tokenizer
from videomar_jax.tokenizers.base import unit_to_video, video_to_tokens


class VideoGenerator:
  """Pixels in, pixels out, for one model: wraps tokenizer, `generate` and decoding."""

  def __init__(self, config: ml_collections.ConfigDict, params):
    self.config, self.params = config, params
    self.tokenizer = make_tokenizer(config.tokenizer)
    self.model = VideoMAR(config, self.tokenizer.latent_channels * config.model.patch_size ** 2)
    self.stride = self.tokenizer.spatial_stride * config.model.patch_size

  def tokens(self, video: np.ndarray):
    """uint8 [B, F, H, W, 3] -> (tokens [B, T, N, C], grid)."""
    return video_to_tokens(self.tokenizer, jnp.asarray(video), self.config.model.patch_size)

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
