"""Tests for videomar_jax.models.diffusion_head (MAR's SimpleMLPAdaLN in Flax)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from videomar_jax.models.diffusion_head import SimpleMLPAdaLN, timestep_embedding

C, W, D, DEPTH, M = 4, 32, 24, 2, 6


def _head(dtype=jnp.float32):
  return SimpleMLPAdaLN(
      in_channels=C, model_channels=W, out_channels=2 * C, z_channels=D, num_res_blocks=DEPTH,
      dtype=dtype,
  )


def _inputs(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k1, (M, C))
  t = jax.random.randint(k2, (M,), 0, 1000)
  c = jax.random.normal(k3, (M, D))
  return x, t, c


@pytest.fixture(scope="module")
def variables():
  return _head().init(jax.random.key(42), *_inputs())


def _flat(params):
  flat = traverse_util.flatten_dict(nn.unbox(params))
  return {"/".join(k): np.asarray(v) for k, v in flat.items()}


def _perturbed(variables, scale=0.1):
  """All parameters moved away from MAR's (partly zero) initialisation."""
  leaves, treedef = jax.tree_util.tree_flatten(nn.unbox(variables))
  keys = jax.random.split(jax.random.key(7), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  )


def test_timestep_embedding_matches_numpy():
  t = np.array([0, 1, 17, 500, 999], np.float32)
  for dim in (256, 7):
    half = dim // 2
    freqs = np.exp(-math.log(10000) * np.arange(half) / half)
    args = t[:, None].astype(np.float64) * freqs[None]
    ref = np.concatenate([np.cos(args), np.sin(args)], -1)
    if dim % 2:
      ref = np.concatenate([ref, np.zeros((len(t), 1))], -1)
    got = timestep_embedding(jnp.asarray(t), dim)
    assert got.shape == (len(t), dim) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, atol=2e-4)
  np.testing.assert_array_equal(timestep_embedding(jnp.array([3]), 7)[:, -1], 0.0)


def test_output_shape_and_zero_init(variables):
  x, t, c = _inputs(1)
  out = _head().apply(variables, x, t, c)
  assert out.shape == (M, 2 * C) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)


def _torch_state_dict_keys():
  """The parameter names of MAR's PyTorch SimpleMLPAdaLN for this configuration."""
  keys = ["time_embed.mlp.0", "time_embed.mlp.2", "cond_embed", "input_proj"]
  for j in range(DEPTH):
    keys += [f"res_blocks.{j}.mlp.0", f"res_blocks.{j}.mlp.2", f"res_blocks.{j}.adaLN_modulation.1"]
  keys += ["final_layer.linear", "final_layer.adaLN_modulation.1"]
  names = [f"{k}.{p}" for k in keys for p in ("weight", "bias")]
  names += [f"res_blocks.{j}.in_ln.{p}" for j in range(DEPTH) for p in ("weight", "bias")]
  return names


def _flax_path(torch_key):
  """state_dict key -> Flax path: indices join their parent with "_", weights become kernels."""
  parts = torch_key.split(".")
  path = []
  for part in parts[:-1]:
    if part.isdigit():
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  leaf = parts[-1]
  if leaf == "weight":
    leaf = "scale" if path[-1].endswith("ln") else "kernel"
  return "/".join(["params"] + path + [leaf])


def test_parameter_names_map_to_torch_state_dict(variables):
  flat = _flat(variables)
  assert set(flat) == {_flax_path(k) for k in _torch_state_dict_keys()}
  assert flat["params/time_embed/mlp_0/kernel"].shape == (256, W)
  assert flat["params/res_blocks_0/adaLN_modulation_1/kernel"].shape == (W, 3 * W)
  assert flat["params/final_layer/adaLN_modulation_1/kernel"].shape == (W, 2 * W)
  assert flat["params/final_layer/linear/kernel"].shape == (W, 2 * C)


def test_initialisation(variables):
  flat = _flat(variables)
  for name, value in flat.items():
    if name.endswith("bias"):
      np.testing.assert_array_equal(value, 0.0, err_msg=name)
    elif name.endswith("scale"):
      np.testing.assert_array_equal(value, 1.0, err_msg=name)
    elif "adaLN_modulation" in name or "final_layer/linear" in name:
      np.testing.assert_array_equal(value, 0.0, err_msg=name)
    elif "time_embed" in name:
      assert abs(value.std() - 0.02) < 0.004, name
    else:  # xavier uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))
      bound = math.sqrt(6.0 / sum(value.shape))
      assert np.abs(value).max() <= bound, name
      assert np.abs(value).max() > 0.8 * bound, name
      assert abs(value.std() - bound / math.sqrt(3)) < 0.2 * bound / math.sqrt(3), name


