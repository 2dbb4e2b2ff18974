"""The VideoMAR transformer: tokens -> per-token conditions z.

`z_proj` embeds the (patchified latent) tokens, masked positions take one learned
`mask_token`, a stack of Step-Video blocks with frame-causal self-attention (3D RoPE, no
learned position table) and optional cross-attention to a context runs over the sequence,
and a final LayerNorm gives z. Layers can be stacked with `nn.scan` (one compiled block,
parameters with a leading `layers` axis) and rematerialised; `scanned_to_layers` /
`layers_to_scanned` convert between the two parameter layouts.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from videomar_jax.errors import ConfigError
from videomar_jax.models import rope
from videomar_jax.models.attention import (ATTENTION_IMPLEMENTATIONS, CrossAttention,
                                           FrameBlockMask, SelfAttention)
from videomar_jax.models.layers import LayerNorm, constrain, dense, gelu_tanh

# Logical axes of the residual stream [B, S, D]; `config.sharding.rules` maps them to the mesh
# (batch over data+fsdp by default). A no-op unless rules are active (see parallel/).
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
CONTEXT_KINDS = ("none", "class", "text")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static hyper-parameters of the transformer (built from `config.model`)."""
  token_dim: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: int = 4
  rope_split: tuple[int, int, int] = ()
  rope_base: float = 10000.0
  dtype: Any = jnp.float32
  scan_layers: bool = True
  remat_policy: str = "none"
  attention_chunk: int = 0
  attention_impl: str = "auto"  # see attention.ATTENTION_IMPLEMENTATIONS
  context_kind: str = "none"
  num_classes: int = 0
  context_dim: int = 0
  context_length: int = 0
  # Learned absolute (row, column) embedding, [pos_embed_size, pos_embed_size, width], added
  # to every token after the mask token (as MAR adds its learned position table); 0 = none,
  # the paper's RoPE-only model. See docs/experiments.md for why small models want it.
  pos_embed_size: int = 0

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ConfigError(f"model.width {self.width} is not divisible by model.num_heads "
                        f"{self.num_heads}.")
    object.__setattr__(self, "rope_split",
                       rope.resolve_split(self.width // self.num_heads, self.rope_split))
    if self.remat_policy not in REMAT_POLICIES:
      raise ConfigError(f"model.remat_policy {self.remat_policy!r} not in "
                        f"{sorted(REMAT_POLICIES)}.")
    if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
      raise ConfigError(f"model.attention_impl {self.attention_impl!r} not in "
                        f"{ATTENTION_IMPLEMENTATIONS}.")
    if self.context_kind not in CONTEXT_KINDS:
      raise ConfigError(f"model.context.kind {self.context_kind!r} not in {CONTEXT_KINDS}.")
    if self.context_kind == "class" and self.num_classes <= 0:
      raise ConfigError("context kind 'class' needs model.context.num_classes > 0.")
    if self.context_kind == "text" and (self.context_dim <= 0 or self.context_length <= 0):
      raise ConfigError("context kind 'text' needs model.context.dim and .length > 0.")

  @property
  def uses_context(self) -> bool:
    return self.context_kind != "none"


class Block(nn.Module):
  """Step-Video transformer block without a diffusion timestep.

  The six modulation vectors come from a learned table (rows: shift_msa, scale_msa,
  gate_msa, shift_mlp, scale_mlp, gate_mlp). The residual stream stays float32; matmuls run
  in `config.dtype`. Returns `(x, kv)` (the signature `nn.scan` wants).

  With `kv_cache` ({"k", "v"}: [B, S_cache, H, hd]) the queries also attend to the cached
  keys and values (placed before this call's own tokens on `attn_mask`'s key axis). With
  `return_kv` the block returns this call's keys and values as `kv` (else None) so that a
  sampler can append them to its cache.
  """
  config: TransformerConfig
  return_kv: bool = False

  @nn.compact
  def __call__(self, x, context, context_mask, positions, attn_mask, kv_cache=None):
    cfg = self.config
    table = self.param(
        "scale_shift_table",
        nn.with_logical_partitioning(nn.initializers.normal(cfg.width ** -0.5),
                                     ("modulation", "embed")), (6, cfg.width))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = table
    h = LayerNorm(eps=1e-5, name="norm1")(x) * (1 + scale_msa) + shift_msa
    attn = SelfAttention(cfg.width, cfg.num_heads, cfg.rope_split, cfg.rope_base, cfg.dtype,
                         cfg.attention_chunk, cfg.attention_impl, name="attn1")
    q, k, v = attn.project(h.astype(cfg.dtype), positions)
    new_kv = {"k": k, "v": v} if self.return_kv else None
    if kv_cache is not None:
      k = jnp.concatenate([kv_cache["k"].astype(k.dtype), k], axis=1)
      v = jnp.concatenate([kv_cache["v"].astype(v.dtype), v], axis=1)
    x = x + gate_msa * attn.attend(q, k, v, attn_mask)
    if cfg.uses_context:
      x = x + CrossAttention(cfg.width, cfg.num_heads, cfg.dtype, cfg.attention_impl,
                             name="attn2")(
          x.astype(cfg.dtype), context, context_mask)
    h = LayerNorm(eps=1e-5, name="norm2")(x) * (1 + scale_mlp) + shift_mlp
    h = dense(cfg.width * cfg.mlp_ratio, ("embed", "mlp"), name="ff_proj", use_bias=False,
              dtype=cfg.dtype)(h.astype(cfg.dtype))
    h = gelu_tanh(h)
    h = dense(cfg.width, ("mlp", "embed"), name="ff_out", use_bias=False, dtype=cfg.dtype)(h)
    x = (x + gate_mlp * h).astype(jnp.float32)
    return constrain(x, ACTIVATION_AXES), new_kv


class VideoMARTransformer(nn.Module):
  """Masked tokens + context -> z, one vector per token for the diffusion head.

  `return_kv=True` makes `__call__` return `(z, kv)` with every layer's keys and values of
  the input tokens, {"k", "v"}: [depth, B, S, H, hd] (the sampler's cache entries); the
  parameters are the same either way.
  """
  config: TransformerConfig
  return_kv: bool = False

  def embed_context(self, batch_size, context, context_mask, drop_context):
    """Returns (context [B, L, D], mask [B, L]) or (None, None) when the model has none.

    `context` is text features [B, L, Dc] (with `context_mask` [B, L], True = real token) or
    class labels [B]. `drop_context` [B] swaps in the learned null context `fake_latent`
    (classifier-free guidance); a missing context means the null context for everyone.
    """
    cfg = self.config
    if not cfg.uses_context:
      if context is not None:
        raise ValueError("a context was given but model.context.kind is 'none'.")
      return None, None
    length = cfg.context_length if cfg.context_kind == "text" else 1
    null = self.param("fake_latent", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, "context_length", "embed")),
        (1, length, cfg.width))
    null = jnp.broadcast_to(null, (batch_size, length, cfg.width))
    null_mask = jnp.ones((batch_size, length), bool)
    if cfg.context_kind == "class":
      table = self.param("class_emb", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), ("classes", "embed")), (cfg.num_classes, cfg.width))
      if context is not None:
        if context.shape != (batch_size,):
          raise ValueError(f"class labels must have shape [{batch_size}], got {context.shape}.")
        context, context_mask = table[context][:, None, :], null_mask
    else:
      proj = dense(cfg.width, ("context_embed", "embed"), name="context_embed")
      if context is not None:
        if context.shape[0] != batch_size or context.shape[2] != cfg.context_dim:
          raise ValueError(f"text context must be [{batch_size}, L, {cfg.context_dim}], got "
                           f"{context.shape}.")
        if context_mask is None:
          context_mask = jnp.ones(context.shape[:2], bool)
        context = proj(context.astype(cfg.dtype)).astype(jnp.float32)
      else:
        proj(jnp.zeros((1, 1, cfg.context_dim), cfg.dtype))  # creates the parameters
    if context is None:
      return null, null_mask
    if context.shape[1] != length:  # text shorter/longer than the null context: pad to it
      raise ValueError(f"text context length {context.shape[1]} != model.context.length "
                       f"{length}; pad it and pass context_mask.")
    if drop_context is not None:
      context = jnp.where(drop_context[:, None, None], null, context)
      context_mask = jnp.where(drop_context[:, None], True, context_mask)
    return context.astype(cfg.dtype), context_mask.astype(bool)

  def learned_positions(self, positions, batch_size: int, length: int) -> jax.Array:
    """The learned (row, column) embedding of every token, [B, S, width] float32. Rows and
    columns beyond the table (frames larger than `pos_embed_size` tokens a side) take its
    last entry; `validate` in the trainer refuses such grids for training."""
    cfg = self.config
    table = self.param("pos_embed_learned", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, "embed")),
        (cfg.pos_embed_size, cfg.pos_embed_size, cfg.width))
    positions = jnp.asarray(positions)
    rows = jnp.clip(positions[..., 1], 0, cfg.pos_embed_size - 1)
    cols = jnp.clip(positions[..., 2], 0, cfg.pos_embed_size - 1)
    emb = table[rows, cols].astype(jnp.float32)  # [S, D] or [B, S, D]
    return jnp.broadcast_to(emb, (batch_size, length, cfg.width))

  @nn.compact
  def __call__(self, tokens, is_masked, positions, attn_mask, context=None, context_mask=None,
               drop_context=None, kv_cache=None):
    """Runs the transformer.

    Args:
      tokens: [B, S, token_dim] token values; the values at masked positions are never read.
      is_masked: [B, S] bool, True where the token is replaced by `mask_token`.
      positions: [S, 3] or [B, S, 3] integer (frame, row, column) RoPE positions.
      attn_mask: boolean [Sq, Sk] or [B, Sq, Sk], see `sequence.attention_mask`, or a
        `FrameBlockMask` (see `sequence.frame_block_mask`).
      context, context_mask, drop_context: see `embed_context`.
      kv_cache: optional {"k", "v"}: [depth, B, S_cache, H, hd] keys and values of earlier
        tokens; `attn_mask`'s key axis is then [cache slots, then these tokens].
    Returns:
      z: [B, S, width] float32 (and the new keys and values if `return_kv`).
    """
    cfg = self.config
    b, s, d = tokens.shape
    if d != cfg.token_dim:
      raise ValueError(f"tokens have {d} channels, the model expects {cfg.token_dim}.")
    mask_token = self.param("mask_token", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, "embed")), (1, 1, cfg.width))
    # Zero the masked values before the projection too, so nothing of them (not even a NaN)
    # can reach the network.
    tokens = jnp.where(is_masked[..., None], 0.0, tokens)
    x = dense(cfg.width, ("token_channels", "embed"), name="z_proj", dtype=cfg.dtype)(
        tokens.astype(cfg.dtype)).astype(jnp.float32)
    x = jnp.where(is_masked[..., None], mask_token.astype(jnp.float32), x)
    if cfg.pos_embed_size:
      x = x + self.learned_positions(positions, b, s)
    x = constrain(x, ACTIVATION_AXES)
    # `sow` is free unless "intermediates" is mutable: `interop.verify` reads these.
    self.sow("intermediates", "input_proj", x)

    ctx, ctx_mask = self.embed_context(b, context, context_mask, drop_context)
    if not isinstance(attn_mask, FrameBlockMask):  # -> broadcastable to [B, H, Sq, Sk]
      attn_mask = attn_mask[:, None] if attn_mask.ndim == 3 else attn_mask[None, None]
    if cfg.scan_layers:
      block = Block
      if cfg.remat_policy != "none":
        block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
      x, kv = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast,) * 4 + (0,), length=cfg.depth,
                      metadata_params={nn.PARTITION_NAME: "layers"})(
                          cfg, self.return_kv, name="blocks")(
                              x, ctx, ctx_mask, positions, attn_mask, kv_cache)
    else:
      block = Block
      if cfg.remat_policy != "none":
        block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat_policy])
      kvs = []
      for i in range(cfg.depth):
        layer_cache = None if kv_cache is None else jax.tree_util.tree_map(
            lambda a, i=i: a[i], kv_cache)
        x, layer_kv = block(cfg, self.return_kv, name=f"blocks_{i}")(
            x, ctx, ctx_mask, positions, attn_mask, layer_cache)
        kvs.append(layer_kv)
        self.sow("intermediates", f"block_{i}", x)
      kv = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *kvs) if self.return_kv else None
    z = LayerNorm(eps=1e-6, name="decoder_norm")(x)
    return (z, kv) if self.return_kv else z


def scanned_to_layers(params: dict, depth: int) -> dict:
  """Transformer params with a stacked `blocks` entry -> per-layer `blocks_{i}` entries."""
  params = dict(params)
  stacked = params.pop("blocks")
  for i in range(depth):
    params[f"blocks_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
  return params


def layers_to_scanned(params: dict, depth: int) -> dict:
  """Inverse of `scanned_to_layers`."""
  params = dict(params)
  layers = [params.pop(f"blocks_{i}") for i in range(depth)]
  params["blocks"] = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *layers)
  return params
