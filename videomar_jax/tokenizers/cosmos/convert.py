"""PyTorch Cosmos tokenizer weights <-> parameters of ``tokenizers.cosmos.CosmosAutoencoder``.

Two source layouts:

* **diffusers** (``AutoencoderKLCosmos.state_dict()``, a diffusers model directory):
  ``encoder.down_blocks.0.resnets.0.conv1.conv_s.weight``, ``...norm1.norm.weight``,
  ``quant_conv.weight``. The Flax modules carry the same names (``down_blocks_0``,
  ``resnets_0``, ``to_out_0``), so the mapping is mechanical: ``X.weight`` of a conv is
  the kernel ``X/kernel`` transposed from torch's ``[O, I, kT, kH, kW]`` to
  ``[kT, kH, kW, I, O]``, a GroupNorm's ``X.norm.weight``/``X.norm.bias`` are
  ``X/scale``/``X/bias``.
* **original** Cosmos-Tokenizer / TorchScript (``autoencoder.jit``, ``encoder.jit`` +
  ``decoder.jit``): ``encoder.down.0.block.0.conv1.0.conv3d.weight``, ... -- renamed to
  diffusers' names by ``tokenizers.cosmos.keys.original_to_diffusers`` first.

Conversion is strict: every expected weight must be present with its exact shape and
nothing else may be left over (apart from the parameter-free buffers in
``IGNORED_BUFFER_PATTERNS``); a ``CosmosConversionError`` lists every problem at once.
Parameter trees here are the bare ``"params"`` collection, as used with
``model.apply({"params": params}, ...)``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import jax
import numpy as np
from flax import traverse_util

from videomar_jax.errors import UserError
from videomar_jax.io import safetensors_io
from videomar_jax.tokenizers.cosmos import CosmosConfig, abstract_params

__all__ = [
    "CosmosConversionError",
    "IGNORED_BUFFER_PATTERNS",
    "convert",
    "detect_layout",
    "diffusers_to_flax",
    "expected_diffusers_shapes",
    "flax_to_diffusers",
    "load_diffusers_config",
    "load_torch_state_dict",
    "unused_resampler_keys",
]

PathLike = Union[str, os.PathLike]

# Buffers (no learnable weights) that checkpoints may carry: the Haar filters and their
# index ranges of the (un)patchers, and the original code's patch-size buffer.
IGNORED_BUFFER_PATTERNS: tuple[str, ...] = (
    r"(^|\.)wavelets$",
    r"(^|\.)_arange$",
    r"(^|\.)patch_size_buffer$",
)
_IGNORED = re.compile("|".join(IGNORED_BUFFER_PATTERNS))
_PREFIXES = ("module.", "_orig_mod.")
_WRAPPERS = ("state_dict", "model", "module")
# Flax names "<list>_<i>" <-> torch ModuleList entries "<list>.<i>".
_LIST_NAMES = ("down_blocks", "up_blocks", "resnets", "attentions", "temp_attentions",
               "downsamplers", "upsamplers", "to_out")
_LIST_ENTRY = re.compile(rf"^({'|'.join(_LIST_NAMES)})_(\d+)$")
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"


class CosmosConversionError(UserError):
  """A state_dict that does not match the configured network.

  Attributes ``missing``, ``unexpected`` (torch key lists) and ``mismatched``
  (``{key: (given shape, expected shape)}``) hold every problem found.
  """

  def __init__(self, message: str, missing: Sequence[str] = (),
               unexpected: Sequence[str] = (),
               mismatched: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None):
    super().__init__(message)
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = dict(mismatched or {})


# ---- Flax path <-> diffusers key.
def _torch_module(path: Sequence[str]) -> str:
  return ".".join(_LIST_ENTRY.sub(r"\1.\2", part) for part in path)


def _leaf_rules(abstract: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], str]]:
  """diffusers key -> (flax path, kind) for every leaf; kind in {kernel, vector}."""
  rules = {}
  flat = traverse_util.flatten_dict(abstract)
  modules: dict[tuple[str, ...], set[str]] = {}
  for path in flat:
    modules.setdefault(path[:-1], set()).add(path[-1])
  for path in flat:
    module, leaf = path[:-1], path[-1]
    prefix = _torch_module(module)
    if leaf == "kernel":
      rules[f"{prefix}.weight"] = (path, "kernel")
    elif "scale" in modules[module]:  # a CausalGroupNorm: torch wraps nn.GroupNorm as .norm
      rules[f"{prefix}.norm.{'weight' if leaf == 'scale' else 'bias'}"] = (path, "vector")
    elif leaf == "bias":
      rules[f"{prefix}.bias"] = (path, "vector")
    else:
      raise AssertionError(f"no torch name for flax parameter {'/'.join(path)}")
  return rules


def _torch_shape(shape: Sequence[int], kind: str) -> tuple[int, ...]:
  if kind == "kernel":  # [kT, kH, kW, I, O] -> [O, I, kT, kH, kW]
    kt, kh, kw, i, o = shape
    return (o, i, kt, kh, kw)
  return tuple(shape)


@functools.lru_cache(maxsize=16)
def _rules(config: CosmosConfig) -> dict[str, tuple[tuple[str, ...], str, tuple[int, ...]]]:
  """diffusers key -> (flax path, kind, torch shape), from the network's abstract params."""
  abstract = abstract_params(config)
  flat = traverse_util.flatten_dict(abstract)
  return {key: (path, kind, _torch_shape(flat[path].shape, kind))
          for key, (path, kind) in _leaf_rules(abstract).items()}