def test_every_parameter_has_logical_axes():
  abstract = jax.eval_shape(_head().init, jax.random.key(0), *_inputs())
  boxed = jax.tree_util.tree_leaves(abstract, is_leaf=lambda v: isinstance(v, nn.Partitioned))
  assert boxed and all(isinstance(v, nn.Partitioned) for v in boxed)
  specs = traverse_util.flatten_dict(nn.get_partition_spec(abstract))
  shapes = traverse_util.flatten_dict(nn.unbox(abstract))
  allowed = {"token_channels", "head_freq", "embed", "head_width", "head_mlp"}
  for path, spec in specs.items():
    assert len(spec) == len(shapes[path].shape), path
    assert set(spec) <= allowed, (path, spec)
  assert tuple(specs[("params", "input_proj", "kernel")]) == ("token_channels", "head_width")
  assert tuple(specs[("params", "cond_embed", "kernel")]) == ("embed", "head_width")
  assert tuple(specs[("params", "time_embed", "mlp_0", "kernel")]) == ("head_freq", "head_width")
  assert tuple(specs[("params", "res_blocks_1", "mlp_2", "kernel")]) == ("head_width", "head_mlp")
  assert tuple(specs[("params", "res_blocks_0", "in_ln", "scale")]) == ("head_width",)
  assert tuple(specs[("params", "final_layer", "linear", "kernel")]) == (
      "head_width", "token_channels"
  )
  assert tuple(specs[("params", "final_layer", "linear", "bias")]) == ("token_channels",)


def _reference_forward(p, x, t, c):
  """MAR's SimpleMLPAdaLN forward in float64 NumPy from a flat parameter dict."""

  def linear(name, h):
    return h @ p[f"params/{name}/kernel"] + p[f"params/{name}/bias"]

  def silu(h):
    return h / (1 + np.exp(-h))

  def layer_norm(h, scale=None, bias=None):
    mu = h.mean(-1, keepdims=True)
    var = ((h - mu) ** 2).mean(-1, keepdims=True)
    h = (h - mu) / np.sqrt(var + 1e-6)
    return h if scale is None else h * scale + bias

  half = 128
  freqs = np.exp(-math.log(10000) * np.arange(half) / half)
  args = t[:, None].astype(np.float64) * freqs
  t_freq = np.concatenate([np.cos(args), np.sin(args)], -1)
  y = linear("time_embed/mlp_2", silu(linear("time_embed/mlp_0", t_freq))) + linear("cond_embed", c)
  h = linear("input_proj", x)
  for j in range(DEPTH):
    b = f"res_blocks_{j}"
    shift, scale, gate = np.split(linear(f"{b}/adaLN_modulation_1", silu(y)), 3, -1)
    z = layer_norm(h, p[f"params/{b}/in_ln/scale"], p[f"params/{b}/in_ln/bias"])
    z = z * (1 + scale) + shift
    h = h + gate * linear(f"{b}/mlp_2", silu(linear(f"{b}/mlp_0", z)))
  shift, scale = np.split(linear("final_layer/adaLN_modulation_1", silu(y)), 2, -1)
  return linear("final_layer/linear", layer_norm(h) * (1 + scale) + shift)


def test_forward_matches_numpy_reference(variables):
  params = _perturbed(variables)
  x, t, c = _inputs(2)
  out = jax.jit(_head().apply)(params, x, t, c)
  flat = {k: v.astype(np.float64) for k, v in _flat(params).items()}
  x64, c64 = np.asarray(x, np.float64), np.asarray(c, np.float64)
  ref = _reference_forward(flat, x64, np.asarray(t), c64)
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-4)


def test_bfloat16_close_to_float32(variables):
  params = _perturbed(variables)
  x, t, c = _inputs(3)
  out32 = _head().apply(params, x, t, c)
  out16 = _head(jnp.bfloat16).apply(params, x, t, c)
  assert out16.dtype == jnp.float32 and out16.shape == (M, 2 * C)
  assert np.all(np.isfinite(out16))
  scale = float(jnp.abs(out32).max())
  assert scale > 0.1
  np.testing.assert_allclose(out16, out32, atol=0.05 * scale)
  # The parameters stay float32 under a bfloat16 computation dtype.
  init16 = _head(jnp.bfloat16).init(jax.random.key(0), x, t, c)
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(nn.unbox(init16)))


def test_gradients_flow(variables):
  params = _perturbed(variables)
  x, t, c = _inputs(4)
  grads = jax.grad(lambda p: jnp.sum(_head().apply(p, x, t, c) ** 2))(params)
  for name, g in _flat(grads).items():
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, name
