"""Hyper-parameters of the Cosmos continuous causal video tokenizer (``CosmosConfig``).

The fields are those of diffusers' ``AutoencoderKLCosmos`` constructor that shape the
network (same names, same defaults), plus the compute ``dtype``. The stage layout (which
blocks down/up-sample in space or time and which have attention) is derived exactly as
diffusers derives it, so a config built with :meth:`CosmosConfig.from_diffusers` from a
diffusers ``config.json`` describes the same network.

Released variants (NVIDIA Cosmos-0.1/1.0 continuous video tokenizers), all built from
``cosmos_tokenizer/networks/configs.py``'s ``continuous_video`` config -- 128 base
channels, channel multipliers (2, 4, 4), 2 res blocks per level, attention at resolution
32 of 1024 (never reached, so only the middle blocks attend), 4x4x4 Haar patching, 16
latent channels -- with the compression ratios changed. One exception: CV4x8x8's
*decoder* has channel multipliers (2, 4), i.e. one level less (NVIDIA/Cosmos-Tokenizer
commit 6fe8aaf, "correct channel count to match PyTorch model definition with the loaded
JIT state_dicts for CV4x8x8": ``CausalContinuousVideoTokenizer`` sets
``channels_mult = [2, 4]`` for the decoder when ``temporal_compression == 4``); in
diffusers terms ``decode_block_out_channels = (256, 512, 512)``.

=============  ========  =======  ===================================
name           temporal  spatial  frames -> latent frames
=============  ========  =======  ===================================
``CV4x8x8``    4         8        1 + 4k -> 1 + k
``CV8x8x8``    8         8        1 + 8k -> 1 + k
``CV8x16x16``  8         16       1 + 8k -> 1 + k
=============  ========  =======  ===================================

The ``-narrow`` variants keep each one's structure and strides with a few channels so that
they run in well under a second on a CPU (tests, tiny experiments).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp

__all__ = ["CosmosConfig", "Stage", "VARIANTS", "get_variant"]

_DTYPES = ("float32", "bfloat16", "float16")
_PATCH_TYPES = ("haar", "rearrange")
# How the 3x3 spatial convs are computed (the same function either way, up to rounding):
# Winograd's F(2x2, 3x3) is the faster one on XLA:CPU for inference; a direct conv is the
# faster one to differentiate (tokenizer training: 11 s against 19 s to compile, 6.4 against
# 5.0 steps/s) and on accelerators, whose conv kernels are tuned. "auto": winograd on a CPU,
# direct elsewhere.
CONV3X3_ALGORITHMS = ("auto", "winograd", "direct")
# Keys of a diffusers AutoencoderKLCosmos config that do not change the network: latent
# normalisation statistics, the (unused) scaling factor, and diffusers' bookkeeping ("_*").
_DIFFUSERS_NON_NETWORK = ("scaling_factor", "latents_mean", "latents_std")
_TUPLE_FIELDS = ("encoder_block_out_channels", "decode_block_out_channels",
                 "attention_resolutions")


class Stage(NamedTuple):
  """One encoder down block or decoder up block.

  ``spatial`` / ``temporal``: whether the block ends with a 2x down-sampler (encoder) or
  up-sampler (decoder) in that dimension; a block with neither has no (re)sampler weights.
  """
  in_channels: int
  out_channels: int
  attention: bool
  spatial: bool
  temporal: bool


def _is_power_of_two(n: int) -> bool:
  return n >= 1 and (n & (n - 1)) == 0


@dataclasses.dataclass(frozen=True)
class CosmosConfig:
  """Network hyper-parameters; the defaults are diffusers' (= the released CV8x8x8).

  ``dtype`` is the compute dtype ("float32", "bfloat16" or "float16"); parameters are
  always float32.
  """
  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 16
  encoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  decode_block_out_channels: tuple[int, ...] = (256, 512, 512, 512)
  attention_resolutions: tuple[int, ...] = (32,)
  resolution: int = 1024
  num_layers: int = 2
  patch_size: int = 4
  patch_type: str = "haar"
  spatial_compression_ratio: int = 8
  temporal_compression_ratio: int = 8
  # NVIDIA's `legacy_mode` decoder (not in diffusers): temporal up-sampling from the first
  # up block instead of the second. A checkpoint does not show it (NVIDIA's samplers all
  # own the same convs either way), so it must be set for files built with it.
  legacy_mode: bool = False
  dtype: str = "float32"
  conv3x3: str = "auto"  # computation only, as dtype: see CONV3X3_ALGORITHMS

  def __post_init__(self):
    for name in _TUPLE_FIELDS:  # accept lists (JSON) but store hashable tuples
      object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
    problems = []
    if self.dtype not in _DTYPES:
      problems.append(f"dtype={self.dtype!r} is not one of {_DTYPES}")
    if self.conv3x3 not in CONV3X3_ALGORITHMS:
      problems.append(f"conv3x3={self.conv3x3!r} is not one of {CONV3X3_ALGORITHMS}")
    if self.patch_type not in _PATCH_TYPES:
      problems.append(f"patch_type={self.patch_type!r} is not one of {_PATCH_TYPES}")
    if self.patch_type == "haar" and not _is_power_of_two(self.patch_size):
      problems.append(f"haar patching needs a power-of-two patch_size, got {self.patch_size}")
    for name in ("spatial_compression_ratio", "temporal_compression_ratio"):
      ratio = getattr(self, name)
      if not _is_power_of_two(ratio) or ratio < self.patch_size:
        problems.append(f"{name}={ratio} must be a power of two >= patch_size="
                        f"{self.patch_size}")
    for name in ("encoder_block_out_channels", "decode_block_out_channels"):
      channels = getattr(self, name)
      if len(channels) < 2 or min(channels) < 1:
        problems.append(f"{name}={channels} needs at least two positive entries")
    if self.num_layers < 1:
      problems.append(f"num_layers={self.num_layers} must be >= 1")
    if min(self.in_channels, self.out_channels, self.latent_channels) < 1:
      problems.append("in_channels, out_channels and latent_channels must be >= 1")
    if problems:
      raise ValueError("invalid CosmosConfig: " + "; ".join(problems))
    self._check_strides()

  # ---- Strides.
  @property
  def temporal_stride(self) -> int:
    """Pixel frames per latent frame after the first (``F = 1 + stride * (T - 1)``)."""
    return self.temporal_compression_ratio

  @property
  def spatial_stride(self) -> int:
    """Pixels per latent along height and width."""
    return self.spatial_compression_ratio

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @property
  def num_spatial_layers(self) -> int:
    """2x spatial (re)samplers besides the patching (diffusers' ``num_spatial_layers``)."""
    return int(math.log2(self.spatial_compression_ratio)) - int(math.log2(self.patch_size))

  @property
  def num_temporal_layers(self) -> int:
    return int(math.log2(self.temporal_compression_ratio)) - int(math.log2(self.patch_size))

  def encoder_stages(self) -> list[Stage]:
    """The encoder's down blocks, as ``CosmosEncoder3d.__init__`` lays them out."""
    channels = self.encoder_block_out_channels
    resolution = self.resolution // self.patch_size
    stages = []
    for i in range(len(channels) - 1):
      attention = resolution in self.attention_resolutions
      spatial = temporal = False
      if i < len(channels) - 2:  # every block but the last has a (maybe empty) sampler
        spatial = i < self.num_spatial_layers
        temporal = i < self.num_temporal_layers
        resolution //= 2
      stages.append(Stage(channels[i], channels[i + 1], attention, spatial, temporal))
    return stages

  def decoder_stages(self) -> list[Stage]:
    """The decoder's up blocks, as ``CosmosDecoder3d.__init__`` lays them out.

    Temporal up-sampling starts at the second block (``0 < i``), so that the first one
    works at the latent frame rate (``legacy_mode``: at the first); spatial up-sampling
    goes with it, and starts in the first block when there are more spatial than temporal
    layers.
    """
    channels = tuple(reversed(self.decode_block_out_channels))
    resolution = (self.resolution // self.patch_size) // 2 ** (len(channels) - 2)
    ns, nt = self.num_spatial_layers, self.num_temporal_layers
    stages = []
    for i in range(len(channels) - 1):
      attention = resolution in self.attention_resolutions
      spatial = temporal = False
      if i < len(channels) - 2:
        temporal = i < nt if self.legacy_mode else 0 < i < nt + 1
        spatial = temporal or (i < ns and ns > nt)
        resolution *= 2
      stages.append(Stage(channels[i], channels[i + 1], attention, spatial, temporal))
    return stages

  def _check_strides(self) -> None:
    """The encoder must reach the compression ratios and the decoder undo them exactly."""
    enc, dec = self.encoder_stages(), self.decoder_stages()
    counts = {
        "encoder spatial downsamplers": sum(s.spatial for s in enc),
        "encoder temporal downsamplers": sum(s.temporal for s in enc),
        "decoder spatial upsamplers": sum(s.spatial for s in dec),
        "decoder temporal upsamplers": sum(s.temporal for s in dec),
    }
    want = {"spatial": self.num_spatial_layers, "temporal": self.num_temporal_layers}
    bad = [f"{name}: {n} (need {want[name.split()[1]]})" for name, n in counts.items()
           if n != want[name.split()[1]]]
    if bad:
      raise ValueError(
          "invalid CosmosConfig: the blocks cannot realise spatial_compression_ratio="
          f"{self.spatial_compression_ratio}, temporal_compression_ratio="
          f"{self.temporal_compression_ratio} with patch_size={self.patch_size} ("
          + "; ".join(bad) + "); add blocks or change the ratios")

  # ---- Sizes.
  def num_latent_frames(self, num_frames: int) -> int:
    """``1 + (F - 1) / temporal_stride``; ValueError if ``F`` does not fit."""
    s = self.temporal_stride
    if num_frames < 1 or (num_frames - 1) % s:
      valid = ", ".join(str(1 + s * k) for k in range(4))
      raise ValueError(
          f"num_frames={num_frames} does not fit temporal stride {s}: a causal Cosmos "
          f"tokenizer takes 1 + {s}*k frames (valid: {valid}, ...), the first frame being "
          "encoded on its own")
    return 1 + (num_frames - 1) // s

  def check_frame_size(self, height: int, width: int) -> None:
    """ValueError unless height and width are positive multiples of ``spatial_stride``."""
    s = self.spatial_stride
    bad = [f"{name}={n}" for name, n in (("height", height), ("width", width))
           if n < s or n % s]
    if bad:
      raise ValueError(
          f"{' and '.join(bad)} not a positive multiple of the spatial stride {s} "
          f"(valid: {s}, {2 * s}, {3 * s}, ...)")

  # ---- Serialisation.
  def to_dict(self) -> dict[str, Any]:
    """JSON-able dict (tuples as lists); inverse of :meth:`from_dict`."""
    out = dataclasses.asdict(self)
    for name in _TUPLE_FIELDS:
      out[name] = list(out[name])
    return out

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "CosmosConfig":
    """Builds a config from :meth:`to_dict`'s output; unknown keys are a ValueError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f"unknown CosmosConfig keys {unknown}; known: {sorted(names)}")
    return cls(**dict(values))

  @classmethod
  def from_diffusers(cls, config: Mapping[str, Any], dtype: str = "float32") -> "CosmosConfig":
    """From a diffusers ``AutoencoderKLCosmos`` config (``config.json`` or ``model.config``).

    Latent statistics, ``scaling_factor`` and diffusers' ``_*`` bookkeeping keys are
    ignored; any other key that is not a network field is a ValueError naming it.
    Missing keys take diffusers' defaults (which are this class's defaults).
    """
    names = {f.name for f in dataclasses.fields(cls)} - {"dtype", "legacy_mode", "conv3x3"}
    values, unknown = {}, []
    for key, value in dict(config).items():
      if key.startswith("_") or key in _DIFFUSERS_NON_NETWORK:
        continue
      if key in names:
        values[key] = value
      else:
        unknown.append(key)
    if unknown:
      raise ValueError(f"unknown AutoencoderKLCosmos config keys {sorted(unknown)}; "
                       f"network keys: {sorted(names)}")
    return cls(**values, dtype=dtype)

  def to_diffusers(self) -> dict[str, Any]:
    """The network keys of an ``AutoencoderKLCosmos(**...)`` call (no dtype). diffusers
    has no ``legacy_mode``: such a config has no diffusers equivalent (ValueError)."""
    if self.legacy_mode:
      raise ValueError("a legacy_mode Cosmos decoder has no diffusers AutoencoderKLCosmos "
                       "equivalent (diffusers builds only NVIDIA's default layout)")
    out = self.to_dict()
    del out["dtype"], out["legacy_mode"], out["conv3x3"]
    return out


def _released(temporal: int, spatial: int) -> CosmosConfig:
  # The released 4x temporal tokenizer's decoder has one level less (see module docstring).
  decoder = (256, 512, 512) if temporal == 4 else (256, 512, 512, 512)
  return CosmosConfig(decode_block_out_channels=decoder, spatial_compression_ratio=spatial,
                      temporal_compression_ratio=temporal)


def _narrow(temporal: int, spatial: int) -> CosmosConfig:
  # resolution=32 puts the down/up blocks at nominal resolutions 8, 4, 2 (encoder) and
  # 2, 4, 8 (decoder); attention at 4 gives the middle block of each path attention, with
  # a sampler after it, on top of the middle blocks' attention.
  return CosmosConfig(
      encoder_block_out_channels=(16, 32, 32, 32),
      decode_block_out_channels=(16, 32, 32) if temporal == 4 else (16, 32, 32, 32),
      attention_resolutions=(4,),
      resolution=32,
      num_layers=1,
      spatial_compression_ratio=spatial,
      temporal_compression_ratio=temporal,
  )


VARIANTS: dict[str, CosmosConfig] = {
    "CV4x8x8": _released(4, 8),
    "CV8x8x8": _released(8, 8),
    "CV8x16x16": _released(8, 16),
    "CV4x8x8-narrow": _narrow(4, 8),
    "CV8x8x8-narrow": _narrow(8, 8),
    "CV8x16x16-narrow": _narrow(8, 16),
}


def get_variant(name: str) -> CosmosConfig:
  """The config of a named variant; ValueError listing the known names."""
  if name not in VARIANTS:
    raise ValueError(f"unknown Cosmos variant {name!r}; known: {sorted(VARIANTS)}")
  return VARIANTS[name]
