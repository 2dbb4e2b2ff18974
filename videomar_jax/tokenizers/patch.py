"""Parameter-free patch tokenizer: space-to-depth on pixels.

Every ``p x p`` block of RGB pixels becomes one latent with ``3 * p * p`` channels in
``(dy, dx, rgb)`` order, i.e. channel ``(dy * p + dx) * 3 + c`` holds pixel
``(p * i + dy, p * j + dx)`` colour ``c`` of latent ``(i, j)``. Frames are kept as
they are (temporal stride 1). Decoding is the exact inverse (depth-to-space).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from videomar_jax.models.sequence import depth_to_space, space_to_depth
from videomar_jax.tokenizers.base import Tokenizer

__all__ = ["PatchTokenizer"]


class PatchTokenizer(Tokenizer):
  """Space-to-depth tokenizer with spatial stride ``patch_size``.

  Args:
    patch_size: side ``p`` of the square pixel patches (>= 1).
    latent_scale: factor applied to the latents by ``encode`` (must be non-zero).
  """

  def __init__(self, patch_size: int, latent_scale: float = 1.0):
    if int(patch_size) != patch_size or patch_size < 1:
      raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
    if not latent_scale:
      raise ValueError(f"latent_scale must be non-zero, got {latent_scale!r}")
    self._patch_size = int(patch_size)
    self._latent_scale = float(latent_scale)

  def __repr__(self) -> str:
    return f"PatchTokenizer(patch_size={self._patch_size}, latent_scale={self._latent_scale})"

  @property
  def patch_size(self) -> int:
    return self._patch_size

  @property
  def temporal_stride(self) -> int:
    return 1

  @property
  def spatial_stride(self) -> int:
    return self._patch_size

  @property
  def latent_channels(self) -> int:
    return 3 * self._patch_size * self._patch_size

  @property
  def latent_scale(self) -> float:
    return self._latent_scale

  def _encode(self, video: jax.Array) -> jax.Array:
    return space_to_depth(video, self._patch_size)

  def _decode(self, latents: jax.Array) -> jax.Array:
    return depth_to_space(latents, self._patch_size)
