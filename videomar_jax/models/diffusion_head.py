"""MAR's diffusion head `SimpleMLPAdaLN` (github.com/LTH14/mar, models/diffloss.py) in Flax.

A small residual MLP that denoises one token at a time: input `x_t` `[M, C]`, the original
diffusion timestep `t` `[M]` and the transformer's per-token conditioning `c` `[M, D]`;
output `[M, 2C]` (predicted noise and LEARNED_RANGE variance values, see
`videomar_jax.diffusion.gaussian`). The timestep and condition embeddings are summed into
`y`, which modulates every residual block and the final layer through adaLN (DiT style).

Parameter names follow the PyTorch module tree so that a MAR state_dict maps key by key:
a `.` followed by an index joins it with an underscore and Linear `weight` becomes the
(transposed) Dense `kernel`, LayerNorm `weight` becomes `scale`. For example
`time_embed.mlp.0.weight` -> `time_embed/mlp_0/kernel` (transposed),
`res_blocks.1.adaLN_modulation.1.bias` -> `res_blocks_1/adaLN_modulation_1/bias`,
`res_blocks.0.in_ln.weight` -> `res_blocks_0/in_ln/scale`.

Every parameter carries logical axis names (for `nn.logical_to_mesh_sharding`):
  'token_channels'  the token channels C (input of `input_proj`, output 2C of the final linear);
  'head_freq'       the 256 sinusoidal timestep frequencies;
  'embed'           D, the width of the transformer conditioning;
  'head_width'      W on the input side of W x W / W x 3W / W x 2W matrices, and the W outputs
                    of the non-square embeddings that feed the residual stream (and the
                    residual-stream LayerNorm parameters);
  'head_mlp'        W on the output side of square matrices and the 3W / 2W modulations.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from videomar_jax.models.layers import dense

Array = jax.Array
Dtype = Any
Initializer = nn.initializers.Initializer

_ZEROS = nn.initializers.zeros_init()
_TIME_EMBED_INIT = nn.initializers.normal(stddev=0.02)


def _layer_norm(name: str, axis: str | None, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
  """LayerNorm (eps 1e-6, statistics in float32); affine with logical names iff `axis`."""
  affine = axis is not None
  return nn.LayerNorm(
      epsilon=1e-6,
      use_scale=affine,
      use_bias=affine,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis,)),
      bias_init=nn.with_logical_partitioning(_ZEROS, (axis,)),
      name=name,
  )


def _modulate(x: Array, shift: Array, scale: Array) -> Array:
  """adaLN modulation `x * (1 + scale) + shift` (MAR `modulate`)."""
  return x * (1 + scale) + shift


def timestep_embedding(t: Array, dim: int = 256, max_period: float = 10000.0) -> Array:
  """Sinusoidal timestep features (MAR `TimestepEmbedder.timestep_embedding`, GLIDE style).

  Args:
    t: `[N]` timesteps (may be fractional).
    dim: output width; for odd `dim` a zero column is appended.
    max_period: controls the lowest frequency.

  Returns:
    float32 `[N, dim]`: `[cos(t * f), sin(t * f)]` with `f_k = max_period^(-k / (dim // 2))`.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t).astype(jnp.float32)[:, None] * freqs[None]
  embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    embedding = jnp.concatenate([embedding, jnp.zeros_like(embedding[:, :1])], axis=-1)
  return embedding


class TimestepEmbedder(nn.Module):
  """MAR `TimestepEmbedder`: sinusoidal features -> Dense(256, W) -> SiLU -> Dense(W, W).

  Both kernels are initialised normal(0, 0.02) as in MAR.
  """

  hidden_size: int
  frequency_embedding_size: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: Array) -> Array:
    kw = dict(kernel_init=_TIME_EMBED_INIT, dtype=self.dtype, param_dtype=self.param_dtype)
    h = timestep_embedding(t, self.frequency_embedding_size)
    h = dense(self.hidden_size, ("head_freq", "head_width"), "mlp_0", **kw)(h)
    h = nn.silu(h)
    return dense(self.hidden_size, ("head_width", "head_mlp"), "mlp_2", **kw)(h)


class ResBlock(nn.Module):
  """MAR `ResBlock`: `x + gate * mlp(modulate(in_ln(x), shift, scale))`, (shift, scale, gate)
  from `adaLN_modulation(y)` = SiLU -> Dense(W, 3W) (zero-initialised)."""

  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    w = self.channels
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    modulation = dense(
        3 * w, ("head_width", "head_mlp"), "adaLN_modulation_1", kernel_init=_ZEROS, **kw
    )(nn.silu(y))
    shift, scale, gate = jnp.split(modulation, 3, axis=-1)
    h = _layer_norm("in_ln", "head_width", **kw)(x)
    h = _modulate(h, shift, scale)
    h = dense(w, ("head_width", "head_mlp"), "mlp_0", **kw)(h)
    h = nn.silu(h)
    h = dense(w, ("head_width", "head_mlp"), "mlp_2", **kw)(h)
    return x + gate * h


class FinalLayer(nn.Module):
  """MAR `FinalLayer`: `linear(modulate(norm_final(x), shift, scale))`, with a parameter-free
  LayerNorm, (shift, scale) from SiLU -> Dense(W, 2W), and everything zero-initialised."""

  model_channels: int
  out_channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    w = self.model_channels
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    modulation = dense(
        2 * w, ("head_width", "head_mlp"), "adaLN_modulation_1", kernel_init=_ZEROS, **kw
    )(nn.silu(y))
    shift, scale = jnp.split(modulation, 2, axis=-1)
    h = _layer_norm("norm_final", None, **kw)(x)
    h = _modulate(h, shift, scale)
    return dense(
        self.out_channels, ("head_width", "token_channels"), "linear", kernel_init=_ZEROS, **kw
    )(h)


class SimpleMLPAdaLN(nn.Module):
  """MAR's diffusion-loss MLP (`SimpleMLPAdaLN`).

  Attributes:
    in_channels: C, token channels of `x`.
    model_channels: W, the MLP width.
    out_channels: output channels (2C for learned variance).
    z_channels: D, width of the conditioning `c`.
    num_res_blocks: number of residual blocks (MAR's diffusion head depth).
    dtype: computation dtype (e.g. bfloat16); LayerNorm statistics stay float32 and the
      output is returned as float32.
    param_dtype: parameter dtype.

  Initialisation as MAR: xavier-uniform kernels with zero biases, normal(0.02) kernels in
  `time_embed`, and zero adaLN modulations and final linear, so the output is exactly zero
  at initialisation.
  """

  in_channels: int
  model_channels: int
  out_channels: int
  z_channels: int
  num_res_blocks: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, t: Array, c: Array) -> Array:
    """Denoiser output `[M, out_channels]` (float32) for `x` `[M, C]`, `t` `[M]`, `c` `[M, D]`."""
    w = self.model_channels
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(w, ("token_channels", "head_width"), "input_proj", **kw)(x)
    t_emb = TimestepEmbedder(w, name="time_embed", **kw)(t)
    c_emb = dense(w, ("embed", "head_width"), "cond_embed", **kw)(c)
    y = t_emb + c_emb
    for j in range(self.num_res_blocks):
      h = ResBlock(w, name=f"res_blocks_{j}", **kw)(h, y)
    out = FinalLayer(w, self.out_channels, name="final_layer", **kw)(h, y)
    return out.astype(jnp.float32)
