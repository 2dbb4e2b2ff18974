"""3D rotary position embedding (Step-Video's RoPE3D).

Each head's channels are split into three parts for the (frame, row, column) axes; each part
gets ordinary 1D rotate-half RoPE on its integer index. There is no learned position table,
so positions beyond those seen in training (more frames, larger frames) need no resizing:
this is how the model extrapolates.
"""

from typing import Sequence

import jax
import jax.numpy as jnp


def default_split(head_dim: int) -> tuple[int, int, int]:
  """Step-Video's split: half the channels for time, a quarter each for rows and columns."""
  if head_dim % 8:
    raise ValueError(f"head_dim {head_dim} must be divisible by 8 for the default 3D RoPE "
                     "split (hd/2, hd/4, hd/4), each part even.")
  return head_dim // 2, head_dim // 4, head_dim // 4


def resolve_split(head_dim: int, split: Sequence[int] = ()) -> tuple[int, int, int]:
  """Validates a configured (t, h, w) channel split; () means the default split."""
  if not split:
    return default_split(head_dim)
  split = tuple(int(s) for s in split)
  if len(split) != 3 or sum(split) != head_dim or any(s <= 0 or s % 2 for s in split):
    raise ValueError(f"rope_split {split} must be three positive even numbers summing to the "
                     f"head dim {head_dim}.")
  return split


def _rope_1d(x: jax.Array, pos: jax.Array, base: float) -> jax.Array:
  """Rotate-half RoPE on the last axis of x [..., S, H, d] with positions pos [..., S]."""
  d = x.shape[-1]
  inv_freq = 1.0 / (base ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  angles = pos.astype(jnp.float32)[..., None] * inv_freq  # [..., S, d/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[..., None, :]  # [..., S, 1, d]
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * jnp.cos(angles) + rotated * jnp.sin(angles)


def apply_rope_3d(x: jax.Array, positions: jax.Array, split: Sequence[int],
                  base: float = 10000.0) -> jax.Array:
  """Applies 3D RoPE.

  Args:
    x: queries or keys [B, S, H, hd].
    positions: integer (frame, row, column) per token, [S, 3] or [B, S, 3].
    split: channels per axis, summing to hd.
    base: RoPE frequency base.
  Returns: x rotated, same shape and dtype (computed in float32).
  """
  if positions.ndim == 2:
    positions = positions[None]
  x32 = x.astype(jnp.float32)
  parts = jnp.split(x32, [split[0], split[0] + split[1]], axis=-1)
  out = [_rope_1d(p, positions[..., i], base) for i, p in enumerate(parts)]
  return jnp.concatenate(out, axis=-1).astype(x.dtype)
