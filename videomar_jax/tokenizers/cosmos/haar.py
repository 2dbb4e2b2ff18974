"""3D patching of the Cosmos tokenizer: Haar wavelets (or a plain rearrange) and inverses.

Channels-last counterparts of diffusers' ``CosmosPatchEmbed3d`` / ``CosmosUnpatcher3d``:

* the first frame is repeated ``p`` times first (``F -> F - 1 + p`` frames), so that a
  causal clip of ``1 + p*k`` frames becomes ``1 + k`` patch frames and the first patch
  frame depends on frame 0 only;
* ``haar``: ``log2(p)`` levels of a one-level 3D Haar transform, each turning every
  ``2x2x2`` block (t, h, w) into 8 sub-bands ``(bt, bh, bw)`` of the filters
  ``lo = (x0 + x1)/sqrt(2)``, ``hi = (x0 - x1)/sqrt(2)`` and dividing by ``sqrt(8)``
  (so the ``lll`` band is the block mean). Band-major channels: ``band * C + c``, band
  ``= 4*bt + 2*bh + bw`` -- torch's ``cat([xlll, xllh, ..., xhhh], dim=1)``;
* ``rearrange``: space/time-to-depth with channel ``((c*p + pt)*p + ph)*p + pw``.

The inverses undo this exactly (the Haar matrix ``[[1, 1], [1, -1]]/sqrt(2)`` is its own
inverse) and drop the ``p - 1`` repeated frames again.

All lengths are even at every level for valid inputs (``H, W`` multiples of ``p`` and
``F = 1 + p*k``, hence ``F - 1 + p`` a multiple of ``p``), so diffusers' reflect padding
of odd lengths never adds a sample that is used; it is not reproduced here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["patch3d", "unpatch3d", "haar_dwt3d", "haar_idwt3d"]


def _repeat_first_frame(x: jax.Array, times: int) -> jax.Array:
  return jnp.concatenate([jnp.repeat(x[:, :1], times, axis=1), x[:, 1:]], axis=1)


def _butterfly(x: jax.Array, axis: int) -> jax.Array:
  """The 2-point Haar transform of the size-2 ``axis``: (x0, x1) -> (lo, hi)."""
  a = jnp.asarray(1.0 / math.sqrt(2.0), x.dtype)
  x0 = jax.lax.index_in_dim(x, 0, axis, keepdims=False)
  x1 = jax.lax.index_in_dim(x, 1, axis, keepdims=False)
  return jnp.stack([a * x0 + a * x1, a * x0 - a * x1], axis=axis)


def haar_dwt3d(x: jax.Array) -> jax.Array:
  """One level: ``[B, T, H, W, C] -> [B, T/2, H/2, W/2, 8*C]`` (rescaled by 1/sqrt(8))."""
  b, t, h, w, c = x.shape
  if t % 2 or h % 2 or w % 2:
    raise ValueError(f"haar_dwt3d needs even T, H, W, got {(t, h, w)}")
  y = x.reshape(b, t // 2, 2, h // 2, 2, w // 2, 2, c)
  for axis in (2, 4, 6):  # time, then height, then width, as diffusers' _dwt
    y = _butterfly(y, axis)
  y = y.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # [B, T', H', W', bt, bh, bw, C]
  y = y.reshape(b, t // 2, h // 2, w // 2, 8 * c)
  return y / jnp.asarray(math.sqrt(8.0), y.dtype)


def haar_idwt3d(x: jax.Array) -> jax.Array:
  """Inverse of :func:`haar_dwt3d`: ``[B, T, H, W, 8*C] -> [B, 2T, 2H, 2W, C]``."""
  b, t, h, w, c8 = x.shape
  if c8 % 8:
    raise ValueError(f"haar_idwt3d needs a multiple of 8 channels, got {c8}")
  y = x.reshape(b, t, h, w, 2, 2, 2, c8 // 8)  # [..., bt, bh, bw, C]
  for axis in (6, 5, 4):  # width, then height, then time, as diffusers' _idwt
    y = _butterfly(y, axis)
  y = y.transpose(0, 1, 4, 2, 5, 3, 6, 7)  # [B, T, 2, H, 2, W, 2, C]
  y = y.reshape(b, 2 * t, 2 * h, 2 * w, c8 // 8)
  return y * jnp.asarray(math.sqrt(8.0), y.dtype)


def patch3d(x: jax.Array, patch_size: int, patch_type: str = "haar") -> jax.Array:
  """``[B, 1 + p*k, H, W, C] -> [B, 1 + k, H/p, W/p, C * p**3]``."""
  p = patch_size
  x = _repeat_first_frame(x, p)
  if patch_type == "haar":
    for _ in range(int(math.log2(p))):
      x = haar_dwt3d(x)
    return x
  if patch_type == "rearrange":
    b, t, h, w, c = x.shape
    x = x.reshape(b, t // p, p, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # [B, T', H', W', C, pt, ph, pw]
    return x.reshape(b, t // p, h // p, w // p, c * p ** 3)
  raise ValueError(f"unknown patch_type {patch_type!r}; known: 'haar', 'rearrange'")


def unpatch3d(x: jax.Array, patch_size: int, patch_type: str = "haar") -> jax.Array:
  """Inverse of :func:`patch3d`: ``[B, T, h, w, C * p**3] -> [B, 1 + p*(T-1), h*p, w*p, C]``."""
  p = patch_size
  if patch_type == "haar":
    for _ in range(int(math.log2(p))):
      x = haar_idwt3d(x)
  elif patch_type == "rearrange":
    b, t, h, w, d = x.shape
    x = x.reshape(b, t, h, w, d // p ** 3, p, p, p)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)  # [B, T, pt, H, ph, W, pw, C]
    x = x.reshape(b, t * p, h * p, w * p, d // p ** 3)
  else:
    raise ValueError(f"unknown patch_type {patch_type!r}; known: 'haar', 'rearrange'")
  return x[:, p - 1:]
