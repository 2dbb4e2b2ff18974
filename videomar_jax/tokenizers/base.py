"""Tokenizer interface: pixels <-> continuous latents.

A tokenizer maps a video ``float [B, F, H, W, 3]`` in ``[-1, 1]`` to latents
``[B, T, h, w, C]`` and back. Latents handed to the generator are **already
multiplied** by ``latent_scale`` (so that they have roughly unit variance), and
:meth:`Tokenizer.decode` divides by it before decoding.

Frame convention: tokenizers are *causal* in time, as the video VAEs VideoMAR builds
on (e.g. the Cosmos tokenizer): the first frame gets its own latent frame and every
further ``temporal_stride`` frames one more, so ``T = 1 + (F - 1) / temporal_stride``
and ``F - 1`` must be divisible by the stride. For ``temporal_stride == 1`` this is
simply ``T = F``.
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp

from videomar_jax.models import sequence

__all__ = [
    "Tokenizer",
    "num_latent_frames",
    "unit_to_video",
    "video_to_unit",
]


def video_to_unit(video: jax.Array) -> jax.Array:
  """Maps ``uint8`` pixels in ``[0, 255]`` to ``float32`` in ``[-1, 1]``."""
  return jnp.asarray(video).astype(jnp.float32) / 127.5 - 1.0


def unit_to_video(video: jax.Array) -> jax.Array:
  """Maps floats in ``[-1, 1]`` to ``uint8`` pixels (clipped, rounded to nearest)."""
  pixels = (jnp.asarray(video, dtype=jnp.float32) + 1.0) * 127.5
  return jnp.clip(jnp.round(pixels), 0, 255).astype(jnp.uint8)


def num_latent_frames(num_frames: int, temporal_stride: int) -> int:
  """``1 + (num_frames - 1) / temporal_stride`` (causal); raises if not integral."""
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if (num_frames - 1) % temporal_stride:
    raise ValueError(
        f"num_frames={num_frames} does not fit temporal_stride={temporal_stride}: "
        f"num_frames - 1 = {num_frames - 1} must be divisible by the stride "
        "(the first frame is encoded on its own)"
    )
  return 1 + (num_frames - 1) // temporal_stride


class Tokenizer(abc.ABC):
  """Abstract video tokenizer with continuous latents.

  Subclasses implement the four properties and the raw (unscaled) codec
  :meth:`_encode` / :meth:`_decode`; this base class validates shapes and applies
  ``latent_scale``. Implementations must be pure ``jnp`` code so that ``encode`` and
  ``decode`` can be traced under ``jax.jit`` (shapes are static there, so the
  validation below still runs at trace time).
  """

  @property
  @abc.abstractmethod
  def temporal_stride(self) -> int:
    """Pixel frames per latent frame (after the first, see module docstring)."""

  @property
  @abc.abstractmethod
  def spatial_stride(self) -> int:
    """Pixels per latent along height and width."""

  @property
  @abc.abstractmethod
  def latent_channels(self) -> int:
    """Channels ``C`` of a latent."""

  @property
  @abc.abstractmethod
  def latent_scale(self) -> float:
    """Factor by which ``encode`` multiplies the raw latents."""

  @abc.abstractmethod
  def _encode(self, video: jax.Array) -> jax.Array:
    """Raw encoder: validated video ``[B, F, H, W, 3]`` -> unscaled latents."""

  @abc.abstractmethod
  def _decode(self, latents: jax.Array) -> jax.Array:
    """Raw decoder: unscaled latents ``[B, T, h, w, C]`` -> video."""

  def num_latent_frames(self, num_frames: int) -> int:
    """Latent frames ``T`` produced for ``num_frames`` pixel frames (causal).

    Raises:
      ValueError: if ``num_frames - 1`` is not divisible by ``temporal_stride``.
    """
    return num_latent_frames(num_frames, self.temporal_stride)

  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """``(T, h, w, C)`` for a clip of ``num_frames`` frames of ``height x width``.

    Raises:
      ValueError: naming the sizes and strides if they are not compatible.
    """
    stride = self.spatial_stride
    if height < 1 or width < 1:
      raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    if height % stride or width % stride:
      raise ValueError(
          f"frame size {height}x{width} (height x width) is not divisible by "
          f"spatial_stride={stride}"
      )
    return (
        self.num_latent_frames(num_frames),
        height // stride,
        width // stride,
        self.latent_channels,
    )

  def encode(self, video: jax.Array) -> jax.Array:
    """Encodes ``float [B, F, H, W, 3]`` in ``[-1, 1]`` to latents ``[B, T, h, w, C]``.

    The result is already multiplied by ``latent_scale``.

    Raises:
      ValueError: on a wrong rank, channel count, dtype or incompatible sizes.
    """
    video = jnp.asarray(video)
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(
          f"video must have shape [B, F, H, W, 3], got {tuple(video.shape)}"
      )
    if not jnp.issubdtype(video.dtype, jnp.floating):
      raise ValueError(
          f"video must be floating point in [-1, 1], got dtype {video.dtype} "
          "(convert uint8 pixels with video_to_unit)"
      )
    _, frames, height, width, _ = video.shape
    self.latent_shape(frames, height, width)
    latents = self._encode(video)
    return latents * jnp.asarray(self.latent_scale, dtype=latents.dtype)

  def decode(self, latents: jax.Array) -> jax.Array:
    """Decodes scaled latents ``[B, T, h, w, C]`` to a video ``[B, F, H, W, 3]``.

    Divides by ``latent_scale`` first (the inverse of :meth:`encode`).

    Raises:
      ValueError: on a wrong rank or channel count.
    """
    latents = jnp.asarray(latents)
    if latents.ndim != 5 or latents.shape[-1] != self.latent_channels:
      raise ValueError(
          f"latents must have shape [B, T, h, w, {self.latent_channels}], "
          f"got {tuple(latents.shape)}"
      )
    return self._decode(latents / jnp.asarray(self.latent_scale, dtype=latents.dtype))


def video_to_tokens(tokenizer: Tokenizer, video: jax.Array, patch_size: int):
  """uint8 video [B, F, H, W, 3] -> (transformer tokens [B, T, N, C], (h, w) token grid):
  encoded, then `patch_size` x `patch_size` latents per token."""
  latents = tokenizer.encode(video_to_unit(video))
  _, _, lh, lw, _ = latents.shape
  return sequence.patchify(latents, patch_size), (lh // patch_size, lw // patch_size)
