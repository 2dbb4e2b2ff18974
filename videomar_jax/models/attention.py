"""Self- and cross-attention of the Step-Video block.

Parameter layout follows Step-Video so PyTorch weights map one to one: the fused `wqkv`
kernel is [D, heads, 3, head_dim] (PyTorch's output features ordered head, q/k/v,
head_dim), the cross-attention `wkv` kernel is [D, heads, 2, head_dim]; no biases; q and k
get a per-head RMSNorm (eps 1e-6) with a learned weight.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from videomar_jax.models import rope
from videomar_jax.models.layers import RMSNorm, dense


@jax.tree_util.register_pytree_node_class
class FrameBlockMask:
  """A self-attention mask made of whole blocks (frames of `block_size` tokens), stored
  sparsely. The query blocks are cut into consecutive groups; in group g, query block i
  attends to the key blocks `groups[g][i]` (static, padded to the group's longest row with
  slots that `visible[g]`, [rows of g, K_g * block_size] bool, switches off).

  The all-frames training sequence needs it: a target frame sees the context frames before
  it and itself, never the other target frames, so the dense [S, S] product spends most of
  its work on scores it then throws away (`models/sequence.py:frame_block_mask` builds one
  only when it skips at least a quarter of the blocks). Groups keep short rows (early
  frames) from being padded to the longest one.
  """

  def __init__(self, groups, block_size: int, num_key_blocks: int, visible):
    self.groups = tuple(tuple(tuple(int(j) for j in row) for row in g) for g in groups)
    self.block_size = int(block_size)
    self.num_key_blocks = int(num_key_blocks)
    self.visible = tuple(visible)

  @property
  def num_query_blocks(self) -> int:
    return sum(len(g) for g in self.groups)

  @property
  def num_computed_blocks(self) -> int:
    """Query-by-key blocks the attention computes (the dense product: Q * K of them)."""
    return sum(len(g) * len(g[0]) for g in self.groups)

  def tree_flatten(self):
    return self.visible, (self.groups, self.block_size, self.num_key_blocks)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*aux, children)

  def dense(self) -> jax.Array:
    """The same mask as a dense [Sq, Sk] boolean array."""
    bs, rows = self.block_size, []
    for group, visible in zip(self.groups, self.visible):
      visible = jnp.asarray(visible).reshape(len(group), len(group[0]), bs)
      for i, row in enumerate(group):
        blocks = [jnp.zeros((bs,), bool) for _ in range(self.num_key_blocks)]
        for slot, j in enumerate(row):
          blocks[j] = blocks[j] | visible[i, slot]
        rows.append(jnp.broadcast_to(jnp.concatenate(blocks), (bs, self.num_key_blocks * bs)))
    return jnp.concatenate(rows, axis=0)


# Who computes softmax(q.k / sqrt(hd)) v. `auto` picks cuDNN's fused flash attention on a
# GPU when it supports the call, else XLA's (`jax.nn.dot_product_attention` either way);
# `reference` is this file's own einsums (the parity tests' reference).
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "reference")


def resolve_implementation(implementation: str, dtype, head_dim: int) -> str:
  """The implementation `auto` stands for on this backend: `cudnn` on a GPU for bf16/fp16
  inputs with a head_dim cuDNN's flash attention takes (a multiple of 8, at most 128),
  else `xla`. Other names are returned as they are (an unknown one is an error)."""
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r} not in "
                     f"{ATTENTION_IMPLEMENTATIONS}.")
  if implementation != "auto":
    return implementation
  fused_dtype = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if jax.default_backend() == "gpu" and fused_dtype and head_dim % 8 == 0 and head_dim <= 128:
    return "cudnn"
  return "xla"


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: "jax.Array | FrameBlockMask | None",
                          chunk: int = 0, implementation: str = "auto") -> jax.Array:
  """Softmax attention with logits and softmax in float32.

  q [B, Sq, H, hd], k/v [B, Sk, H, hd], mask boolean broadcastable to [B, H, Sq, Sk].
  Disallowed keys get a large negative logit, so they weigh exactly zero whenever a query
  has at least one allowed key.

  The product runs in `jax.nn.dot_product_attention` (`implementation`: see
  `ATTENTION_IMPLEMENTATIONS`); the frame-causal structure is its boolean `mask` (cuDNN
  turns it into an additive bias). `reference` runs the same math as plain einsums.

  With `chunk` > 0 and Sq > chunk, queries are processed `chunk` at a time under
  `jax.checkpoint`: the float32 [B, H, Sq, Sk] score matrix never exists, only one block of
  it, in the forward and (recomputed) in the backward pass. Same values; trades a second
  score computation in the backward pass for memory (25600-token clips need it). The
  boolean mask is the caller's ([S, S] bytes, shared by batch and heads: 655 MB at 25600);
  blocks are sliced out of it, not copied.

  A `FrameBlockMask` computes only the blocks it lists (same values up to float
  summation order) with the reference einsums; with `chunk`, or where cuDNN runs, it falls
  back to its dense form (cuDNN's fused kernel on the dense mask beats gathered blocks).
  """
  implementation = resolve_implementation(implementation, q.dtype, q.shape[-1])
  if isinstance(mask, FrameBlockMask):
    if not (chunk and q.shape[1] > chunk) and implementation != "cudnn":
      return _frame_block_attention(q, k, v, mask)
    mask = mask.dense()[None, None]
  if chunk and q.shape[1] > chunk:
    return _chunked_attention(q, k, v, mask, chunk, implementation)
  if implementation == "reference":
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = _attention_weights(logits, mask, q.shape[-1], v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if implementation == "cudnn":
      # cuDNN takes the mask as a bias of whole query and key lengths (batch and heads may
      # still broadcast): a key-only mask [B, 1, 1, Sk], the text context's, is spelled out.
      mask = jnp.broadcast_to(mask, mask.shape[:2] + (q.shape[1], k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def _attention_weights(logits, mask, head_dim: int, dtype) -> jax.Array:
  """Softmax over the last axis (keys) of q.k / sqrt(head_dim), in float32. Disallowed keys
  (mask False) get the most negative float, so they weigh exactly zero."""
  logits = logits * head_dim ** -0.5
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1).astype(dtype)


def _frame_block_attention(q, k, v, mask: FrameBlockMask) -> jax.Array:
  """Each query block against its own key blocks only, group by group:
  [B, H, rows, bs] x [B, H, rows, K_g * bs].

  Heads go in front once, before the key blocks are gathered, so the two products and the
  softmax run on contiguous blocks (measured on CPU: the [B, S, H, hd] layout costs the
  transposes the dense path avoids inside its einsum)."""
  b, sq, h, hd = q.shape
  bs, nk = mask.block_size, mask.num_key_blocks
  if sq != mask.num_query_blocks * bs or k.shape[1] != nk * bs:
    raise ValueError(f"a FrameBlockMask of {mask.num_query_blocks} x {nk} blocks of {bs} "
                     f"tokens does not fit {sq} queries and {k.shape[1]} keys.")
  q_blocks = q.transpose(0, 2, 1, 3).reshape(b, h, mask.num_query_blocks, bs, hd)
  k_blocks, v_blocks = (x.transpose(0, 2, 1, 3).reshape(b, h, nk, bs, hd) for x in (k, v))
  outputs, first = [], 0
  for group, visible in zip(mask.groups, mask.visible):
    index = np.asarray(group)  # [rows, K_g], static
    rows, slots = index.shape

    def gather(blocks, index=index, rows=rows, slots=slots):  # -> [B, H, rows, K_g*bs, hd]
      return blocks[:, :, index].reshape(b, h, rows, slots * bs, hd)

    logits = jnp.einsum("bhnqd,bhnkd->bhnqk", q_blocks[:, :, first:first + rows],
                        gather(k_blocks), preferred_element_type=jnp.float32)
    weights = _attention_weights(logits, jnp.asarray(visible)[None, None, :, None, :], hd,
                                 v.dtype)
    outputs.append(jnp.einsum("bhnqk,bhnkd->bhnqd", weights, gather(v_blocks)))
    first += rows
  out = jnp.concatenate(outputs, axis=2) if len(outputs) > 1 else outputs[0]
  return out.reshape(b, h, sq, hd).transpose(0, 2, 1, 3)


def _chunked_attention(q, k, v, mask, chunk: int, implementation: str) -> jax.Array:
  """Query blocks sliced out of q and the mask inside the loop, so neither is copied (only a
  ragged last block pads them)."""
  b, sq, h, hd = q.shape
  num_blocks = -(-sq // chunk)
  pad = num_blocks * chunk - sq
  if mask is None:
    mask = jnp.ones((1, 1, 1, k.shape[1]), bool)
  mask_has_rows = mask.shape[2] != 1
  if pad:
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    if mask_has_rows:
      mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)), constant_values=True)

  @jax.checkpoint
  def block(index):
    start = index * chunk
    q_block = jax.lax.dynamic_slice_in_dim(q, start, chunk, axis=1)
    mask_block = (jax.lax.dynamic_slice_in_dim(mask, start, chunk, axis=2) if mask_has_rows
                  else mask)
    return dot_product_attention(q_block, k, v, mask_block, implementation=implementation)

  out = jax.lax.map(block, jnp.arange(num_blocks))  # [num_blocks, B, chunk, H, hd]
  return out.swapaxes(0, 1).reshape(b, num_blocks * chunk, h, hd)[:, :sq]


class SelfAttention(nn.Module):
  """Fused-QKV self-attention with per-head q/k RMSNorm and 3D RoPE.

  `project` and `attend` are separate so that the KV-cached sampler can store the keys and
  values of finished frames and attend to them later.
  """
  width: int
  num_heads: int
  rope_split: Sequence[int]
  rope_base: float = 10000.0
  dtype: jnp.dtype = jnp.float32
  chunk: int = 0  # query block size of `dot_product_attention` (0: all at once)
  implementation: str = "auto"  # see ATTENTION_IMPLEMENTATIONS

  def setup(self):
    head_dim = sum(self.rope_split)
    self.wqkv = dense((self.num_heads, 3, head_dim), ("embed", "heads", "qkv", "kv"),
                      name="wqkv", use_bias=False, dtype=self.dtype)
    self.q_norm = RMSNorm(name="q_norm")
    self.k_norm = RMSNorm(name="k_norm")
    self.wo = dense(self.width, ("heads", "kv", "embed"), in_axes=(-2, -1), name="wo",
                    use_bias=False, dtype=self.dtype)

  def project(self, x: jax.Array, positions: jax.Array):
    """x [B, S, D] -> normalised, rotated q and k, and v; each [B, S, H, hd]."""
    qkv = self.wqkv(x)
    q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    q = rope.apply_rope_3d(self.q_norm(q), positions, self.rope_split, self.rope_base)
    k = rope.apply_rope_3d(self.k_norm(k), positions, self.rope_split, self.rope_base)
    return q, k, v

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    return self.wo(dot_product_attention(q, k, v, mask, self.chunk, self.implementation))

  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    q, k, v = self.project(x, positions)
    return self.attend(q, k, v, mask)


class CrossAttention(nn.Module):
  """Cross-attention from the tokens to the context (no RoPE, no norm on the query input)."""
  width: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  implementation: str = "auto"  # see ATTENTION_IMPLEMENTATIONS

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, context_mask: jax.Array) -> jax.Array:
    """x [B, S, D], context [B, L, D], context_mask [B, L] (True = a real token)."""
    head_dim = self.width // self.num_heads
    q = dense((self.num_heads, head_dim), ("embed", "heads", "kv"), name="wq", use_bias=False,
              dtype=self.dtype)(x)
    kv = dense((self.num_heads, 2, head_dim), ("embed", "heads", "qkv", "kv"), name="wkv",
               use_bias=False, dtype=self.dtype)(context)
    q = RMSNorm(name="q_norm")(q)
    k = RMSNorm(name="k_norm")(kv[..., 0, :])
    out = dot_product_attention(q, k, kv[..., 1, :], context_mask[:, None, None, :],
                                implementation=self.implementation)
    return dense(self.width, ("heads", "kv", "embed"), in_axes=(-2, -1), name="wo",
                 use_bias=False, dtype=self.dtype)(out)
