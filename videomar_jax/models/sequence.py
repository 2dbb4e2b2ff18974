"""How a video becomes one token sequence: token layout, 3D positions and attention masks.

A sequence is a concatenation of frames of N = h * w tokens. Each token has a frame index
(its RoPE time position) and belongs to one of two streams:
  * the context stream (`is_target=False`): frames the model sees as they are. A token of
    frame i attends to context tokens of frames <= i (temporal causality, spatial
    bi-directionality);
  * the target stream (`is_target=True`), used by the all-frames loss: a masked copy of frame j
    that attends to context frames < j and to itself, never to other target frames.
With only the context stream this is the paper's frame-causal mask. The KV-cached sampler
uses the same rule with the cache as keys (unwritten cache slots get frame index
`EMPTY_FRAME`, which no query can see).
"""

import jax
import jax.numpy as jnp
import numpy as np

from videomar_jax.models.attention import FrameBlockMask

EMPTY_FRAME = np.iinfo(np.int32).max  # frame index of keys nobody may attend to


def frame_positions(frame_indices, h: int, w: int) -> np.ndarray:
  """(frame, row, column) of every token of the given frames, [len(frames) * h * w, 3]."""
  frames = np.asarray(frame_indices, np.int32)
  rows, cols = np.meshgrid(np.arange(h, dtype=np.int32), np.arange(w, dtype=np.int32),
                           indexing="ij")
  grid = np.stack([rows.ravel(), cols.ravel()], axis=-1)  # [N, 2]
  out = [np.concatenate([np.full((h * w, 1), f, np.int32), grid], axis=-1) for f in frames]
  return np.concatenate(out, axis=0) if out else np.zeros((0, 3), np.int32)


def attention_mask(q_frame, q_is_target, k_frame, k_is_target, xp=jnp) -> jax.Array:
  """Boolean [Sq, Sk] (or batched) mask: which keys each query may attend to.

  Args are integer frame indices and boolean stream flags for queries and keys; leading
  batch dims broadcast. `xp=np` computes it as a static NumPy array.
  """
  q_frame, k_frame = xp.asarray(q_frame)[..., :, None], xp.asarray(k_frame)[..., None, :]
  q_tgt, k_tgt = xp.asarray(q_is_target)[..., :, None], xp.asarray(k_is_target)[..., None, :]
  see_context = ~k_tgt & xp.where(q_tgt, k_frame < q_frame, k_frame <= q_frame)
  see_own_target = k_tgt & q_tgt & (k_frame == q_frame)
  return see_context | see_own_target


def frame_block_mask(frames, is_target, tokens_per_frame: int, min_saving: float = 0.25,
                     max_groups: int = 4):
  """The self-attention mask of a sequence of whole frames (`frames[i]`, `is_target[i]`
  describe its i-th frame): a sparse `FrameBlockMask` when it skips at least `min_saving`
  of the frame-by-frame blocks of the dense product (the all-frames training sequence at 8
  frames computes 81 of 196), else the dense [S, S] mask. Query frames are cut into at most
  `max_groups` consecutive groups, each padded to its longest row of visible frames, at the
  cut that computes the fewest blocks."""
  num_frames = len(frames)
  if attended_key_fraction(frames, is_target, min_saving, max_groups) == 1.0:
    token_frames = np.repeat(np.asarray(frames, np.int32), tokens_per_frame)
    token_is_target = np.repeat(np.asarray(is_target, bool), tokens_per_frame)
    return attention_mask(token_frames, token_is_target, token_frames, token_is_target)
  visible, cuts = _frame_block_plan(frames, is_target, max_groups)
  groups, visible_slots = [], []
  for start, end in cuts:
    rows = visible[start:end]
    slots = max(len(v) for v in rows)
    # Short rows are padded with their first block, switched off in `visible_slots`.
    groups.append([list(v) + [v[0]] * (slots - len(v)) for v in rows])
    flags = np.zeros((end - start, slots * tokens_per_frame), bool)
    for i, v in enumerate(rows):
      flags[i, :len(v) * tokens_per_frame] = True
    visible_slots.append(flags)
  return FrameBlockMask(groups, tokens_per_frame, num_frames, visible_slots)