def expected_diffusers_shapes(config: CosmosConfig) -> dict[str, tuple[int, ...]]:
  """diffusers key -> torch shape of every weight of the configured network."""
  return {key: shape for key, (_, _, shape) in _rules(config).items()}


def _is_ignored(key: str) -> bool:
  return _IGNORED.search(key) is not None


def _format_error(config: CosmosConfig, missing, unexpected, mismatched) -> str:
  network = {k: v for k, v in config.to_dict().items() if k != "dtype"}
  lines = [f"state_dict does not match the Cosmos network {network}: "
           f"{len(missing)} missing, {len(unexpected)} unexpected, "
           f"{len(mismatched)} wrong shape"]
  if any(".conv3d." in k or k.startswith(("encoder.down.", "decoder.up.")) for k in unexpected):
    lines.append("  (the keys look like the original Cosmos-Tokenizer layout: use convert(), "
                 "which renames them first)")
  lines += [f"  missing: {k}" for k in missing]
  lines += [f"  unexpected: {k}" for k in unexpected]
  lines += [f"  wrong shape: {k}: got {g}, expected {e}" for k, (g, e) in mismatched.items()]
  return "\n".join(lines)


def unused_resampler_keys(config: CosmosConfig) -> set[str]:
  """diffusers-named tensors that NVIDIA's network owns for ``config`` but never runs.

  NVIDIA's ``EncoderFactorized`` builds a ``CausalHybridDownsample3d`` at every encoder
  level but the last, and ``DecoderFactorized`` a ``CausalHybridUpsample3d`` at every
  decoder level but the one executed last, each with all three convs; ``spatial_down`` /
  ``temporal_down`` (``spatial_up`` / ``temporal_up``) then decide which of them run:
  conv1 the spatial (decoder: temporal) step, conv2 the temporal (decoder: spatial) one,
  conv3 the final 1x1x1 conv when either runs. The Flax network, like diffusers, has only
  the convs that run, so a state_dict of NVIDIA's module carries exactly these extra
  tensors. Which directions run is ``config.encoder_stages()`` / ``decoder_stages()``,
  NVIDIA's rule (``legacy_mode`` included).
  """
  keys = set()
  sides = (("encoder.down_blocks", "downsamplers", config.encoder_stages(), ("spatial", "temporal")),
           ("decoder.up_blocks", "upsamplers", config.decoder_stages(), ("temporal", "spatial")))
  for blocks, samplers, stages, (first, second) in sides:
    for i, stage in enumerate(stages[:-1]):  # every level with a sampler in NVIDIA's code
      runs = {1: getattr(stage, first), 2: getattr(stage, second)}
      runs[3] = runs[1] or runs[2]
      for k, running in runs.items():
        if not running:
          keys |= {f"{blocks}.{i}.{samplers}.0.conv{k}.{p}" for p in ("weight", "bias")}
  return keys


def diffusers_to_flax(state_dict: Mapping[str, Any], config: CosmosConfig) -> dict:
  """A diffusers ``AutoencoderKLCosmos`` state_dict -> float32 params for ``config``.

  Raises:
    CosmosConversionError: listing all missing, unexpected and mis-shaped keys.
  """
  rules = _rules(config)
  given = {k: v for k, v in state_dict.items() if not (_is_ignored(k) and k not in rules)}
  missing = sorted(set(rules) - set(given))
  unexpected = sorted(set(given) - set(rules))
  mismatched = {}
  for key in sorted(set(given) & set(rules)):
    shape = tuple(np.shape(given[key]))
    if shape != rules[key][2]:
      mismatched[key] = (shape, rules[key][2])
  if missing or unexpected or mismatched:
    raise CosmosConversionError(_format_error(config, missing, unexpected, mismatched),
                                missing, unexpected, mismatched)
  flat = {}
  for key, (path, kind, _) in rules.items():
    value = _to_float32(given[key])
    flat[path] = np.ascontiguousarray(value.transpose(2, 3, 4, 1, 0) if kind == "kernel"
                                      else value)
  return traverse_util.unflatten_dict(flat)


