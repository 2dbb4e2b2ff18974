"""PyTorch checkpoint files <-> parameters of a configured VideoMAR.

Reads `.safetensors` (no torch needed) and `.pt`/`.pth` (needs torch; loaded with
`weights_only=True`, so no code in the file runs) holding a bare `state_dict` or one wrapped
as `{"model": ...}` / `{"model_ema": ...}` (MAR's training checkpoints hold both and an
`args` Namespace). `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes are removed.
Writes `.safetensors` and `.pt` in the authors' layout (see `layout.py`).
"""

import argparse
import os
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np

from videomar_jax.errors import UserError
from videomar_jax.interop import keys, layout
from videomar_jax.io import safetensors_io
from videomar_jax.train.setup import make_model

WRAPPERS = ("model_ema", "model", "state_dict")
_PREFIXES = ("module.", "_orig_mod.")
HEAD_PREFIX = "diffloss.net."


class CheckpointFileError(UserError):
  """A checkpoint file that cannot be read or holds no recognisable state_dict."""


def _require_torch(path: str):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise CheckpointFileError(
        f"{path}: reading or writing .pt/.pth files needs PyTorch (pip install "
        "torch --index-url https://download.pytorch.org/whl/cpu, the CPU build); "
        ".safetensors files do not.") from None
  return torch


def _to_numpy(value) -> np.ndarray:
  if isinstance(value, safetensors_io.LazyTensor):  # read when the converter needs it
    return value
  if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no NumPy dtype, widen it
    value = value.detach().cpu()
    if value.dtype.is_floating_point:
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _read_raw(path: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no checkpoint file at {path}")
  if path.endswith(".safetensors"):
    return safetensors_io.open_lazy(path)
  if not path.endswith((".pt", ".pth", ".bin", ".ckpt")):
    raise CheckpointFileError(f"{path}: unknown checkpoint format; expected .safetensors, "
                              ".pt, .pth, .bin or .ckpt.")
  torch = _require_torch(path)
  torch.serialization.add_safe_globals([argparse.Namespace])  # MAR stores its args
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle/zip errors differ by torch version; name the file
    raise CheckpointFileError(f"{path}: not a loadable PyTorch checkpoint ({e}).") from None


def read_state_dict(path: str, which: str = "auto",
                    key_map: str = "") -> tuple[dict[str, np.ndarray], str]:
  """A checkpoint file -> (state_dict as NumPy arrays, which entry was used).

  Tensors of a `.safetensors` file are `safetensors_io.LazyTensor`s (shape and dtype known,
  bytes memory-mapped and read on `np.asarray`), so that a converter holds one at a time.
  `which`: "auto" (the EMA weights `model_ema` when present, else `model`, else the bare
  dict), "model_ema", "model" or "bare". `key_map`: a JSON/YAML file of regex renames
  applied to every key after the prefixes are removed (see `io.key_map`).
  """
  raw = _read_raw(path)
  if not isinstance(raw, Mapping):
    raise CheckpointFileError(f"{path}: holds a {type(raw).__name__}, not a state_dict.")
  if which == "auto":
    which = next((w for w in WRAPPERS if isinstance(raw.get(w), dict)), "bare")
  if which == "bare":
    entry = raw
  elif isinstance(raw.get(which), dict):
    entry = raw[which]
  else:
    raise CheckpointFileError(f"{path}: has no {which!r} entry (top-level keys: "
                              f"{sorted(raw)[:10]}).")
  state_dict = {}
  for key, value in entry.items():
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
      raise CheckpointFileError(f"{path}: entry {key!r} is a {type(value).__name__}, not a "
                                "tensor; pass which='model' or 'model_ema' for a training "
                                "checkpoint.")
    for prefix in _PREFIXES:
      key = key[len(prefix):] if key.startswith(prefix) else key
    state_dict[key] = _to_numpy(value)
  if key_map:
    state_dict = keys.apply_key_map(state_dict, keys.load_key_map(key_map))
  return state_dict, which


def load_params(path: str, config: ml_collections.ConfigDict, which: str = "auto",
                key_map: str = "") -> dict:
  """A checkpoint in the authors' layout -> float32 params for `make_model(config)`."""
  state_dict, _ = read_state_dict(path, which, key_map)
  abstract = make_model(config).abstract_params()
  try:
    params = layout.torch_to_flax(state_dict, abstract, config.model.depth)
  except layout.LayoutError as e:
    raise layout.LayoutError(f"{path}: {e}") from None
  return jax.tree_util.tree_map(np.asarray, params)


def init_params_loader(config: ml_collections.ConfigDict):
  """`() -> params` of `config.train.init_from` (with `config.train.init_key_map`), what
  `trainer.train(..., init_params=...)` starts a fresh run from."""
  return lambda: load_params(config.train.init_from, config,
                             key_map=config.train.init_key_map)


def export_params(params: dict, config: ml_collections.ConfigDict, path: str) -> dict:
  """Writes `params` as the authors' state_dict to `.safetensors` or `.pt`; returns it."""
  state_dict = layout.flax_to_torch(jax.device_get(params), config.model.depth)
  if path.endswith(".safetensors"):
    safetensors_io.save(state_dict, path, metadata={"format": "pt", "producer": "videomar_jax"})
  elif path.endswith((".pt", ".pth")):
    torch = _require_torch(path)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path + ".tmp")
    os.replace(path + ".tmp", path)
  else:
    raise CheckpointFileError(f"{path}: export to .safetensors, .pt or .pth.")
  return state_dict


