"""NVIDIA Cosmos-Tokenizer continuous video tokenizer (CV4x8x8 / CV8x8x8 / CV8x16x16) keys
<-> diffusers `AutoencoderKLCosmos` keys.

Original names are what `torch.jit.load(...).state_dict()` gives for the released
`autoencoder.jit`, `encoder.jit` and `decoder.jit` (EncoderFactorized / DecoderFactorized
inside `CausalContinuousVideoTokenizer`). Rules, applied per key (`{i}`, `{j}` integers,
`{p}` = weight|bias, `{c}` = encoder|decoder):

  original                                      diffusers
  quant_conv.conv3d.{p}                         quant_conv.{p}
  post_quant_conv.conv3d.{p}                    post_quant_conv.{p}
  {c}.conv_in.0.conv3d / .1.conv3d              {c}.conv_in.conv_s / .conv_t
  {c}.conv_out.0.conv3d / .1.conv3d             {c}.conv_out.conv_s / .conv_t
  {c}.norm_out.norm.{p}                         {c}.norm_out.norm.{p}
  encoder.down.{i}.block.{j}                    encoder.down_blocks.{i}.resnets.{j}
  encoder.down.{i}.attn.{j}.0                   encoder.down_blocks.{i}.attentions.{j}
  encoder.down.{i}.attn.{j}.1                   encoder.down_blocks.{i}.temp_attentions.{j}
  encoder.down.{i}.downsample.conv{k}.conv3d    encoder.down_blocks.{i}.downsamplers.0.conv{k}
  decoder.up.{i}.block.{j}                      decoder.up_blocks.{n-1-i}.resnets.{j}
  decoder.up.{i}.attn.{j}.0                     decoder.up_blocks.{n-1-i}.attentions.{j}
  decoder.up.{i}.attn.{j}.1                     decoder.up_blocks.{n-1-i}.temp_attentions.{j}
  decoder.up.{i}.upsample.conv{k}.conv3d        decoder.up_blocks.{n-1-i}.upsamplers.0.conv{k}
  {c}.mid.block_1 / block_2                     {c}.mid_block.resnets.0 / resnets.1
  {c}.mid.attn_1.0 / attn_1.1                   {c}.mid_block.attentions.0 / temp_attentions.0
  resnet: norm{1,2}.norm, conv{1,2}.0.conv3d, conv{1,2}.1.conv3d, nin_shortcut.conv3d
          -> norm{1,2}.norm, conv{1,2}.conv_s, conv{1,2}.conv_t, conv_shortcut
  attention: norm.norm, q/k/v.conv3d, proj_out.conv3d -> norm.norm, to_q/to_k/to_v, to_out.0

`n` is the number of decoder levels (original `up` list is indexed by resolution level,
diffusers' `up_blocks` by execution order): 3 for CV8x8x8 / CV8x16x16, 2 for CV4x8x8,
whose decoder is built with `channels_mult=[2, 4]`. It is read from the keys themselves.

Shapes: none change. Every conv on both sides is an `nn.Conv3d` weight [out, in, kt, kh, kw]
(the attention q/k/v/proj_out and the shortcuts are 1x1x1 convs, never linear weights);
norms are `GroupNorm` inside a wrapper called `norm` on both sides. Values pass through
untouched (NumPy arrays or torch tensors alike); only conv-weight rank (5) and 1-D
bias/norm shapes are checked.

Dropped: registered buffers, not parameters (see `_BUFFER_PATTERNS`): the wavelet patcher's
`wavelets`, `_arange` and `patch_size_buffer`, which TorchScript saves in the `.jit` state
dicts although they are non-persistent in eager PyTorch, and which diffusers rebuilds.

encoder.jit / decoder.jit prefixes: `CausalContinuousVideoTokenizer.encoder_jit()` is
`nn.Sequential(OrderedDict(encoder=..., quant_conv=..., distribution=...))` and
`decoder_jit()` is `nn.Sequential(OrderedDict(post_quant_conv=..., decoder=...))`, so their
state dicts carry the same `encoder.` / `quant_conv.` and `post_quant_conv.` / `decoder.`
prefixes as autoencoder.jit: each is a subset of the full dict and maps with the same rules
(the identity distribution has no tensors). NVIDIA/Cosmos's discrete tokenizer confirms it:
it filters `encoder.patcher3d.wavelets` etc. out of `encoder.jit`'s state dict and
strict-loads the rest into a full tokenizer module.

Resampler convs: NVIDIA/Cosmos (and diffusers) create a hybrid down/upsampler's conv1/conv2/
conv3 only when that resampler really resamples spatially/temporally; NVIDIA/Cosmos-Tokenizer's
layers3d.py always creates all three and switches directions off afterwards, so
`state_dict()` of a network built with it carries convs that never run. They map like any
other conv here; `cosmos_convert.convert` then drops exactly those of the variant at hand
(`cosmos_convert.unused_resampler_keys`, NVIDIA's rule) and says so. `original_to_diffusers`
also drops resampler convs the target lacks when given its `expected_keys`.

Sources read: NVIDIA/Cosmos-Tokenizer cosmos_tokenizer/modules/layers3d.py,
modules/patching.py, modules/utils.py (CausalNormalize), modules/distributions.py,
networks/continuous_video.py, networks/configs.py, networks/__init__.py, utils.py,
video_lib.py; NVIDIA/Cosmos cosmos1/models/tokenizer/modules/layers3d.py and
cosmos1/models/autoregressive/tokenizer/discrete_video.py; huggingface/diffusers
scripts/convert_cosmos_to_diffusers.py (VAE_KEYS_RENAME_DICT, VAE_SPECIAL_KEYS_REMAP) and
src/diffusers/models/autoencoders/autoencoder_kl_cosmos.py (0.42.1). The diffusers table has
no rule for per-level attention (`down.{i}.attn.{j}`): released configs have none, but the
rule above follows the original ModuleList structure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from videomar_jax.errors import UserError


class CosmosKeyError(UserError):
  """Keys that cannot be mapped; `.keys` lists every one of them."""

  def __init__(self, direction: str, problems: list[str]):
    self.keys = problems
    super().__init__(f"{len(problems)} Cosmos tokenizer key(s) cannot be mapped {direction}:\n  "
                     + "\n  ".join(problems))


# Registered buffers, not weights; matched after prefix stripping and dropped.
_BUFFER_PATTERNS = (
    # Original Patcher3D / UnPatcher3D: Haar filter taps, their index, the patch size.
    re.compile(r"(encoder\.patcher3d|decoder\.unpatcher3d)\.(wavelets|_arange|patch_size_buffer)"),
    # Same buffers in the 2D Patcher / UnPatcher naming, should a dict use it.
    re.compile(r"(encoder\.patcher|decoder\.unpatcher)\.(wavelets|_arange|patch_size_buffer)"),
    # diffusers' CosmosPatchEmbed3d / CosmosUnpatcher3d (non-persistent; seen via named_buffers).
    re.compile(r"(encoder\.patch_embed|decoder\.unpatch_embed)\.(wavelets|_arange)"),
)

_GROUPS = {"i": r"\d+", "j": r"\d+", "k": "[123]", "p": "weight|bias", "c": "encoder|decoder",
           "qkv": "q|k|v", "s": "[01]", "n": "[12]"}

# (original module, diffusers module, kind); `up` marks decoder levels, whose index flips.
_MODULES = (
    ("quant_conv", "quant_conv", "conv"),
    ("post_quant_conv", "post_quant_conv", "conv"),
    ("{c}.conv_in", "{c}.conv_in", "factorized"),
    ("{c}.conv_out", "{c}.conv_out", "factorized"),
    ("{c}.norm_out", "{c}.norm_out", "norm"),
    ("{c}.mid.block_1", "{c}.mid_block.resnets.0", "resnet"),
    ("{c}.mid.block_2", "{c}.mid_block.resnets.1", "resnet"),
    ("{c}.mid.attn_1.0", "{c}.mid_block.attentions.0", "attn"),
    ("{c}.mid.attn_1.1", "{c}.mid_block.temp_attentions.0", "attn"),
    ("encoder.down.{i}.block.{j}", "encoder.down_blocks.{i}.resnets.{j}", "resnet"),
    ("encoder.down.{i}.attn.{j}.0", "encoder.down_blocks.{i}.attentions.{j}", "attn"),
    ("encoder.down.{i}.attn.{j}.1", "encoder.down_blocks.{i}.temp_attentions.{j}", "attn"),
    ("encoder.down.{i}.downsample", "encoder.down_blocks.{i}.downsamplers.0", "resample"),
    ("decoder.up.{i}.block.{j}", "decoder.up_blocks.{i}.resnets.{j}", "resnet", "up"),
    ("decoder.up.{i}.attn.{j}.0", "decoder.up_blocks.{i}.attentions.{j}", "attn", "up"),
    ("decoder.up.{i}.attn.{j}.1", "decoder.up_blocks.{i}.temp_attentions.{j}", "attn", "up"),
    ("decoder.up.{i}.upsample", "decoder.up_blocks.{i}.upsamplers.0", "resample", "up"),
)

# Leaf tensors of each module kind: (original, diffusers, rank of the tensor).
_LEAVES = {
    "conv": (("conv3d.weight", "weight", 5), ("conv3d.bias", "bias", 1)),
    "norm": (("norm.{p}", "norm.{p}", 1),),
    # nn.Sequential(spatial (1,3,3) conv, temporal (3,1,1) conv) -> conv_s, conv_t.
    "factorized": (("0.conv3d.weight", "conv_s.weight", 5), ("0.conv3d.bias", "conv_s.bias", 1),
                   ("1.conv3d.weight", "conv_t.weight", 5), ("1.conv3d.bias", "conv_t.bias", 1)),
    "resnet": (("norm{n}.norm.{p}", "norm{n}.norm.{p}", 1),
               ("conv{n}.0.conv3d.weight", "conv{n}.conv_s.weight", 5),
               ("conv{n}.0.conv3d.bias", "conv{n}.conv_s.bias", 1),
               ("conv{n}.1.conv3d.weight", "conv{n}.conv_t.weight", 5),
               ("conv{n}.1.conv3d.bias", "conv{n}.conv_t.bias", 1),
               ("nin_shortcut.conv3d.weight", "conv_shortcut.weight", 5),
               ("nin_shortcut.conv3d.bias", "conv_shortcut.bias", 1)),
    "attn": (("norm.norm.{p}", "norm.norm.{p}", 1),
             ("{qkv}.conv3d.weight", "to_{qkv}.weight", 5),
             ("{qkv}.conv3d.bias", "to_{qkv}.bias", 1),
             ("proj_out.conv3d.weight", "to_out.0.weight", 5),
             ("proj_out.conv3d.bias", "to_out.0.bias", 1)),
    "resample": (("conv{k}.conv3d.weight", "conv{k}.weight", 5),
                 ("conv{k}.conv3d.bias", "conv{k}.bias", 1)),
}


def _regex(template: str) -> re.Pattern:
  parts = re.split(r"\{(\w+)\}", template)
  out = []
  for n, part in enumerate(parts):
    out.append(f"(?P<{part}>{_GROUPS[part]})" if n % 2 else re.escape(part))
  return re.compile("".join(out))


class _Rule:
  def __init__(self, original: str, diffusers: str, rank: int, up: bool):
    self.templates = {"original": original, "diffusers": diffusers}
    self.patterns = {side: _regex(t) for side, t in self.templates.items()}
    self.rank = rank
    self.up = up


_RULES = tuple(
    _Rule(f"{m[0]}.{leaf[0]}", f"{m[1]}.{leaf[1]}", leaf[2], len(m) > 3)
    for m in _MODULES for leaf in _LEAVES[m[2]])

_LEVEL = {"original": re.compile(r"decoder\.up\.(\d+)\."),
          "diffusers": re.compile(r"decoder\.up_blocks\.(\d+)\.")}
_RESAMPLER_CONV = re.compile(
    r"(encoder\.down_blocks\.\d+\.downsamplers|decoder\.up_blocks\.\d+\.upsamplers)"
    r"\.0\.conv[123]\.")


def _strip(key: str) -> str:
  """Drops DataParallel's leading `module.` and torch.compile's `_orig_mod.` anywhere."""
  parts = key.split(".")
  while parts and parts[0] == "module":
    parts = parts[1:]
  return ".".join(p for p in parts if p != "_orig_mod")


def _is_buffer(key: str) -> bool:
  return any(p.fullmatch(key) for p in _BUFFER_PATTERNS)


def _num_levels(keys: Iterable[str], side: str) -> int | None:
  levels = [int(m.group(1)) for k in keys if (m := _LEVEL[side].match(k))]
  return max(levels) + 1 if levels else None


def _convert(state_dict: Mapping[str, Any], src: str, dst: str,
             num_up_blocks: int | None) -> dict[str, Any]:
  stripped: dict[str, Any] = {}
  problems: list[str] = []
  for key, value in state_dict.items():
    name = _strip(key)
    if _is_buffer(name):
      continue
    if name in stripped:
      problems.append(f"{key} (duplicates another key once prefixes are stripped)")
      continue
    stripped[name] = value
  n_up = num_up_blocks if num_up_blocks is not None else _num_levels(stripped, src)

  out: dict[str, Any] = {}
  for name, value in stripped.items():
    rule = match = None
    for rule in _RULES:
      if match := rule.patterns[src].fullmatch(name):
        break
    if match is None:
      problems.append(name)
      continue
    groups = match.groupdict()
    if rule.up:
      flipped = n_up - 1 - int(groups["i"])
      if flipped < 0:
        problems.append(f"{name} (decoder level outside num_up_blocks={n_up})")
        continue
      groups["i"] = str(flipped)
    ndim = getattr(value, "ndim", None)
    if ndim is not None and ndim != rule.rank:
      problems.append(f"{name} (rank {ndim}, expected {rule.rank})")
      continue
    new = rule.templates[dst].format(**groups)
    if new in out:
      problems.append(f"{name} (maps onto {new} twice)")
      continue
    out[new] = value
  if problems:
    raise CosmosKeyError(f"{src} -> {dst}", problems)
  return out


def original_to_diffusers(state_dict: Mapping[str, np.ndarray], *,
                          expected_keys: Iterable[str] | None = None,
                          num_up_blocks: int | None = None) -> dict[str, np.ndarray]:
  """Original Cosmos-Tokenizer state dict (full, encoder.jit or decoder.jit) -> diffusers.

  Strips `module.` / `_orig_mod.`, drops buffers, renames every weight (values untouched)
  and raises one `CosmosKeyError` naming every key it cannot map. `expected_keys` (e.g.
  `AutoencoderKLCosmos(...).state_dict().keys()`) drops down/upsampler convs that the target
  lacks: weights the unconditional Cosmos-Tokenizer layout creates but never runs.
  `num_up_blocks` overrides the decoder level count read from the keys (only needed for a
  partial decoder dict).
  """
  out = _convert(state_dict, "original", "diffusers", num_up_blocks)
  if expected_keys is not None:
    expected = set(expected_keys)
    out = {k: v for k, v in out.items() if k in expected or not _RESAMPLER_CONV.match(k)}
  return out


def diffusers_to_original(state_dict: Mapping[str, np.ndarray], *,
                          num_up_blocks: int | None = None) -> dict[str, np.ndarray]:
  """The exact inverse of `original_to_diffusers`: diffusers `AutoencoderKLCosmos` -> the
  original Cosmos-Tokenizer names (conditional resampler layout, no buffers)."""
  return _convert(state_dict, "diffusers", "original", num_up_blocks)


def is_original_layout(keys: Iterable[str]) -> bool:
  """True when the keys use the original Cosmos-Tokenizer names (`...conv3d.weight`,
  `encoder.down.`, `mid.block_1` ...) rather than diffusers' (`conv_s`, `down_blocks` ...)."""
  for key in keys:
    name = _strip(key)
    if (name.endswith((".conv3d.weight", ".conv3d.bias"))
        or re.match(r"(encoder\.down|decoder\.up|(encoder|decoder)\.mid)\.", name)
        or re.match(r"(encoder\.patcher3d|decoder\.unpatcher3d)\.", name)):
      return True
  return False
