"""The Cosmos continuous video tokenizer behind the `Tokenizer` interface.

Built from a tokenizer directory (`tokenizers.store`): `config.tokenizer` names the
variant, the directory and the latent scale::

    config.tokenizer.name = "cosmos"
    config.tokenizer.variant = "CV8x8x8"      # strides and channels the model is sized by
    config.tokenizer.checkpoint = "/path/to/tokenizer_dir"
    config.tokenizer.latent_scale = 0.5       # VideoMAR's scale for Cosmos latents

The weights are held by the tokenizer and enter a jitted step as constants; that is fine
for encoding at sampling time and for small tokenizers. Paper-scale training reads latents
cached once with `videomar data encode` and never runs the encoder in the step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from videomar_jax.tokenizers import store
from videomar_jax.tokenizers.base import Tokenizer
from videomar_jax.tokenizers.cosmos import CosmosAutoencoder, CosmosConfig


class CosmosTokenizer(Tokenizer):
  """Encoder/decoder of a Cosmos network with fixed weights."""

  def __init__(self, network: CosmosConfig, params, latent_scale: float,
               name: str = "cosmos"):
    if not latent_scale:
      raise ValueError(f"latent_scale must be non-zero, got {latent_scale!r}")
    self.network = network
    self.params = jax.tree_util.tree_map(jnp.asarray, params)
    self._latent_scale = float(latent_scale)
    self._model = CosmosAutoencoder(network)
    self._name = name

  @classmethod
  def from_directory(cls, directory: str, latent_scale: float | None = None,
                     dtype: str = "") -> "CosmosTokenizer":
    stored = store.load(directory)
    network = stored.network
    if dtype:
      network = dataclasses.replace(network, dtype=dtype)
    scale = stored.latent_scale if latent_scale is None else latent_scale
    return cls(network, stored.params, scale, name=stored.variant or directory)

  def __repr__(self) -> str:
    return (f"CosmosTokenizer({self._name}, stride {self.temporal_stride}x"
            f"{self.spatial_stride}x{self.spatial_stride}, {self.latent_channels} channels, "
            f"latent_scale={self._latent_scale})")

  @property
  def temporal_stride(self) -> int:
    return self.network.temporal_stride

  @property
  def spatial_stride(self) -> int:
    return self.network.spatial_stride

  @property
  def latent_channels(self) -> int:
    return self.network.latent_channels

  @property
  def latent_scale(self) -> float:
    return self._latent_scale

  def _encode(self, video: jax.Array) -> jax.Array:
    return self._model.apply({"params": self.params}, video,
                             method=CosmosAutoencoder.encode).astype(jnp.float32)

  def _decode(self, latents: jax.Array) -> jax.Array:
    return self._model.apply({"params": self.params}, latents,
                             method=CosmosAutoencoder.decode).astype(jnp.float32)