def flax_to_diffusers(params: Mapping[str, Any], config: CosmosConfig) -> dict[str, np.ndarray]:
  """Inverse of :func:`diffusers_to_flax` (``params`` bare or as ``{"params": ...}``)."""
  if set(params) == {"params"}:
    params = params["params"]
  flat = traverse_util.flatten_dict(jax.device_get(params))
  rules = _rules(config)
  expected = {path: (key, kind, shape) for key, (path, kind, shape) in rules.items()}
  missing = sorted("/".join(p) for p in set(expected) - set(flat))
  unexpected = sorted("/".join(p) for p in set(flat) - set(expected))
  mismatched = {}
  out = {}
  for path in sorted(set(flat) & set(expected)):
    key, kind, shape = expected[path]
    value = np.asarray(flat[path], dtype=np.float32)
    if kind == "kernel":
      value = value.transpose(4, 3, 0, 1, 2) if value.ndim == 5 else value
    if value.shape != shape:
      mismatched["/".join(path)] = (value.shape, shape)
      continue
    out[key] = np.ascontiguousarray(value)
  if missing or unexpected or mismatched:
    raise CosmosConversionError(
        "params do not match the configured network (flax paths): "
        f"missing {missing}, unexpected {unexpected}, wrong shape {mismatched}",
        missing, unexpected, mismatched)
  return out


# ---- Reading files.
def _to_float32(value: Any) -> np.ndarray:
  """A torch tensor or array -> NumPy; floating point (bf16/fp16 too) widened to float32."""
  if hasattr(value, "detach"):  # torch.Tensor: bfloat16 has no NumPy dtype, widen in torch
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  value = np.asarray(value)
  if np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16":
    value = value.astype(np.float32)
  return value


def _strip_prefixes(key: str) -> str:
  changed = True
  while changed:
    changed = False
    for prefix in _PREFIXES:
      if key.startswith(prefix):
        key, changed = key[len(prefix):], True
  return key


def _unwrap(raw: Any, path: str) -> Mapping[str, Any]:
  if hasattr(raw, "state_dict") and callable(raw.state_dict):  # a module
    raw = raw.state_dict()
  if not isinstance(raw, Mapping):
    raise ValueError(f"{path}: holds a {type(raw).__name__}, not a state_dict")
  if raw and all(hasattr(v, "shape") for v in raw.values()):
    return raw
  for wrapper in _WRAPPERS:
    if isinstance(raw.get(wrapper), Mapping):
      return _unwrap(raw[wrapper], path)
  raise ValueError(f"{path}: no state_dict found (top-level keys {sorted(raw)[:10]})")


def _diffusers_weight_files(directory: str) -> list[str]:
  for base in (directory, os.path.join(directory, "vae")):
    if not os.path.isdir(base):
      continue
    names = sorted(os.listdir(base))
    for ext in (".safetensors", ".bin"):
      single = _DIFFUSERS_WEIGHTS + ext
      if single in names:
        return [os.path.join(base, single)]
      shards = [n for n in names if n.startswith(_DIFFUSERS_WEIGHTS + "-") and n.endswith(ext)]
      if shards:
        return [os.path.join(base, n) for n in shards]
  raise FileNotFoundError(f"{directory}: not a diffusers model directory (no "
                          f"{_DIFFUSERS_WEIGHTS}.safetensors in it or in vae/)")


def _read_file(path: str) -> Mapping[str, Any]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no checkpoint file at {path}")
  if path.endswith(".safetensors"):  # memory-mapped, read tensor by tensor on conversion
    return safetensors_io.open_lazy(path)
  import torch  # pylint: disable=import-outside-toplevel
  if path.endswith(".jit"):  # NVIDIA's released files; torch deprecates TorchScript
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      return torch.jit.load(path, map_location="cpu").state_dict()
  if path.endswith((".pt", ".pth", ".bin", ".ckpt")):
    return _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
  raise ValueError(f"{path}: unknown checkpoint format; expected .safetensors, .pt, .pth, "
                   ".bin, .ckpt, .jit or a diffusers model directory")


def _as_paths(paths: PathLike | Sequence[PathLike]) -> list[str]:
  if isinstance(paths, (str, os.PathLike)):
    return [os.fspath(paths)]
  return [os.fspath(p) for p in paths]


