"""Static shape facts of a configured tokenizer, known without building it.

Used to size the model and count FLOPs (e.g. `videomar info` on the paper config, whose
Cosmos tokenizer need not be loaded to know it gives 16 channels at 8x8x8 compression).
Every registered tokenizer carries one of these functions (`tokenizers.registry`).
"""

import dataclasses
import re

import ml_collections

from videomar_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TokenizerGeometry:
  temporal_stride: int
  spatial_stride: int
  latent_channels: int


def patch_geometry(config: ml_collections.ConfigDict) -> TokenizerGeometry:
  return TokenizerGeometry(1, config.patch_size, 3 * config.patch_size ** 2)


def cosmos_geometry(config: ml_collections.ConfigDict) -> TokenizerGeometry:
  """A Cosmos `CV{t}x{s}x{s}[-suffix]` variant with `config.latent_channels` channels."""
  match = re.fullmatch(r"CV(\d+)x(\d+)x(\d+)(-\w+)?", config.variant)
  if not match or match.group(2) != match.group(3):
    raise ConfigError(f"Cosmos variant {config.variant!r} is not of the form "
                      "CV<t>x<s>x<s>[-suffix].")
  return TokenizerGeometry(int(match.group(1)), int(match.group(2)), config.latent_channels)
