"""Layers of the Cosmos causal video tokenizer, channels-last ``[B, T, H, W, C]``.

Each module mirrors one of diffusers' ``autoencoder_kl_cosmos.py`` classes, with the same
submodule names (a torch ``ModuleList`` entry ``resnets.0`` is the submodule
``resnets_0`` here), so that ``tokenizers.cosmos.convert`` maps weights by name. Numerics
follow diffusers exactly:

* **Causal convolution** (``CosmosCausalConv3d``): the first frame is repeated
  ``(kT - 1) + (1 - sT)`` times in front (never zeros, never future frames); height and
  width are zero-padded by ``padding`` on both sides.
* **GroupNorm** (``CosmosCausalGroupNorm`` with one group, the only case the network
  uses): statistics over ``(H, W, C)`` of each frame separately -- per-frame layer norm
  with per-channel affine, eps 1e-6 -- so no statistic mixes frames.
* **Attention**: single head over all channels, scale ``1/sqrt(C)``; spatial attention
  attends within each frame, temporal attention along time at each pixel with a causal
  (lower-triangular) mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "CausalConv3d",
    "CausalGroupNorm",
    "ConvProjection3d",
    "ResnetBlock3d",
    "Downsample3d",
    "Upsample3d",
    "SpatialAttention",
    "TemporalAttention",
    "DownBlock3d",
    "MidBlock3d",
    "UpBlock3d",
]

Dtype = Any


def _torch_uniform(fan_in: int):
  """torch's default Conv3d init for weights and biases: U(-1/sqrt(fan_in), +1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _frames(x: jax.Array, index: Sequence[int]) -> jax.Array:
  """``x[:, index]`` for a static ``index``, as slices (runs of consecutive frames)."""
  if list(index) == list(range(x.shape[1])):
    return x
  pieces, start = [], 0
  while start < len(index):  # group runs i, i+1, ... (or repeats of one frame) into slices
    end = start + 1
    while end < len(index) and index[end] == index[end - 1] + 1:
      end += 1
    pieces.append(x[:, index[start]:index[end - 1] + 1])
    start = end
  return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1)


def _temporal_conv(x: jax.Array, kernel: jax.Array, stride: int, time_pad: int,
                   frames: Sequence[int] | None) -> jax.Array:
  """A causal ``(kT, 1, 1)`` conv of ``x[:, frames]`` as one matmul and shifted adds.

  Every input frame is multiplied by all ``kT`` taps at once (``[..., C] @ [C, kT*O]``,
  one large GEMM), then output frame ``j`` adds tap ``i``'s product of input frame
  ``j*stride + i - time_pad``; an index below zero reads frame 0, which is exactly the
  replicated-first-frame padding, so nothing is padded or copied before the matmul.
  ``frames`` (default: all) lets a caller convolve a frame-repeated input (the temporal
  up-sampler) without materialising it: the matmul runs on the distinct frames only.
  """
  kt, _, _, c, o = kernel.shape
  num_in = x.shape[1] if frames is None else len(frames)
  frames = list(range(x.shape[1])) if frames is None else list(frames)
  num_out = (num_in + time_pad - kt) // stride + 1
  taps = jnp.einsum("bthwi,io->bthwo", x, kernel.reshape(kt, c, o).transpose(1, 0, 2)
                    .reshape(c, kt * o))
  out = None
  for i in range(kt):
    index = [frames[max(j * stride + i - time_pad, 0)] for j in range(num_out)]
    term = _frames(taps[..., i * o:(i + 1) * o], index)
    out = term if out is None else out + term
  return out


