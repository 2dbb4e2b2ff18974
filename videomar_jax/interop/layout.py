"""The VideoMAR authors' PyTorch key layout <-> this project's parameter tree.

The authors' model is MAR-shaped (`z_proj`, `mask_token`, `decoder_blocks`, `decoder_norm`,
`diffloss.net`) with Step-Video blocks. Each Flax leaf maps to exactly one PyTorch tensor:

  Flax (per-layer layout)                          PyTorch
  transformer/blocks_{i}/...                       decoder_blocks.{i}....
  .../ff_proj, .../ff_out                          ...ff.net.0.proj, ...ff.net.2
  diffusion_head/res_blocks_1/mlp_0                diffloss.net.res_blocks.1.mlp.0
  <dense>/kernel [in..., out...]                   <linear>.weight [prod(out), prod(in)]
  <norm>/scale                                     <norm>.weight
  class_emb [K, D]                                 class_emb.weight

Fused projections need no permutation: a DenseGeneral kernel [D, heads, 3, hd] flattened
row-major is exactly Step-Video's `wqkv` output order (head, then q/k/v, then head_dim), and
`wo`'s [heads, hd, D] kernel flattens to its input order (head, head_dim).

`flax_to_torch` / `torch_to_flax` are strict: missing, unexpected or mis-shaped keys raise a
`LayoutError` that lists all of them.
"""

import re

import jax
import numpy as np

from videomar_jax.errors import UserError
from videomar_jax.interop import keys

from videomar_jax.models.transformer import scanned_to_layers

# Dense kernels whose contracted (input) side has more than one axis.
_MULTI_AXIS_INPUTS = {"wo": 2}
_RENAMES = {"ff_proj": "ff.net.0.proj", "ff_out": "ff.net.2"}
_TOP = {"transformer": "", "diffusion_head": "diffloss.net."}


class LayoutError(UserError):
  """PyTorch tensors that do not match the parameters of the configured model."""


def _module_name(part: str) -> str:
  if part in _RENAMES:
    return _RENAMES[part]
  match = re.fullmatch(r"blocks_(\d+)", part)
  if match:
    return f"decoder_blocks.{match.group(1)}"
  return re.sub(r"_(\d+)$", r".\1", part)  # res_blocks_1 -> res_blocks.1, mlp_0 -> mlp.0


def torch_key(path: tuple[str, ...]) -> str:
  """Flax path ("transformer", "blocks_0", "attn1", "wqkv", "kernel") -> PyTorch key."""
  top, *modules, leaf = path
  name = ".".join(_module_name(m) for m in modules)
  if leaf in ("kernel", "scale"):
    leaf = "weight"
  elif leaf == "class_emb":
    leaf = "class_emb.weight"
  return _TOP[top] + (f"{name}.{leaf}" if name else leaf)


def _flatten(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _set(tree: dict, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _is_kernel(path) -> bool:
  return path[-1] == "kernel"


def _torch_shape(path, shape) -> tuple[int, ...]:
  """The PyTorch shape of a Flax leaf of shape `shape`."""
  if not _is_kernel(path):
    return tuple(shape)
  n_in = _MULTI_AXIS_INPUTS.get(path[-2], 1)
  return (int(np.prod(shape[n_in:])), int(np.prod(shape[:n_in])))


def _per_layer(tree: dict, depth: int) -> dict:
  """Params (arrays or ShapeDtypeStructs) with a scanned `blocks` entry -> per-layer
  `blocks_{i}` entries (the PyTorch view)."""
  tree = dict(tree)
  if "blocks" not in tree["transformer"]:
    return tree
  leaves = jax.tree_util.tree_leaves(tree["transformer"]["blocks"])
  if leaves and isinstance(leaves[0], jax.ShapeDtypeStruct):
    transformer = dict(tree["transformer"])
    stacked = transformer.pop("blocks")
    for i in range(depth):
      transformer[f"blocks_{i}"] = jax.tree_util.tree_map(
          lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), stacked)
    tree["transformer"] = transformer
  else:
    tree["transformer"] = scanned_to_layers(tree["transformer"], depth)
  return tree


def expected_torch_shapes(abstract_params: dict, depth: int) -> dict[str, tuple[int, ...]]:
  """PyTorch key -> shape, for a model with these (abstract) parameters."""
  flat = _flatten(_per_layer(abstract_params, depth))
  return {torch_key(path): _torch_shape(path, leaf.shape) for path, leaf in flat}


def flax_to_torch(params: dict, depth: int) -> dict[str, np.ndarray]:
  """Parameter tree (scanned or per-layer) -> the authors' `state_dict` as NumPy arrays."""
  out = {}
  for path, leaf in _flatten(_per_layer(params, depth)):
    array = np.asarray(leaf)
    if _is_kernel(path):
      array = array.reshape(_torch_shape(path, array.shape)[::-1]).T
    out[torch_key(path)] = np.ascontiguousarray(array)
  return out


def check_keys(state_dict: dict, expected: dict[str, tuple[int, ...]], what: str = "") -> None:
  """Raises a `LayoutError` listing every missing, unexpected and mis-shaped key, grouped
  by key pattern as `videomar torch keys` shows them (`keys.diff_report`)."""
  report = keys.diff_report(state_dict, expected)
  if report:
    raise LayoutError(f"the checkpoint{what} does not match the configured model: {report}")


def torch_to_flax(state_dict: dict, abstract_params: dict, depth: int) -> dict:
  """The authors' `state_dict` (name -> array) -> a float32 parameter tree shaped like
  `abstract_params` (scanned or per-layer, whichever that is). Strict, see `check_keys`."""
  per_layer = _per_layer(abstract_params, depth)
  flat = list(_flatten(per_layer))
  check_keys(state_dict, {torch_key(p): _torch_shape(p, leaf.shape) for p, leaf in flat})

  def converted(path, shape):  # one tensor read (lazily, for safetensors) and laid out
    array = np.asarray(state_dict[torch_key(path)]).astype(np.float32)
    return (array.T if _is_kernel(path) else array).reshape(shape)

  tree = {}
  scanned = "blocks" in abstract_params["transformer"]
  for path, leaf in flat:
    if not (scanned and path[0] == "transformer" and path[1].startswith("blocks_")):
      _set(tree, path, np.ascontiguousarray(converted(path, leaf.shape)))
  if scanned:  # each [depth, ...] stack filled layer by layer: no per-layer copy held
    for path, leaf in _flatten(abstract_params["transformer"]["blocks"]):
      stack = np.empty(leaf.shape, np.float32)
      for i in range(depth):
        stack[i] = converted(("transformer", f"blocks_{i}", *path), leaf.shape[1:])
      _set(tree, ("transformer", "blocks", *path), stack)
  return tree
