"""Video tokenizers (pixels <-> continuous latents) and their factory.

``make_tokenizer(config)`` builds a tokenizer from a ``ml_collections.ConfigDict``-like
object with a ``name`` field and the tokenizer's keyword settings, e.g.::

  config.tokenizer.name = "patch"
  config.tokenizer.patch_size = 4
  config.tokenizer.latent_scale = 1.0
  tokenizer = make_tokenizer(config.tokenizer)

The interface is :class:`~videomar_jax.tokenizers.base.Tokenizer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

import ml_collections

from videomar_jax.errors import ConfigError
from videomar_jax.tokenizers.base import (
    Tokenizer,
    num_latent_frames,
    unit_to_video,
    video_to_unit,
)
from videomar_jax.tokenizers.geometry import TokenizerGeometry, cosmos_geometry, patch_geometry
from videomar_jax.tokenizers.patch import PatchTokenizer

__all__ = [
    "PatchTokenizer",
    "Tokenizer",
    "known_tokenizers",
    "make_tokenizer",
    "model_token_dim",
    "num_latent_frames",
    "register_tokenizer",
    "tokenizer_geometry",
    "unit_to_video",
    "video_to_unit",
]

_MISSING = object()


def _get(config: Any, key: str, default: Any = _MISSING) -> Any:
  """Reads ``key`` from a ConfigDict, attribute-style object or mapping."""
  if isinstance(config, Mapping):
    value = config.get(key, default)
  else:
    value = getattr(config, key, default)
  if value is _MISSING:
    raise ValueError(f"tokenizer config {config!r} has no field {key!r}")
  return value


def _make_patch(config: Any) -> PatchTokenizer:
  return PatchTokenizer(
      patch_size=_get(config, "patch_size"),
      latent_scale=_get(config, "latent_scale", 1.0),
  )


def _make_cosmos(config: Any) -> Tokenizer:
  # pylint: disable=import-outside-toplevel
  from videomar_jax.tokenizers.cosmos_tokenizer import CosmosTokenizer
  directory = _get(config, "checkpoint", "")
  if not directory:
    raise ValueError(
        "config.tokenizer.checkpoint is empty: a 'cosmos' tokenizer needs a tokenizer "
        "directory (write one with `videomar tokenizer convert --torch=...` or "
        "`videomar tokenizer train`).")
  tokenizer = CosmosTokenizer.from_directory(
      directory, latent_scale=_get(config, "latent_scale"), dtype=_get(config, "dtype", ""))
  expected = tokenizer_geometry(config)
  found = (tokenizer.temporal_stride, tokenizer.spatial_stride, tokenizer.latent_channels)
  wanted = (expected.temporal_stride, expected.spatial_stride, expected.latent_channels)
  if found != wanted:
    raise ValueError(
        f"the tokenizer in {directory} has strides {found[0]}x{found[1]}x{found[1]} and "
        f"{found[2]} channels, but config.tokenizer (variant {_get(config, 'variant')!r}, "
        f"latent_channels {wanted[2]}) says {wanted[0]}x{wanted[1]}x{wanted[1]} and "
        f"{wanted[2]}.")
  return tokenizer


@dataclasses.dataclass(frozen=True)
class TokenizerEntry:
  """A registered tokenizer: how to build it, and its shape facts without building it."""
  factory: Callable[[Any], Tokenizer]
  geometry: Callable[[Any], TokenizerGeometry]


# config.name -> entry.
_REGISTRY: dict[str, TokenizerEntry] = {
    "patch": TokenizerEntry(_make_patch, patch_geometry),
    "cosmos": TokenizerEntry(_make_cosmos, cosmos_geometry),
}


def register_tokenizer(name: str, factory: Callable[[Any], Tokenizer],
                       geometry: Callable[[Any], TokenizerGeometry]) -> None:
  """Adds a tokenizer kind to :func:`make_tokenizer` and :func:`tokenizer_geometry`.

  Args:
    name: value of ``config.name`` that selects it.
    factory: ``config -> Tokenizer``.
    geometry: ``config -> TokenizerGeometry`` (strides and latent channels, known without
      building the tokenizer: the model, the FLOP count and ``plan`` size themselves by it).

  Raises:
    ValueError: if ``name`` is already registered.
  """
  if name in _REGISTRY:
    raise ValueError(f"tokenizer {name!r} is already registered")
  _REGISTRY[name] = TokenizerEntry(factory, geometry)


def known_tokenizers() -> list[str]:
  """Names accepted by :func:`make_tokenizer`."""
  return sorted(_REGISTRY)


def _entry(config: Any) -> TokenizerEntry:
  name = _get(config, "name")
  if name not in _REGISTRY:
    raise ConfigError(f"unknown tokenizer {name!r}; known tokenizers: {known_tokenizers()}")
  return _REGISTRY[name]


def tokenizer_geometry(config: Any) -> TokenizerGeometry:
  """Strides and channels of the tokenizer ``config`` selects, without building it."""
  return _entry(config).geometry(config)


def model_token_dim(config: ml_collections.ConfigDict) -> int:
  """Channels of one transformer token of a VideoMAR ``config``: the tokenizer's latent
  channels x ``model.patch_size`` squared."""
  return (tokenizer_geometry(config.tokenizer).latent_channels
          * config.model.patch_size ** 2)


def make_tokenizer(config: Any) -> Tokenizer:
  """Builds the tokenizer selected by ``config.name`` with the config's settings.

  ``'patch'`` -> ``PatchTokenizer(patch_size=config.patch_size,
  latent_scale=config.latent_scale)`` (``latent_scale`` defaults to 1.0).
  ``'cosmos'`` -> ``CosmosTokenizer`` read from the directory ``config.checkpoint``,
  checked against ``config.variant`` and ``config.latent_channels``.

  Raises:
    ValueError: for an unknown name (listing the known ones) or missing fields.
  """
  return _entry(config).factory(config)