def _winograd_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A ``3x3`` conv, stride 1, zero padding 1, by Winograd's F(2x2, 3x3) algorithm:
  ``[N, H, W, C] -> [N, H, W, O]`` with 16 instead of 36 multiplies per 2x2 output tile.

  Each 4x4 input tile ``d`` and the kernel ``g`` are transformed (``B^T d B`` and
  ``G g G^T``, additions and halvings only), multiplied in 16 batched GEMMs over the
  channels, and transformed back (``A^T m A``). Float32 results differ from a direct conv
  by about 1e-6 relative (the transforms are exact up to rounding of a few additions).
  """
  n, h, w, c = x.shape
  o = kernel.shape[-1]
  th, tw = (h + 1) // 2, (w + 1) // 2  # output tiles; odd sizes padded, cropped at the end
  xp = jnp.pad(x, ((0, 0), (1, 1 + h % 2), (1, 1 + w % 2), (0, 0)))

  def input_transform(z, axis, tiles):  # rows of B^T: d0-d2, d1+d2, d2-d1, d1-d3
    d = [jax.lax.slice_in_dim(z, u, u + 2 * tiles - 1, 2, axis) for u in range(4)]
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]

  def kernel_transform(k, axis):  # rows of G: g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2
    g0, g1, g2 = (jnp.take(k, i, axis) for i in range(3))
    return [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2]

  v = jnp.stack([col for row in input_transform(xp, 1, th) for col in
                 input_transform(row, 2, tw)]).reshape(16, n * th * tw, c)
  u = jnp.stack([col for row in kernel_transform(kernel, 0) for col in
                 kernel_transform(row, 0)])  # [16, C, O]
  m = jnp.einsum("kpc,kco->kpo", v, u).reshape(4, 4, n, th, tw, o)

  def output_transform(m0, m1, m2, m3):  # rows of A^T: m0+m1+m2, m1-m2-m3
    return m0 + m1 + m2, m1 - m2 - m3

  rows = output_transform(*(m[i] for i in range(4)))  # 2 x [4, N, th, tw, O]
  y = jnp.stack([jnp.stack(output_transform(*(r[j] for j in range(4))), axis=3)
                 for r in rows], axis=2)  # [N, th, 2, tw, 2, O]
  return y.reshape(n, 2 * th, 2 * tw, o)[:, :h, :w]


def _use_winograd(conv3x3: str) -> bool:
  if conv3x3 not in ("auto", "winograd", "direct"):  # config.CONV3X3_ALGORITHMS
    raise ValueError(f"conv3x3={conv3x3!r}: use 'auto', 'winograd' or 'direct'.")
  if conv3x3 == "auto":
    return jax.default_backend() == "cpu"
  return conv3x3 == "winograd"


def _upsampled_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A ``3x3`` conv (zero padding 1) of ``x`` nearest-upsampled 2x in H and W, computed at
  the low resolution: ``[N, H, W, C]`` -> ``[N, 2H, 2W, O]`` with 16 instead of 36 taps per
  low-resolution pixel.

  Output pixel ``(2i + a, 2j + b)`` reads upsampled rows ``2i + a - 1 .. 2i + a + 1``, i.e.
  low-resolution rows ``i - 1, i`` (a = 0: kernel rows ``0`` and ``1 + 2``) or ``i, i + 1``
  (a = 1: rows ``0 + 1`` and ``2``), likewise for columns; zero padding of the upsampled
  image is zero padding of the low-resolution one. So each of the 4 phases is a ``2x2``
  conv of the padded input, all 4 done as one conv with ``4*O`` outputs.
  """
  n, h, w, c = x.shape
  o = kernel.shape[-1]
  groups = ((0,), (1, 2)), ((0, 1), (2,))  # kernel rows (or columns) summed, per phase

  def fold(k, axis, phase):  # 3 taps -> 2 along `axis`
    return jnp.stack([sum(jnp.take(k, i, axis) for i in g) for g in groups[phase]], axis)

  phases = [fold(fold(kernel, 0, a), 1, b) for a in (0, 1) for b in (0, 1)]  # [2, 2, C, O]
  z = jax.lax.conv_general_dilated(
      x, jnp.concatenate(phases, axis=-1), window_strides=(1, 1), padding=((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [N, H+1, W+1, 4*O]
  y = jnp.stack([jnp.stack([z[:, a:a + h, b:b + w, (2 * a + b) * o:(2 * a + b + 1) * o]
                            for b in (0, 1)], axis=3) for a in (0, 1)], axis=2)
  return y.reshape(n, 2 * h, 2 * w, o)  # [N, H, a, W, b, O] -> [N, 2H, 2W, O]


class CausalConv3d(nn.Module):
  """``CosmosCausalConv3d``: kernel ``[kT, kH, kW, in, out]`` (float32) and bias ``[out]``.

  The factorised kernels the network uses run as cheaper equivalents of a 3D conv (a 3D
  conv is slow on XLA:CPU): ``(1, kH, kW)`` as a 2D conv over the frames merged into the
  batch, ``(kT, 1, 1)`` as one matmul plus shifted adds, ``(1, 1, 1)`` as a matmul.

  Attributes:
    features: output channels.
    kernel_size: ``(kT, kH, kW)``; kH and kW odd.
    strides: ``(sT, sH, sW)``.
    padding: zeros added on both sides of H and W, or ``((top, bottom), (left, right))``.
    dtype: compute dtype.
    conv3x3: how a ``(1, 3, 3)`` stride-1 conv with padding 1 is computed: "winograd",
      "direct" or "auto" (winograd on a CPU; see ``config.CONV3X3_ALGORITHMS``).
  """
  features: int
  kernel_size: tuple[int, int, int] = (1, 1, 1)
  strides: tuple[int, int, int] = (1, 1, 1)
  padding: int | tuple[tuple[int, int], tuple[int, int]] = 0
  dtype: Dtype = jnp.float32
  conv3x3: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, frames: Sequence[int] | None = None,
               upsample_hw: bool = False) -> jax.Array:
    """``frames`` (static, optional): convolve ``x[:, frames]`` instead of ``x``.
    ``upsample_hw``: convolve ``x`` nearest-upsampled 2x in H and W (output ``2H x 2W``),
    for a ``(1, 3, 3)`` kernel with stride 1 and padding 1 only."""
    kt, kh, kw = self.kernel_size
    st, sh, sw = self.strides
    fan_in = x.shape[-1] * kt * kh * kw
    kernel = self.param("kernel", _torch_uniform(fan_in),
                        (kt, kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", _torch_uniform(fan_in), (self.features,), jnp.float32)
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    x = x.astype(self.dtype)
    pad = self.padding
    pad = ((pad, pad), (pad, pad)) if isinstance(pad, int) else tuple(map(tuple, pad))
    time_pad = (kt - 1) + (1 - st)
    if time_pad < 0:
      raise ValueError(f"temporal stride {st} > kernel size {kt} is not causal")

    if kh == kw == 1 and (sh, sw) == (1, 1) and pad == ((0, 0), (0, 0)):
      return _temporal_conv(x, kernel, st, time_pad, frames) + bias
    if upsample_hw and kt != 1:
      raise ValueError("upsample_hw needs a (1, 3, 3) kernel")
    if frames is not None:
      x = _frames(x, frames)
    if kt == 1:  # spatial: frames into the batch, a 2D conv
      b, t, h, w, c = x.shape
      if upsample_hw:
        if (kh, kw, sh, sw) != (3, 3, 1, 1) or pad != ((1, 1), (1, 1)):
          raise ValueError("upsample_hw needs a (1, 3, 3) kernel, stride 1, padding 1")
        y = _upsampled_conv3x3(x.reshape(b * t, h, w, c), kernel[0])
        return y.reshape(b, t, *y.shape[1:]) + bias
      if ((kh, kw, sh, sw) == (3, 3, 1, 1) and pad == ((1, 1), (1, 1))
          and _use_winograd(self.conv3x3)):
        return _winograd_conv3x3(x.reshape(b * t, h, w, c), kernel[0]).reshape(
            b, t, h, w, -1) + bias
      y = jax.lax.conv_general_dilated(
          x.reshape(b * t, h, w, c), kernel[0], window_strides=(sh, sw), padding=pad,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return y.reshape(b, t, *y.shape[1:]) + bias
    if time_pad:
      x = jnp.concatenate([jnp.repeat(x[:, :1], time_pad, axis=1), x], axis=1)
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=self.strides, padding=((0, 0),) + pad,
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return y + bias


class CausalGroupNorm(nn.Module):
  """``CosmosCausalGroupNorm(num_groups=1)``: normalises each frame over ``(H, W, C)``.

  Statistics and the affine transform are computed in float32; params ``scale``/``bias``
  are torch's ``norm.weight``/``norm.bias``.
  """
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=(2, 3, 4), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(2, 3, 4), keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale + bias).astype(self.dtype)


class ConvProjection3d(nn.Module):
  """``CosmosConvProjection3d``: factorised conv, ``(1,3,3)`` spatial then ``(3,1,1)`` causal."""
  features: int
  dtype: Dtype = jnp.float32
  conv3x3: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = CausalConv3d(self.features, (1, 3, 3), padding=1, dtype=self.dtype,
                     conv3x3=self.conv3x3, name="conv_s")(x)
    return CausalConv3d(self.features, (3, 1, 1), dtype=self.dtype, name="conv_t")(x)


class ResnetBlock3d(nn.Module):
  """``CosmosResnetBlock3d``: norm-SiLU-conv twice, plus a 1x1x1 shortcut when widening."""
  features: int
  dtype: Dtype = jnp.float32
  conv3x3: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    if x.shape[-1] != self.features:
      residual = CausalConv3d(self.features, dtype=self.dtype, name="conv_shortcut")(x)
    h = CausalGroupNorm(dtype=self.dtype, name="norm1")(x)
    h = ConvProjection3d(self.features, self.dtype, self.conv3x3, name="conv1")(nn.silu(h))
    h = CausalGroupNorm(dtype=self.dtype, name="norm2")(h)
    h = ConvProjection3d(self.features, self.dtype, self.conv3x3,
                         name="conv2")(nn.silu(h))  # dropout 0
    return h + residual.astype(h.dtype)


def _avg_pool_pairs(x: jax.Array, axes: Sequence[int]) -> jax.Array:
  """Mean over non-overlapping pairs along ``axes`` (each of even length)."""
  shape, reduce = [], []
  for axis, n in enumerate(x.shape):
    if axis in axes:
      shape += [n // 2, 2]
      reduce.append(len(shape) - 1)
    else:
      shape.append(n)
  return jnp.mean(x.reshape(shape), axis=tuple(reduce)).astype(x.dtype)


class Downsample3d(nn.Module):
  """``CosmosDownsample3d``: hybrid 2x down-sampling, strided conv + average pool.

  Spatially: zero-pad bottom/right by one, ``(1,3,3)`` stride-2 conv plus 2x2 average
  pool. Temporally: prepend a copy of the first frame (``T -> T + 1``, even), then a
  causal ``(3,1,1)`` stride-2 conv (which repeats the first frame once more) plus a
  2-frame average pool, giving ``(T + 1) / 2`` frames. Then a 1x1x1 conv.
  """
  spatial: bool
  temporal: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if not (self.spatial or self.temporal):
      return x
    c = x.shape[-1]
    if self.spatial:
      conv = CausalConv3d(c, (1, 3, 3), (1, 2, 2), padding=((0, 1), (0, 1)), dtype=self.dtype,
                          name="conv1")(x)
      # avg_pool3d drops the padded row and column (floor mode), i.e. it pools ``x``.
      x = conv + _avg_pool_pairs(x, (2, 3)).astype(conv.dtype)
    if self.temporal:
      frames = [0] + list(range(x.shape[1]))  # the first frame once more in front
      conv = CausalConv3d(c, (3, 1, 1), (2, 1, 1), dtype=self.dtype, name="conv2")(x, frames)
      x = conv + _avg_pool_pairs(_frames(x, frames), (1,)).astype(conv.dtype)
    return CausalConv3d(c, dtype=self.dtype, name="conv3")(x)


class Upsample3d(nn.Module):
  """``CosmosUpsample3d``: hybrid 2x up-sampling, repetition + residual conv.

  Temporally: every frame repeated twice and the first copy of frame 0 dropped
  (``T -> 2T - 1``, which is also what diffusers does for ``T == 1``), then
  ``x + conv(x)`` with a causal ``(3,1,1)`` conv. Spatially: nearest 2x, then
  ``x + conv(x)`` with a ``(1,3,3)`` conv. Then a 1x1x1 conv.
  """
  spatial: bool
  temporal: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if not (self.spatial or self.temporal):
      return x
    c = x.shape[-1]
    if self.temporal:
      frames = [(t + 1) // 2 for t in range(2 * x.shape[1] - 1)]  # 0, 1, 1, 2, 2, ...
      x = (CausalConv3d(c, (3, 1, 1), dtype=self.dtype, name="conv1")(x, frames)
           + _frames(x, frames).astype(self.dtype))
    if self.spatial:
      conv = CausalConv3d(c, (1, 3, 3), padding=1, dtype=self.dtype, name="conv2")(
          x, upsample_hw=True)
      x = conv + jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3).astype(self.dtype)
    return CausalConv3d(c, dtype=self.dtype, name="conv3")(x)


class _AttentionBase(nn.Module):
  """Norm and 1x1x1 q/k/v/out projections shared by the two attentions (names as torch)."""
  dtype: Dtype = jnp.float32

  def qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    c = x.shape[-1]
    h = CausalGroupNorm(dtype=self.dtype, name="norm")(x)
    return tuple(CausalConv3d(c, dtype=self.dtype, name=name)(h)
                 for name in ("to_q", "to_k", "to_v"))

  def out(self, x: jax.Array, attended: jax.Array) -> jax.Array:
    y = CausalConv3d(x.shape[-1], dtype=self.dtype, name="to_out_0")(attended)  # dropout 0
    return y + x.astype(y.dtype)


class SpatialAttention(_AttentionBase):
  """Single-head self-attention among the ``H*W`` positions of each frame (plus residual)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    q, k, v = (y.reshape(b * t, h * w, 1, c) for y in self.qkv(x))  # frames into the batch
    o = jax.nn.dot_product_attention(q, k, v)
    return self.out(x, o.reshape(b, t, h, w, c))


class TemporalAttention(_AttentionBase):
  """Single-head causal self-attention along time at each pixel (plus residual)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape

    def to_sequences(y: jax.Array) -> jax.Array:  # [B, T, H, W, C] -> [B*H*W, T, 1, C]
      return y.transpose(0, 2, 3, 1, 4).reshape(b * h * w, t, 1, c)

    q, k, v = (to_sequences(y) for y in self.qkv(x))
    o = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.out(x, o.reshape(b, h, w, t, c).transpose(0, 3, 1, 2, 4))


def _resnets_and_attention(block: nn.Module, x: jax.Array) -> jax.Array:
  """The body shared by the down and up blocks, run inside ``block``'s compact scope:
  ``num_layers`` x (resnet [+ spatial + temporal attention]), named as in diffusers."""
  for i in range(block.num_layers):
    x = ResnetBlock3d(block.features, block.dtype, block.conv3x3, name=f"resnets_{i}")(x)
    if block.attention:
      x = SpatialAttention(block.dtype, name=f"attentions_{i}")(x)
      x = TemporalAttention(block.dtype, name=f"temp_attentions_{i}")(x)
  return x


class DownBlock3d(nn.Module):
  """``CosmosDownBlock3d``: ``num_layers`` x (resnet [+ spatial + temporal attention]),
  then the (optional) hybrid down-sampler ``downsamplers_0``."""
  features: int
  num_layers: int
  attention: bool
  spatial: bool
  temporal: bool
  dtype: Dtype = jnp.float32
  conv3x3: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _resnets_and_attention(self, x)
    if self.spatial or self.temporal:
      x = Downsample3d(self.spatial, self.temporal, self.dtype, name="downsamplers_0")(x)
    return x


class MidBlock3d(nn.Module):
  """``CosmosMidBlock3d(num_layers=1)``: resnet, spatial + temporal attention, resnet."""
  dtype: Dtype = jnp.float32
  conv3x3: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = ResnetBlock3d(c, self.dtype, self.conv3x3, name="resnets_0")(x)
    x = SpatialAttention(self.dtype, name="attentions_0")(x)
    x = TemporalAttention(self.dtype, name="temp_attentions_0")(x)
    return ResnetBlock3d(c, self.dtype, self.conv3x3, name="resnets_1")(x)


class UpBlock3d(nn.Module):
  """``CosmosUpBlock3d``: like :class:`DownBlock3d` with an up-sampler ``upsamplers_0``.

  (The decoder passes ``num_layers + 1`` resnets per block.)
  """
  features: int
  num_layers: int
  attention: bool
  spatial: bool
  temporal: bool
  dtype: Dtype = jnp.float32
  conv3x3: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _resnets_and_attention(self, x)
    if self.spatial or self.temporal:
      x = Upsample3d(self.spatial, self.temporal, self.dtype, name="upsamplers_0")(x)
    return x
