"""VideoMAR = transformer (tokens -> z) + per-token diffusion head (z -> token distribution).

`VideoMAR` is a plain Python object holding the two Flax modules, their static configs and
the diffusion schedules. Parameters live outside it as one pytree
`{"transformer": ..., "diffusion_head": ...}` (unboxed arrays); `logical_axes()` gives the
matching tree of logical axis names for sharding.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videomar_jax.diffusion import gaussian
from videomar_jax.errors import ConfigError
from videomar_jax.models.diffusion_head import SimpleMLPAdaLN
from videomar_jax.models.transformer import TransformerConfig, VideoMARTransformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def parse_dtype(name: str):
  if name not in DTYPES:
    raise ConfigError(f"model.dtype {name!r} not in {sorted(DTYPES)}.")
  return DTYPES[name]


def transformer_config(config: ml_collections.ConfigDict, token_dim: int) -> TransformerConfig:
  m = config.model
  return TransformerConfig(
      token_dim=token_dim, width=m.width, depth=m.depth, num_heads=m.num_heads,
      mlp_ratio=m.mlp_ratio, rope_split=tuple(m.rope_split), rope_base=m.rope_base,
      dtype=parse_dtype(m.dtype), scan_layers=m.scan_layers, remat_policy=m.remat_policy,
      attention_chunk=m.attention_chunk, attention_impl=m.get("attention_impl", "auto"),
      context_kind=m.context.kind, num_classes=m.context.num_classes,
      context_dim=m.context.dim, context_length=m.context.length,
      pos_embed_size=m.get("pos_embed_size", 0))


class VideoMAR:
  """The model: modules, schedules and pure functions of an explicit parameter tree."""

  def __init__(self, config: ml_collections.ConfigDict, token_dim: int):
    """`token_dim`: channels of one token (the tokenizer's latent channels x
    `model.patch_size` squared). The model knows nothing of tokenizers; whoever builds it
    does (`train.setup.make_model`, or from a built tokenizer in `sampling`)."""
    if token_dim <= 0:
      raise ConfigError(f"token_dim must be > 0, got {token_dim}.")
    self.config = config
    self.transformer_config = transformer_config(config, token_dim)
    self.token_dim = self.transformer_config.token_dim
    self.transformer = VideoMARTransformer(self.transformer_config)
    self.kv_transformer = VideoMARTransformer(self.transformer_config, return_kv=True)
    self.head = SimpleMLPAdaLN(
        in_channels=self.token_dim, model_channels=config.head.width,
        out_channels=2 * self.token_dim, z_channels=config.model.width,
        num_res_blocks=config.head.depth, dtype=self.transformer_config.dtype)
    self.train_schedule = gaussian.make_schedule(config.head.num_timesteps,
                                                 config.head.noise_schedule)
    self.sample_schedule = gaussian.make_schedule(config.head.num_timesteps,
                                                  config.head.noise_schedule,
                                                  respacing=config.head.num_sampling_steps)

  # ---- Parameters.
  def _dummy_inputs(self):
    tc = self.transformer_config
    tokens = jnp.zeros((1, 1, self.token_dim), jnp.float32)
    context = None
    if tc.context_kind == "class":
      context = jnp.zeros((1,), jnp.int32)
    elif tc.context_kind == "text":
      context = jnp.zeros((1, tc.context_length, tc.context_dim), jnp.float32)
    return (tokens, jnp.zeros((1, 1), bool), np.zeros((1, 3), np.int32),
            jnp.ones((1, 1), bool), context)

  def _init_boxed(self, rng):
    rng_t, rng_h = jax.random.split(rng)
    t_vars = self.transformer.init(rng_t, *self._dummy_inputs())
    d = self.token_dim
    h_vars = self.head.init(rng_h, jnp.zeros((1, d)), jnp.zeros((1,), jnp.int32),
                            jnp.zeros((1, self.config.model.width)))
    return {"transformer": t_vars["params"], "diffusion_head": h_vars["params"]}

  def init(self, rng: jax.Array) -> dict:
    """Fresh float32 parameters {"transformer": ..., "diffusion_head": ...}."""
    return nn.meta.unbox(self._init_boxed(rng))

  def logical_axes(self) -> dict:
    """Tree of `PartitionSpec`s of logical axis names, matching `init`'s output."""
    return nn.get_partition_spec(jax.eval_shape(self._init_boxed, jax.random.key(0)))

  def abstract_params(self) -> dict:
    """Shapes and dtypes of the parameters, without allocating them."""
    return nn.meta.unbox(jax.eval_shape(self._init_boxed, jax.random.key(0)))

  # ---- Forward functions.
  def encode(self, params, tokens, is_masked, positions, attn_mask, context=None,
             context_mask=None, drop_context=None, kv_cache=None) -> jax.Array:
    """Transformer: [B, S, token_dim] tokens -> z [B, S, width]; see VideoMARTransformer."""
    return self.transformer.apply({"params": params["transformer"]}, tokens, is_masked,
                                  positions, attn_mask, context, context_mask, drop_context,
                                  kv_cache)

  def encode_with_kv(self, params, tokens, is_masked, positions, attn_mask, context=None,
                     context_mask=None, drop_context=None, kv_cache=None):
    """`encode` that also returns every layer's keys and values of `tokens` (for a cache)."""
    return self.kv_transformer.apply({"params": params["transformer"]}, tokens, is_masked,
                                     positions, attn_mask, context, context_mask,
                                     drop_context, kv_cache)

  def head_fn(self, params, z: jax.Array):
    """The diffusion network with its condition closed over: (x [M, C], t [M]) -> [M, 2C]."""
    def fn(x, t):
      return self.head.apply({"params": params["diffusion_head"]}, x, t, z)
    return fn

  def diffusion_losses(self, params, z, target, t, noise) -> jax.Array:
    """Per-token diffusion loss (MSE + VB) for conditions z [M, D], targets [M, C]."""
    return gaussian.training_losses(self.train_schedule, self.head_fn(params, z), target, t,
                                    noise)["loss"]