def load_torch_state_dict(paths: PathLike | Sequence[PathLike]) -> dict[str, np.ndarray]:
  """Reads and merges state_dicts from files or diffusers model directories.

  Accepts ``.pt/.pth/.bin/.ckpt`` (``torch.load(weights_only=True)``, a bare state_dict
  or one under ``state_dict``/``model``/``module``), ``.safetensors``, TorchScript
  ``.jit`` (e.g. Cosmos' ``encoder.jit`` + ``decoder.jit``, or ``autoencoder.jit``) and
  diffusers directories (``diffusion_pytorch_model*.safetensors``, also under ``vae/``).
  ``module.``/``_orig_mod.`` prefixes are removed; floating tensors become float32. A key
  present in several files must hold the same values in each.
  """
  files = []
  for path in _as_paths(paths):
    files += _diffusers_weight_files(path) if os.path.isdir(path) else [path]
  merged: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  conflicts = []
  for path in files:
    for key, value in _read_file(path).items():
      key, value = _strip_prefixes(key), _to_float32(value)
      if key in merged:
        if merged[key].shape != value.shape or not np.array_equal(merged[key], value):
          conflicts.append(f"{key} ({origin[key]} vs {path})")
        continue
      merged[key], origin[key] = value, path
  if conflicts:
    raise ValueError("checkpoint files disagree on " + ", ".join(conflicts))
  return merged


def load_diffusers_config(directory: PathLike) -> CosmosConfig:
  """The network config of a diffusers model directory's ``config.json`` (or ``vae/``)."""
  directory = os.fspath(directory)
  for base in (directory, os.path.join(directory, "vae")):
    path = os.path.join(base, "config.json")
    if os.path.isfile(path):
      with open(path) as f:
        return CosmosConfig.from_diffusers(json.load(f))
  raise FileNotFoundError(f"{directory}: no config.json (nor vae/config.json)")


def detect_layout(state_dict: Mapping[str, Any]) -> str:
  """``"diffusers"`` or ``"original"`` (Cosmos-Tokenizer / TorchScript key names)."""
  keys = [k for k in state_dict if not _is_ignored(k)]
  diffusers = any(re.search(r"(^|\.)(down_blocks|up_blocks|mid_block)\.|\.conv_[st]\.", k)
                  for k in keys)
  original = any(re.search(r"\.conv3d\.|(^|\.)(down|up)\.\d+\.|(^|\.)mid\.", k) for k in keys)
  if diffusers and not original:
    return "diffusers"
  if original and not diffusers:
    return "original"
  what = "both" if diffusers else "neither"
  raise ValueError(f"cannot tell the state_dict layout: its keys match {what} the diffusers "
                   f"and the original Cosmos-Tokenizer names (e.g. {sorted(keys)[:3]})")


def convert(paths: PathLike | Sequence[PathLike], config: CosmosConfig | None = None,
            log: Callable[[str], None] | None = None) -> dict:
  """Checkpoint file(s) or a diffusers directory -> float32 params for ``config``.

  The layout (diffusers or original Cosmos-Tokenizer/TorchScript) is detected from the key
  names. ``config`` may be omitted for a diffusers directory (read from its
  ``config.json``); when both are given they must describe the same network. In the
  original layout the convs of switched-off resamplers (``unused_resampler_keys``) are
  dropped and ``log`` (default: a warning) is told in one line how many; any other extra
  tensor is still an error.
  """
  for directory in (p for p in _as_paths(paths) if os.path.isdir(p) and _has_config(p)):
    stored = load_diffusers_config(directory)
    if config is None:
      config = stored
    elif stored.to_diffusers() != config.to_diffusers():
      raise ValueError(f"{directory}: its config.json describes {stored.to_diffusers()}, "
                       f"not the requested {config.to_diffusers()}")
  if config is None:
    raise ValueError("convert() needs a CosmosConfig unless given a diffusers directory "
                     "with a config.json (e.g. config=get_variant('CV8x8x8'))")
  state_dict = load_torch_state_dict(paths)
  if detect_layout(state_dict) == "original":
    from videomar_jax.tokenizers.cosmos.keys import \
        original_to_diffusers  # pylint: disable=import-outside-toplevel
    state_dict = original_to_diffusers(state_dict)
    unused = unused_resampler_keys(config)
    dropped = sorted(k for k in state_dict if k in unused)
    if dropped:
      state_dict = {k: v for k, v in state_dict.items() if k not in unused}
      message = (f"dropped {len(dropped)} tensors of switched-off resampler convs (NVIDIA's "
                 "network creates conv1-3 in every hybrid resampler but never runs these "
                 f"for this variant): {', '.join(sorted({k.rsplit('.', 1)[0] for k in dropped}))}")
      (log or (lambda m: warnings.warn(m, stacklevel=3)))(message)
  return diffusers_to_flax(state_dict, config)


def _has_config(directory: str) -> bool:
  return any(os.path.isfile(os.path.join(b, "config.json"))
             for b in (directory, os.path.join(directory, "vae")))
