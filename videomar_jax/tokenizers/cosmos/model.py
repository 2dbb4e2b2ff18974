"""The Cosmos continuous causal video tokenizer (diffusers' ``AutoencoderKLCosmos``) in Flax.

Video ``[B, F, H, W, C_in]`` (channels-last, float in ``[-1, 1]``) with ``F = 1 + s*k``
(``s`` = temporal stride) and ``H, W`` multiples of the spatial stride ``r`` maps to
latents ``[B, 1 + k, H/r, W/r, latent_channels]`` and back. Causal in time: latent frame
``j`` depends on pixel frames ``0 .. s*j`` only, and decoded pixel frame ``i`` on latent
frames ``0 .. ceil(i / s)`` only.

The latents are what diffusers' ``vae.encode(x).latent_dist.mode()`` returns (the Cosmos
tokenizer is a plain autoencoder: ``latent_dist`` is an ``IdentityDistribution`` around
``quant_conv(encoder(x))``, so ``mode()``, ``sample()`` and ``.parameters`` are the same
tensor), before any ``latents_mean``/``latents_std`` normalisation a pipeline may apply.

Usage::

  model = CosmosAutoencoder(get_variant("CV8x8x8"))
  params = tokenizers.cosmos.convert.convert(paths, model.config)  # or random_params(config)
  z = model.apply({"params": params}, video, method=CosmosAutoencoder.encode)
  video_hat = model.apply({"params": params}, z, method=CosmosAutoencoder.decode)

On TPUs, float32 matmuls and convolutions run at the backend's default precision; wrap
calls in ``jax.default_matmul_precision("highest")`` for bit-faithful float32.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from videomar_jax.tokenizers.cosmos.config import CosmosConfig
from videomar_jax.tokenizers.cosmos.haar import patch3d, unpatch3d
from videomar_jax.tokenizers.cosmos.layers import (CausalConv3d, CausalGroupNorm,
                                                   ConvProjection3d, DownBlock3d,
                                                   MidBlock3d, UpBlock3d)

__all__ = ["CosmosAutoencoder", "CosmosDecoder", "CosmosEncoder", "abstract_params",
           "random_params"]


class CosmosEncoder(nn.Module):
  """``CosmosEncoder3d``: patching, conv, down blocks, middle block, norm, conv."""
  config: CosmosConfig

  @nn.compact
  def __call__(self, video: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    x = patch3d(video.astype(dtype), cfg.patch_size, cfg.patch_type)
    conv3x3 = cfg.conv3x3
    x = ConvProjection3d(cfg.encoder_block_out_channels[0], dtype, conv3x3, name="conv_in")(x)
    for i, stage in enumerate(cfg.encoder_stages()):
      x = DownBlock3d(stage.out_channels, cfg.num_layers, stage.attention, stage.spatial,
                      stage.temporal, dtype, conv3x3, name=f"down_blocks_{i}")(x)
    x = MidBlock3d(dtype, conv3x3, name="mid_block")(x)
    x = nn.silu(CausalGroupNorm(dtype=dtype, name="norm_out")(x))
    return ConvProjection3d(cfg.latent_channels, dtype, conv3x3, name="conv_out")(x)


class CosmosDecoder(nn.Module):
  """``CosmosDecoder3d``: conv, middle block, up blocks, norm, conv, unpatching."""
  config: CosmosConfig

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    stages = cfg.decoder_stages()
    conv3x3 = cfg.conv3x3
    x = ConvProjection3d(stages[0].in_channels, dtype, conv3x3, name="conv_in")(z.astype(dtype))
    x = MidBlock3d(dtype, conv3x3, name="mid_block")(x)
    for i, stage in enumerate(stages):
      x = UpBlock3d(stage.out_channels, cfg.num_layers + 1, stage.attention, stage.spatial,
                    stage.temporal, dtype, conv3x3, name=f"up_blocks_{i}")(x)
    x = nn.silu(CausalGroupNorm(dtype=dtype, name="norm_out")(x))
    x = ConvProjection3d(cfg.out_channels * cfg.patch_size ** 3, dtype, conv3x3,
                         name="conv_out")(x)
    return unpatch3d(x, cfg.patch_size, cfg.patch_type)


class CosmosAutoencoder(nn.Module):
  """``AutoencoderKLCosmos``: ``encode`` (encoder + quant_conv), ``decode`` (post_quant_conv
  + decoder); calling the module encodes and decodes (so ``init`` creates every weight).

  Outputs are in ``config.dtype``; parameters are float32.
  """
  config: CosmosConfig

  def setup(self):
    cfg = self.config
    dtype = cfg.compute_dtype
    self.encoder = CosmosEncoder(cfg)
    self.decoder = CosmosDecoder(cfg)
    self.quant_conv = CausalConv3d(cfg.latent_channels, dtype=dtype)
    self.post_quant_conv = CausalConv3d(cfg.latent_channels, dtype=dtype)

  def _check_video(self, video: jax.Array) -> None:
    cfg = self.config
    if video.ndim != 5 or video.shape[-1] != cfg.in_channels:
      raise ValueError(f"video must have shape [B, F, H, W, {cfg.in_channels}] (channels "
                       f"last), got {tuple(video.shape)}")
    _, frames, height, width, _ = video.shape
    cfg.num_latent_frames(frames)
    cfg.check_frame_size(height, width)

  def encode(self, video: jax.Array) -> jax.Array:
    """``[B, 1 + s*k, H, W, C_in]`` -> raw latents ``[B, 1 + k, H/r, W/r, latent_channels]``."""
    self._check_video(video)
    return self.quant_conv(self.encoder(video))

  def decode(self, latents: jax.Array) -> jax.Array:
    """Raw latents ``[B, T, h, w, latent_channels]`` -> ``[B, 1 + s*(T-1), h*r, w*r, C_out]``."""
    cfg = self.config
    if latents.ndim != 5 or latents.shape[-1] != cfg.latent_channels:
      raise ValueError(f"latents must have shape [B, T, h, w, {cfg.latent_channels}] "
                       f"(channels last), got {tuple(latents.shape)}")
    if min(latents.shape[1:4]) < 1:
      raise ValueError(f"latents need T, h, w >= 1, got {tuple(latents.shape)}")
    return self.decoder(self.post_quant_conv(latents))

  def __call__(self, video: jax.Array) -> jax.Array:
    """Reconstruction ``decode(encode(video))``."""
    return self.decode(self.encode(video))


def abstract_params(config: CosmosConfig) -> dict:
  """Shapes and dtypes of ``CosmosAutoencoder(config)``'s params (nothing allocated)."""
  model = CosmosAutoencoder(config)
  video = jax.ShapeDtypeStruct((1, 1 + config.temporal_stride, config.spatial_stride,
                                config.spatial_stride, config.in_channels), np.float32)
  return jax.eval_shape(lambda v: model.init(jax.random.key(0), v), video)["params"]


def random_params(config: CosmosConfig, seed: int = 0) -> dict:
  """Freshly initialised params drawn with NumPy on the host.

  Same distributions as ``model.init`` (torch's defaults: conv weights and biases
  ``U(+-1/sqrt(fan_in))``, norm scales 1 and biases 0) but without compiling the
  initialiser, which takes tens of seconds on a CPU (one threefry kernel per tensor).
  """
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(abstract_params(config))
  kernels = {path[:-1]: leaf.shape for path, leaf in flat.items() if path[-1] == "kernel"}
  out = {}
  for path, leaf in sorted(flat.items()):
    module = path[:-1]
    if module in kernels:  # a conv: kernel [kT, kH, kW, I, O] and bias [O]
      bound = 1.0 / math.sqrt(math.prod(kernels[module][:-1]))
      value = rng.uniform(-bound, bound, leaf.shape)
    else:  # a norm
      value = np.ones(leaf.shape) if path[-1] == "scale" else np.zeros(leaf.shape)
    out[path] = value.astype(np.float32)
  return traverse_util.unflatten_dict(out)