def attended_key_fraction(frames, is_target, min_saving: float = 0.25,
                          max_groups: int = 4) -> float:
  """The fraction of the dense [S, S] product that `frame_block_mask` computes (1.0 when it
  stays dense); for FLOP counts."""
  visible, cuts = _frame_block_plan(frames, is_target, max_groups)
  fraction = _computed_blocks(visible, cuts) / len(frames) ** 2
  return fraction if fraction <= 1.0 - min_saving else 1.0


def _frame_block_plan(frames, is_target, max_groups: int):
  """(visible key frames of each query frame, the cut into groups)."""
  frame_mask = attention_mask(frames, is_target, frames, is_target, xp=np)  # [F, F]
  visible = [np.flatnonzero(row) for row in frame_mask]
  return visible, _fewest_block_cuts([len(v) for v in visible], max_groups)


def _computed_blocks(visible, cuts) -> int:
  return sum((end - start) * max(len(v) for v in visible[start:end]) for start, end in cuts)


def _fewest_block_cuts(row_lengths, max_groups: int) -> list[tuple[int, int]]:
  """[(start, end)] cutting the rows into <= max_groups consecutive groups so that the sum of
  (rows in group x longest row in group) is smallest (dynamic programming, F^2 * groups)."""
  n = len(row_lengths)
  best = {(0, 0): (0, None)}  # (rows covered, groups used) -> (cost, previous cut)
  for used in range(1, max_groups + 1):
    for end in range(1, n + 1):
      options = []
      for start in range(end):
        if (start, used - 1) in best:
          cost = best[(start, used - 1)][0] + (end - start) * max(row_lengths[start:end])
          options.append((cost, start))
      if options:
        best[(end, used)] = min(options)
  used = min((u for u in range(1, max_groups + 1) if (n, u) in best),
             key=lambda u: (best[(n, u)][0], u))
  cuts, end = [], n
  while end:
    start = best[(end, used)][1]
    cuts.append((start, end))
    end, used = start, used - 1
  return cuts[::-1]


def frame_causal_mask(num_frames: int, tokens_per_frame: int) -> jax.Array:
  """The paper's mask for a clip of clean/partially masked frames: [S, S]."""
  frames = np.repeat(np.arange(num_frames, dtype=np.int32), tokens_per_frame)
  not_target = np.zeros_like(frames, bool)
  return attention_mask(frames, not_target, frames, not_target)


def patchify(latents: jax.Array, p: int) -> jax.Array:
  """[B, T, h, w, C] latents -> [B, T, (h/p)*(w/p), p*p*C] tokens (channel order dy, dx, c)."""
  b, t, h, w, _ = latents.shape
  if h % p or w % p:
    raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {p}.")
  x = space_to_depth(latents, p)
  return x.reshape(b, t, (h // p) * (w // p), x.shape[-1])


def unpatchify(tokens: jax.Array, p: int, h: int, w: int) -> jax.Array:
  """Inverse of `patchify`: [B, T, N, p*p*C] -> [B, T, h, w, C] with h, w latent sizes."""
  b, t, _, d = tokens.shape
  return depth_to_space(tokens.reshape(b, t, h // p, w // p, d), p)


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
  """[..., H, W, C] -> [..., H/p, W/p, p*p*C], channel order (dy, dx, c)."""
  *lead, height, width, c = x.shape
  x = x.reshape(*lead, height // p, p, width // p, p, c)
  x = jnp.swapaxes(x, -4, -3)  # [..., h, w, dy, dx, c]
  return x.reshape(*lead, height // p, width // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
  """Inverse of `space_to_depth`: [..., h, w, p*p*C] -> [..., h*p, w*p, C]."""
  *lead, h, w, d = x.shape
  x = x.reshape(*lead, h, w, p, p, d // (p * p))
  x = jnp.swapaxes(x, -4, -3)  # [..., h, dy, w, dx, c]
  return x.reshape(*lead, h * p, w * p, d // (p * p))
