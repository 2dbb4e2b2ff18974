"""Analytic parameter and FLOP counts (reported by `videomar info`).

FLOPs count multiply-adds as 2 FLOPs and only matmuls (norms, RoPE, softmax are ignored).
Per transformer layer and token of a sequence of S tokens with width D:
  self-attention projections  2 * (3D*D + D*D)
  attention scores and mix    2 * 2 * K * D   (the product that runs: K = the keys of
                                               the frame blocks each query's group computes,
                                               on average; S where the mask stays dense, see
                                               sequence.frame_block_mask)
  cross-attention (context)   2 * 2 * D*D + 2 * 2 * L * D, plus 2 * L * 2D*D per example
  FFN                         2 * 2 * D * mlp_ratio*D
plus z_proj (2 * token_dim * D per token). The diffusion head (width W, depth K) costs per
token and diffusion sample 2 * (C*W + 256*W + W*W + D*W + K*(2W*W + 3W*W) + 2W*W + 2C*W)
and runs on N tokens of each supervised frame, `diffusion_batch_mul` times. A training
example costs 3x the forward FLOPs (backward = 2x forward).
"""

import jax
import ml_collections
import numpy as np

from videomar_jax.losses.next_frame import num_supervised_frames, sequence_frames
from videomar_jax.models import sequence
from videomar_jax.models.videomar import VideoMAR
from videomar_jax.tokenizers import tokenizer_geometry


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def params_per_module(model: VideoMAR) -> dict[str, int]:
  """Parameter counts of the top-level pieces of the transformer and the diffusion head."""
  abstract = model.abstract_params()
  counts = {}
  for part, tree in abstract.items():
    for name, sub in tree.items():
      key = f"{part}/blocks (x{model.config.model.depth})" if name.startswith("blocks") \
          else f"{part}/{name}"
      counts[key] = counts.get(key, 0) + count_params(sub)
  return counts


def sequence_shape(config: ml_collections.ConfigDict, num_frames: int,
                   resolution: int) -> dict[str, int]:
  """Latent frames, tokens per frame and sequence length for a clip of pixel frames."""
  geometry = tokenizer_geometry(config.tokenizer)
  t = (num_frames - 1) // geometry.temporal_stride + 1
  side = resolution // (geometry.spatial_stride * config.model.patch_size)
  n = side * side
  f = num_supervised_frames(config.loss.mode, t, config.loss.num_cond_frames)
  s = len(sequence_frames(config.loss.mode, t, config.loss.num_cond_frames)[0]) * n
  return {"latent_frames": t, "tokens_per_frame": n, "sequence_length": s,
          "supervised_frames": f}


def transformer_pass_flops(config: ml_collections.ConfigDict, queries: int, keys: int,
                           token_dim: int) -> float:
  """One forward pass of `queries` tokens attending to `keys` keys (context included)."""
  m = config.model
  d = m.width
  per_token_layer = 2 * 4 * d * d + 2 * 2 * keys * d + 2 * 2 * d * m.mlp_ratio * d
  per_pass_layer = 0
  if m.context.kind != "none":
    length = m.context.length if m.context.kind == "text" else 1
    per_token_layer += 2 * 2 * d * d + 2 * 2 * length * d
    per_pass_layer += 2 * length * 2 * d * d
  return queries * (2 * token_dim * d + m.depth * per_token_layer) + m.depth * per_pass_layer


def head_flops_per_token(config: ml_collections.ConfigDict, token_dim: int) -> float:
  """One diffusion-head evaluation of one token."""
  d, w, c, k = config.model.width, config.head.width, token_dim, config.head.depth
  return 2 * (c * w + 256 * w + w * w + d * w + k * 5 * w * w + 2 * w * w + 2 * c * w)


def train_flops_per_example(config: ml_collections.ConfigDict, num_frames: int,
                            resolution: int, token_dim: int) -> float:
  shape = sequence_shape(config, num_frames, resolution)
  s = shape["sequence_length"]
  keys = s
  chunk = config.model.attention_chunk
  if config.model.temporal_attention == "causal" and not (chunk and s > chunk):
    # computed block by block (query chunks take the dense mask)
    keys = s * sequence.attended_key_fraction(*sequence_frames(
        config.loss.mode, shape["latent_frames"], config.loss.num_cond_frames))
  head_tokens = (shape["supervised_frames"] * shape["tokens_per_frame"]
                 * config.head.diffusion_batch_mul)
  return 3.0 * (transformer_pass_flops(config, s, keys, token_dim)
                + head_tokens * head_flops_per_token(config, token_dim))
