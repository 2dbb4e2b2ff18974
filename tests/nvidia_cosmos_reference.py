"""A PyTorch reference of NVIDIA's original Cosmos continuous video tokenizer network, for
the tests: the module tree and forward pass of NVIDIA/Cosmos-Tokenizer's
`CausalContinuousVideoTokenizer` with `EncoderFactorized` / `DecoderFactorized`
(cosmos_tokenizer/networks/continuous_video.py, modules/layers3d.py, modules/patching.py,
modules/utils.py), written here from reading that code, not copied.

What matters for the converter is reproduced exactly: the parameter names, every hybrid
resampler owning conv1/conv2/conv3 whether or not its spatial / temporal step runs, the
`legacy_mode` placement of the decoder's temporal up-sampling, causal padding, per-frame
GroupNorm, the factorised convolutions and the Haar patching. Widths are given per level
(`encoder_widths` = channels then each level's output; `decoder_widths` as diffusers'
`decode_block_out_channels`) so that narrow test networks keep NVIDIA's structure.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

_HAAR = 0.5 ** 0.5


class CausalConv3d(nn.Module):
  """Replicates the first frame in front (time_pad = dilation*(kt-1) + 1 - time_stride),
  zero-pads height and width by `padding`, then an nn.Conv3d named `conv3d`."""

  def __init__(self, cin, cout, kernel=3, stride=1, time_stride=1, padding=1):
    super().__init__()
    kernel = kernel if isinstance(kernel, tuple) else (kernel,) * 3
    self.time_pad = kernel[0] - 1 + 1 - time_stride
    self.padding = padding
    self.conv3d = nn.Conv3d(cin, cout, kernel, stride=(time_stride, stride, stride))

  def forward(self, x):
    x = torch.cat([x[:, :, :1].repeat(1, 1, self.time_pad, 1, 1), x], dim=2)
    p = self.padding
    return self.conv3d(F.pad(x, (p, p, p, p, 0, 0)))


class CausalNormalize(nn.Module):
  """GroupNorm with one group over each frame on its own (`norm`)."""

  def __init__(self, channels):
    super().__init__()
    self.norm = nn.GroupNorm(1, channels, eps=1e-6, affine=True)

  def forward(self, x):
    b, c, t, h, w = x.shape
    y = self.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def silu(x):
  return x * torch.sigmoid(x)


def factorized(cin, cout):
  return nn.Sequential(CausalConv3d(cin, cout, (1, 3, 3), padding=1),
                       CausalConv3d(cout, cout, (3, 1, 1), padding=0))


class ResnetBlock(nn.Module):  # CausalResnetBlockFactorized3d
  def __init__(self, cin, cout):
    super().__init__()
    self.norm1 = CausalNormalize(cin)
    self.conv1 = factorized(cin, cout)
    self.norm2 = CausalNormalize(cout)
    self.conv2 = factorized(cout, cout)
    self.nin_shortcut = (CausalConv3d(cin, cout, 1, padding=0) if cin != cout
                         else nn.Identity())

  def forward(self, x):
    h = self.conv1(silu(self.norm1(x)))
    h = self.conv2(silu(self.norm2(h)))
    return self.nin_shortcut(x) + h


class _Attention(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.norm = CausalNormalize(c)
    self.q, self.k, self.v, self.proj_out = (CausalConv3d(c, c, 1, padding=0) for _ in range(4))

  def forward(self, x):
    h = self.norm(x)
    q, k, v = self.q(h), self.k(h), self.v(h)
    return x + self.proj_out(self.attend(q, k, v))


class SpatialAttention(_Attention):  # CausalAttnBlock: within each frame
  def attend(self, q, k, v):
    b, c, t, h, w = q.shape
    flat = lambda a: a.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
    weights = torch.softmax(flat(q) @ flat(k).transpose(1, 2) * c ** -0.5, dim=-1)
    out = weights @ flat(v)
    return out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)


class TemporalAttention(_Attention):  # CausalTemporalAttnBlock: along time, causal
  def attend(self, q, k, v):
    b, c, t, h, w = q.shape
    flat = lambda a: a.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)
    scores = flat(q) @ flat(k).transpose(1, 2) * c ** -0.5
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    out = weights @ flat(v)
    return out.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)


def attention(c):
  return nn.Sequential(SpatialAttention(c), TemporalAttention(c))


class HybridDownsample(nn.Module):  # CausalHybridDownsample3d: all three convs, always
  def __init__(self, c, spatial, temporal):
    super().__init__()
    self.conv1 = CausalConv3d(c, c, (1, 3, 3), stride=2, padding=0)
    self.conv2 = CausalConv3d(c, c, (3, 1, 1), time_stride=2, padding=0)
    self.conv3 = CausalConv3d(c, c, 1, padding=0)
    self.spatial, self.temporal = spatial, temporal

  def forward(self, x):
    if not (self.spatial or self.temporal):
      return x
    if self.spatial:
      x = F.pad(x, (0, 1, 0, 1, 0, 0))
      x = self.conv1(x) + F.avg_pool3d(x, (1, 2, 2), (1, 2, 2))
    if self.temporal:
      x = torch.cat([x[:, :, :1], x], dim=2)
      x = self.conv2(x) + F.avg_pool3d(x, (2, 1, 1), (2, 1, 1))
    return self.conv3(x)


class HybridUpsample(nn.Module):  # CausalHybridUpsample3d: all three convs, always
  def __init__(self, c, spatial, temporal):
    super().__init__()
    self.conv1 = CausalConv3d(c, c, (3, 1, 1), padding=0)
    self.conv2 = CausalConv3d(c, c, (1, 3, 3), padding=1)
    self.conv3 = CausalConv3d(c, c, 1, padding=0)
    self.spatial, self.temporal = spatial, temporal

  def forward(self, x):
    if not (self.spatial or self.temporal):
      return x
    if self.temporal:
      factor = 2 if x.shape[2] > 1 else 1
      x = x.repeat_interleave(factor, dim=2)[:, :, factor - 1:]
      x = self.conv1(x) + x
    if self.spatial:
      x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
      x = self.conv2(x) + x
    return self.conv3(x)


def _haar_split(x, dim):
  """One 2-tap Haar analysis along `dim`: (low, high) of each non-overlapping pair."""
  pairs = x.unflatten(dim, (x.shape[dim] // 2, 2))
  a, b = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
  return _HAAR * (a + b), _HAAR * (a - b)


def _haar_merge(low, high, dim):
  a, b = _HAAR * (low + high), _HAAR * (low - high)
  return torch.stack([a, b], dim=dim + 1).flatten(dim, dim + 1)


class Patcher3D(nn.Module):
  """Haar patching: the first frame repeated patch_size times, then log2(patch_size)
  rounds of a (time, height, width) wavelet step; sub-bands lead the channel axis."""

  def __init__(self, patch_size):
    super().__init__()
    self.rounds = int(math.log2(patch_size))
    self.patch_size = patch_size

  def forward(self, x):
    x = torch.cat([x[:, :, :1].repeat_interleave(self.patch_size, dim=2), x[:, :, 1:]], dim=2)
    for _ in range(self.rounds):
      bands = [x]
      for dim in (2, 3, 4):  # time, height, width; low before high at each
        bands = [part for band in bands for part in _haar_split(band, dim)]
      x = torch.cat(bands, dim=1) / (2 * 2 ** 0.5)
    return x


class UnPatcher3D(nn.Module):
  def __init__(self, patch_size):
    super().__init__()
    self.rounds = int(math.log2(patch_size))
    self.patch_size = patch_size

  def forward(self, x):
    for _ in range(self.rounds):
      bands = list(torch.chunk(x * (2 * 2 ** 0.5), 8, dim=1))
      for dim in (4, 3, 2):  # undo width, then height, then time
        bands = [_haar_merge(bands[i], bands[i + 1], dim) for i in range(0, len(bands), 2)]
      x = bands[0]
    return x[:, :, self.patch_size - 1:]


class _Level(nn.Module):  # NVIDIA's bare nn.Module holding `block`, `attn` and a sampler
  pass


class EncoderFactorized(nn.Module):
  def __init__(self, in_channels, widths, num_res_blocks, attn_resolutions, resolution,
               z_channels, spatial_compression, temporal_compression, patch_size):
    super().__init__()
    self.patcher3d = Patcher3D(patch_size)
    num_levels = len(widths) - 1
    spatial_downs = int(math.log2(spatial_compression)) - int(math.log2(patch_size))
    temporal_downs = int(math.log2(temporal_compression)) - int(math.log2(patch_size))
    self.conv_in = factorized(in_channels * patch_size ** 3, widths[0])
    res = resolution // patch_size
    self.down = nn.ModuleList()
    for i in range(num_levels):
      level, block_in = _Level(), widths[i]
      level.block, level.attn = nn.ModuleList(), nn.ModuleList()
      for _ in range(num_res_blocks):
        level.block.append(ResnetBlock(block_in, widths[i + 1]))
        block_in = widths[i + 1]
        if res in attn_resolutions:
          level.attn.append(attention(block_in))
      if i != num_levels - 1:
        level.downsample = HybridDownsample(block_in, spatial=i < spatial_downs,
                                            temporal=i < temporal_downs)
        res //= 2
      self.down.append(level)
    c = widths[-1]
    self.mid = _Level()
    self.mid.block_1, self.mid.attn_1, self.mid.block_2 = (
        ResnetBlock(c, c), attention(c), ResnetBlock(c, c))
    self.norm_out = CausalNormalize(c)
    self.conv_out = factorized(c, z_channels)

  def forward(self, x):
    h = self.conv_in(self.patcher3d(x))
    for level in self.down:
      for j, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
          h = level.attn[j](h)
      if hasattr(level, "downsample"):
        h = level.downsample(h)
    h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
    return self.conv_out(silu(self.norm_out(h)))


class DecoderFactorized(nn.Module):
  def __init__(self, out_channels, widths, num_res_blocks, attn_resolutions, resolution,
               z_channels, spatial_compression, temporal_compression, patch_size,
               legacy_mode=False):
    super().__init__()
    num_levels = len(widths) - 1
    spatial_ups = int(math.log2(spatial_compression)) - int(math.log2(patch_size))
    temporal_ups = int(math.log2(temporal_compression)) - int(math.log2(patch_size))
    block_in = widths[-1]
    res = (resolution // patch_size) // 2 ** (num_levels - 1)
    self.conv_in = factorized(z_channels, block_in)
    self.mid = _Level()
    self.mid.block_1, self.mid.attn_1, self.mid.block_2 = (
        ResnetBlock(block_in, block_in), attention(block_in), ResnetBlock(block_in, block_in))
    self.up = nn.ModuleList()
    for i in reversed(range(num_levels)):  # built last level first, indexed by level
      level = _Level()
      level.block, level.attn = nn.ModuleList(), nn.ModuleList()
      for _ in range(num_res_blocks + 1):
        level.block.append(ResnetBlock(block_in, widths[i]))
        block_in = widths[i]
        if res in attn_resolutions:
          level.attn.append(attention(block_in))
      if i != 0:
        order = num_levels - i - 1  # 0 = the first level to run
        temporal = order < temporal_ups if legacy_mode else 0 < order < temporal_ups + 1
        spatial = temporal or (order < spatial_ups and spatial_ups > temporal_ups)
        level.upsample = HybridUpsample(block_in, spatial=spatial, temporal=temporal)
        res *= 2
      self.up.insert(0, level)
    self.norm_out = CausalNormalize(block_in)
    self.conv_out = factorized(block_in, out_channels * patch_size ** 3)
    self.unpatcher3d = UnPatcher3D(patch_size)

  def forward(self, z):
    h = self.conv_in(z)
    h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
    for level in reversed(self.up):
      for j, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
          h = level.attn[j](h)
      if hasattr(level, "upsample"):
        h = level.upsample(h)
    return self.unpatcher3d(self.conv_out(silu(self.norm_out(h))))


class CausalContinuousVideoTokenizer(nn.Module):
  """NVIDIA's autoencoder (AE formulation: the latent is quant_conv's output)."""

  def __init__(self, config):
    """`config`: a `videomar_jax.tokenizers.cosmos.CosmosConfig` giving the sizes."""
    super().__init__()
    shared = dict(num_res_blocks=config.num_layers,
                  attn_resolutions=tuple(config.attention_resolutions),
                  resolution=config.resolution, z_channels=config.latent_channels,
                  spatial_compression=config.spatial_compression_ratio,
                  temporal_compression=config.temporal_compression_ratio,
                  patch_size=config.patch_size)
    self.encoder = EncoderFactorized(config.in_channels, config.encoder_block_out_channels,
                                     **shared)
    self.decoder = DecoderFactorized(config.out_channels, config.decode_block_out_channels,
                                     legacy_mode=config.legacy_mode, **shared)
    c = config.latent_channels
    self.quant_conv = CausalConv3d(c, c, 1, padding=0)
    self.post_quant_conv = CausalConv3d(c, c, 1, padding=0)

  def encode(self, x):
    return self.quant_conv(self.encoder(x))

  def decode(self, z):
    return self.decoder(self.post_quant_conv(z))
