"""Logical axis names -> mesh axes: the one table that places every parameter and activation.

Parameters carry logical axis names (see `models/layers.py` and `models/diffusion_head.py`);
`config.sharding.rules` maps each name to "" (replicated), one mesh axis ("fsdp"), or several
joined by "+" ("data+fsdp"). The table must name every logical axis the model uses (a
missing or unknown name, or an unknown mesh axis, is an error), and no parameter may map
two of its dimensions to the same mesh axis, or split a dimension the mesh size does not
divide: those are errors that name the parameter, not silent fallbacks to replication.
"""

import math

import jax
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec

from videomar_jax.errors import ConfigError
from videomar_jax.models.layers import activation_rules
from videomar_jax.parallel.mesh import MESH_AXES

# Parameter axes, then activation axes (used by `models.layers.constrain`).
DEFAULT_RULES = {
    "embed": "fsdp",  # D: parameters and optimizer state split over fsdp
    "mlp": "tensor",  # FFN hidden (Megatron column/row split)
    "heads": "tensor",
    "kv": "",  # head dim
    "qkv": "",  # the fused q/k/v index
    "token_channels": "",
    "context_embed": "",
    "context_length": "",
    "classes": "",
    "modulation": "",
    "layers": "",  # the nn.scan axis: never split
    "head_freq": "",
    "head_width": "",  # diffusion head W on the input side (its conditioning input is embed)
    "head_mlp": "fsdp",
    "activation_batch": "data+fsdp",
    "activation_length": "",
    "activation_embed": "",
    "cache_sequence": "",  # the sampler's KV-cache slots (see models.layers.KV_CACHE_AXES)
}


def default_rules_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(DEFAULT_RULES))


def _mesh_axes(logical: str, value: str):
  if value in ("", None):
    return None
  axes = tuple(value.split("+"))
  unknown = [a for a in axes if a not in MESH_AXES]
  if unknown or len(set(axes)) != len(axes):
    raise ConfigError(f"sharding rule {logical}={value!r}: mesh axes must be distinct names "
                     f"from {MESH_AXES} joined by '+'.")
  return axes[0] if len(axes) == 1 else axes


def rules_from_config(rules_config) -> tuple[tuple[str, object], ...]:
  """`config.sharding.rules` -> flax's ((logical, mesh axes or None), ...)."""
  rules = dict(rules_config)
  if rules.get("activation_batch") != DEFAULT_RULES["activation_batch"]:
    # The input pipeline splits every batch over data and fsdp (`partition.batch_sharding`);
    # another activation rule would reshard the activations in every layer.
    raise ConfigError(f"sharding rule activation_batch={rules.get('activation_batch')!r}: the "
                     f"batch is split over {DEFAULT_RULES['activation_batch']!r}; size the "
                     "mesh axes instead.")
  return tuple((name, _mesh_axes(name, value)) for name, value in rules.items())


def _flat_axes(mesh_axes) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def logical_to_spec(logical_spec, rules: tuple, what: str) -> PartitionSpec:
  """One logical PartitionSpec -> a mesh PartitionSpec; errors on unknown names/conflicts."""
  table = dict(rules)
  mesh_axes = []
  for name in tuple(logical_spec):
    if name is None:
      mesh_axes.append(None)
      continue
    if name not in table:
      raise ConfigError(f"{what}: no sharding rule for logical axis {name!r}; add it to "
                       "config.sharding.rules ('' replicates it).")
    mesh_axes.append(table[name])
  used = [a for axes in mesh_axes for a in _flat_axes(axes)]
  if len(used) != len(set(used)):
    raise ConfigError(f"{what}: logical axes {tuple(logical_spec)} map to mesh axes "
                     f"{tuple(mesh_axes)}, which use a mesh axis twice; change "
                     "config.sharding.rules.")
  return PartitionSpec(*mesh_axes)


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_shardings(logical_specs, abstract_params, mesh: jax.sharding.Mesh,
                    rules: tuple):
  """Tree of `NamedSharding`s for parameters from their logical specs (see
  `VideoMAR.logical_axes`), checking that the mesh divides every split dimension."""
  def one(path, spec, leaf):
    name = _path_name(path)
    pspec = logical_to_spec(spec, rules, name)
    for dim, (size, axes) in enumerate(zip(leaf.shape, tuple(pspec))):
      parts = math.prod(mesh.shape[a] for a in _flat_axes(axes))
      if size % parts:
        raise ConfigError(f"{name}: dimension {dim} ({spec[dim]}, size {size}) cannot be "
                         f"split {parts} ways over mesh axes {axes}; change the mesh or "
                         "config.sharding.rules.")
    return NamedSharding(mesh, pspec)
  return jax.tree_util.tree_map_with_path(
      one, logical_specs, abstract_params, is_leaf=lambda x: isinstance(x, PartitionSpec))


def logical_axis_rules(rules: tuple):
  """Context manager activating `rules` for the model's activation constraints."""
  return activation_rules(rules)