def head_state_dict(state_dict: dict, path: str = "checkpoint") -> dict:
  """The `diffloss.net.*` entries of a MAR (or VideoMAR) state_dict, prefix removed."""
  head = {k[len(HEAD_PREFIX):]: v for k, v in state_dict.items() if k.startswith(HEAD_PREFIX)}
  if not head:
    raise CheckpointFileError(f"{path}: has no {HEAD_PREFIX}* keys (not a MAR checkpoint?).")
  return head


def mar_head_dims(head: dict) -> dict:
  """Sizes of a MAR diffusion head read off its tensors: token channels, width, depth,
  conditioning width (mar_base: 16, 1024, 6, 768)."""
  depth = len({k.split(".")[1] for k in head if k.startswith("res_blocks.")})
  width, channels = head["input_proj.weight"].shape
  return {"token_dim": int(channels), "width": int(width), "depth": depth,
          "z_channels": int(head["cond_embed.weight"].shape[1])}


def load_mar_head(path: str, config: ml_collections.ConfigDict, which: str = "auto",
                  key_map: str = "") -> dict:
  """MAR's `diffloss.net.*` (mar_base/large/huge) -> `params["diffusion_head"]` for `config`.

  Strict within the head: every head tensor must exist with the shape `config` implies
  (`head.width`, `head.depth`, the model width as conditioning width, the token dim).
  """
  state_dict, _ = read_state_dict(path, which, key_map)
  head = head_state_dict(state_dict, path)
  abstract = {"diffusion_head": make_model(config).abstract_params()["diffusion_head"]}
  expected = {k[len(HEAD_PREFIX):]: v for k, v in
              layout.expected_torch_shapes({"transformer": {}, **abstract}, 0).items()}
  try:
    layout.check_keys(head, expected, what=f" head ({HEAD_PREFIX}*)")
  except layout.LayoutError as e:
    try:
      sizes = f"the checkpoint's head has sizes {mar_head_dims(head)}; "
    except KeyError:  # the tensors the sizes are read from are themselves missing
      sizes = ""
    raise layout.LayoutError(f"{path}: {e}\n  {sizes}set head.width, head.depth, "
                             "model.width and the token dim to match.") from None
  prefixed = {HEAD_PREFIX + k: v for k, v in head.items()}
  tree = layout.torch_to_flax(prefixed, {"transformer": {}, **abstract}, 0)
  return jax.tree_util.tree_map(np.asarray, tree["diffusion_head"])
