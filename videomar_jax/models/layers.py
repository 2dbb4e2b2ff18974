"""Small building blocks shared by the transformer: dense layers and norms with logical axes.

Every parameter is created through `nn.with_logical_partitioning`, so a sharding rules table
(logical axis name -> mesh axis) can place it later without touching the model code.
Logical axis names used by the transformer:
  embed (width D), mlp (FFN hidden), heads, kv (head dim), qkv (the fused q/k/v or k/v
  index), token_channels (input token width), context_embed (text feature width),
  context_length, classes, modulation (the 6 rows of scale_shift_table), layers (scan axis).
"""

import contextlib
import contextvars
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Logical axes of a sampler's KV cache ({"k", "v"}: [layers, batch, cache slots, heads,
# head_dim]): batch split like activations, heads like the attention weights that made them.
KV_CACHE_AXES = ("layers", "activation_batch", "cache_sequence", "heads", "kv")

# (logical name, mesh axes) rules for activation constraints, set by `activation_rules`.
# Kept apart from flax's global logical-axis rules on purpose: with those active, flax also
# constrains parameters while it traces their (flattened) initialisers, which fails for
# multi-dimensional DenseGeneral kernels.
_ACTIVATION_RULES = contextvars.ContextVar("activation_rules", default=None)


@contextlib.contextmanager
def activation_rules(rules):
  """Within this context (and a `jax.set_mesh`), `constrain` places activations."""
  token = _ACTIVATION_RULES.set(tuple(rules))
  try:
    yield
  finally:
    _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str]) -> jax.Array:
  """`with_sharding_constraint` by logical axis names; a no-op without rules or a mesh."""
  rules = _ACTIVATION_RULES.get()
  if rules is None or jax.sharding.get_abstract_mesh().empty:
    return x
  table = dict(rules)
  missing = [name for name in logical_axes if name not in table]
  if missing:
    raise ValueError(f"no sharding rule for activation axes {missing}.")
  return jax.lax.with_sharding_constraint(
      x, jax.sharding.PartitionSpec(*(table[name] for name in logical_axes)))


def dense(features: int | Sequence[int], axes: Sequence[str], name: str, *,
          in_axes: int | Sequence[int] = -1, use_bias: bool = True, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, kernel_init=None) -> nn.DenseGeneral:
  """A `DenseGeneral` whose kernel (and bias) carry the logical axis names `axes`.

  `axes` names the kernel's dimensions: the contracted input dims first, then the outputs.
  The default init is Xavier-uniform with fans over the contracted and the output dims
  (MAR's `_init_weights`; `DenseGeneral` initialises the kernel flattened to 2D).
  """
  features = (features,) if isinstance(features, int) else tuple(features)
  in_axes_t = (in_axes,) if isinstance(in_axes, int) else tuple(in_axes)
  n_in = len(in_axes_t)
  kernel_init = kernel_init or nn.initializers.xavier_uniform()
  return nn.DenseGeneral(
      features=features, axis=in_axes, use_bias=use_bias, dtype=dtype,
      param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init, tuple(axes)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                             tuple(axes[n_in:])))


class LayerNorm(nn.Module):
  """LayerNorm computed in float32 (PyTorch `nn.LayerNorm` semantics), optional affine."""
  eps: float = 1e-5
  use_affine: bool = True
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    if self.use_affine:
      dim = x.shape[-1]
      scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                               (self.axis_name,)), (dim,))
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                             (self.axis_name,)), (dim,))
      y = y * scale + bias
    return y


class RMSNorm(nn.Module):
  """RMSNorm with a learned weight (the per-head q/k norm of Step-Video), in float32."""
  eps: float = 1e-6
  axis_name: str = "kv"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    weight = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                              (self.axis_name,)),
                        (x.shape[-1],))
    return (y * weight).astype(x.dtype)


@jax.custom_jvp
def gelu_tanh(x: jax.Array) -> jax.Array:
  """GELU, tanh approximation (`jax.nn.gelu(x, approximate=True)`, the same forward values),
  with a hand-written derivative.

  Autodiff of the formula keeps five activations of the FFN's hidden size (x, x^2, x^3,
  tanh, ...) for the backward pass and reads them all again there: on CPU that one
  memory-bound fusion took ~30% of a `small` training step. This derivative keeps one."""
  return jax.nn.gelu(x, approximate=True)


@gelu_tanh.defjvp
def _gelu_tanh_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  c, a = jnp.sqrt(2.0 / jnp.pi).astype(x.dtype), jnp.asarray(0.044715, x.dtype)
  t = jnp.tanh(c * (x + a * x ** 3))
  y = 0.5 * x * (1 + t)
  slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * a * x * x)
  return y, slope * dx
