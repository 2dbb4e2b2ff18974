"""PyTorch reference implementation of the VideoMAR network, for checking the JAX model.

This module re-implements, independently of the JAX code and in plain PyTorch, the network
of `videomar_jax/models/` and its loss:

* the Step-Video-T2V transformer block used without a diffusion timestep (a learned
  ``scale_shift_table`` gives the six modulation vectors), with per-head q/k RMSNorm, 3D RoPE on
  the (frame, row, column) index of each token, and optional cross-attention to a class or text
  context;
* MAR's diffusion head (``SimpleMLPAdaLN`` inside a ``DiffLoss``-like wrapper) and the IDDPM
  Gaussian diffusion with MAR's training-loss setting (epsilon prediction, learned-range
  variance, MSE + variational bound).

Parameter names follow the authors' PyTorch modules (Step-Video's ``decoder_blocks.*`` block
layout, MAR's ``diffloss.net.*``), so a state dict converted from the JAX parameters loads with
``load_state_dict(strict=True)`` and every layer's output can be compared
(``reference_forward`` returns them all as numpy arrays).

Everything is float32 on CPU. The code favours being obviously right over being fast: attention
is written out instead of calling a fused kernel, RoPE angles are computed per token from the
given integer positions (no assumed full grid), and no cache or buffer is kept.

Importing this module needs torch; callers guard the import.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
  "RMSNorm",
  "RoPE3D",
  "SelfAttention",
  "CrossAttention",
  "FeedForward",
  "StepVideoBlock",
  "TimestepEmbedder",
  "ResBlock",
  "FinalLayer",
  "SimpleMLPAdaLN",
  "TorchDiffLoss",
  "TorchVideoMAR",
  "TorchGaussianDiffusion",
  "frame_causal_layout",
  "reference_forward",
  "randomize_",
]


# ------------------------------------------------------------------------------------------------
# Transformer pieces (Step-Video-T2V block layout)
# ------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
  """RMSNorm over the last axis with a learned weight, computed in float32 (as Step-Video)."""

  def __init__(self, dim: int, eps: float = 1e-6):
    super().__init__()
    self.eps = eps
    self.weight = nn.Parameter(torch.ones(dim))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
    # Step-Video casts back to the input dtype before applying the weight.
    return normed.to(x.dtype) * self.weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
  """[x1, x2] -> [-x2, x1] over the two halves of the last axis."""
  half = x.shape[-1] // 2
  return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _rope_1d(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
  """Rotate-half RoPE on x [B, S, H, d] with integer positions pos [B, S]."""
  d = x.shape[-1]
  inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))  # [d/2]
  angles = pos.to(torch.float32)[..., None] * inv_freq  # [B, S, d/2]
  angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]  # [B, S, 1, d], broadcast on heads
  return x * angles.cos().to(x.dtype) + _rotate_half(x) * angles.sin().to(x.dtype)


class RoPE3D(nn.Module):
  """Step-Video's RoPE3D: split the head channels into (t, h, w) parts, 1D RoPE on each.

  Part i is rotated by the token's i-th coordinate (frame, row, column). Positions are taken per
  token as given, so any layout (several streams, cached frames, crops) is supported. Holds no
  parameters or buffers.
  """

  def __init__(self, split: Sequence[int], base: float = 10000.0):
    super().__init__()
    self.split = tuple(int(s) for s in split)
    self.base = float(base)
    if len(self.split) != 3 or any(s <= 0 or s % 2 for s in self.split):
      raise ValueError(f"rope_split must be three positive even numbers, got {self.split}")

  def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [B, S, H, hd], positions [B, S, 3] integer (frame, row, col) -> same shape as x."""
    if sum(self.split) != x.shape[-1]:
      raise ValueError(f"rope_split {self.split} does not sum to head_dim {x.shape[-1]}")
    parts = torch.split(x, list(self.split), dim=-1)
    rotated = [_rope_1d(part, positions[..., i], self.base) for i, part in enumerate(parts)]
    return torch.cat(rotated, dim=-1)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: Optional[torch.Tensor]) -> torch.Tensor:
  """Softmax attention, scale hd**-0.5.

  q [B, Sq, H, hd], k/v [B, Sk, H, hd], mask [B, Sq, Sk] bool (True = may attend) or None.
  Written out rather than using a fused kernel so the semantics are explicit: masked logits are
  set to the most negative float32 (as Flax/JAX do), so a fully masked row averages all values
  uniformly instead of producing NaN.
  """
  hd = q.shape[-1]
  logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * (hd ** -0.5)
  if mask is not None:
    logits = logits.masked_fill(~mask[:, None, :, :], torch.finfo(logits.dtype).min)
  probs = torch.softmax(logits, dim=-1)
  return torch.einsum("bhqk,bkhd->bqhd", probs, v)


class SelfAttention(nn.Module):
  """Step-Video self-attention: fused wqkv, q/k RMSNorm, 3D RoPE, attention, wo. No biases."""

  def __init__(self, dim: int, num_heads: int, rope: RoPE3D):
    super().__init__()
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
    self.q_norm = RMSNorm(self.head_dim, eps=1e-6)
    self.k_norm = RMSNorm(self.head_dim, eps=1e-6)
    self.wo = nn.Linear(dim, dim, bias=False)
    self.rope = rope  # shared, parameter-free: adds no state-dict keys

  def forward(self, x: torch.Tensor, positions: torch.Tensor,
              mask: Optional[torch.Tensor]) -> torch.Tensor:
    b, s, _ = x.shape
    # Step-Video's layout: output features are ordered (head, q/k/v, head_dim).
    qkv = self.wqkv(x).view(b, s, self.num_heads, 3 * self.head_dim)
    q, k, v = torch.split(qkv, self.head_dim, dim=-1)
    q, k = self.q_norm(q), self.k_norm(k)  # norm first, then RoPE
    q, k = self.rope(q, positions), self.rope(k, positions)
    out = _attention(q, k, v, mask)
    return self.wo(out.reshape(b, s, -1))


class CrossAttention(nn.Module):
  """Step-Video cross-attention: wq on x, fused wkv on the context, q/k RMSNorm, no RoPE."""

  def __init__(self, dim: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.wq = nn.Linear(dim, dim, bias=False)
    self.wkv = nn.Linear(dim, 2 * dim, bias=False)
    self.q_norm = RMSNorm(self.head_dim, eps=1e-6)
    self.k_norm = RMSNorm(self.head_dim, eps=1e-6)
    self.wo = nn.Linear(dim, dim, bias=False)

  def forward(self, x: torch.Tensor, context: torch.Tensor,
              context_mask: torch.Tensor) -> torch.Tensor:
    """x [B, S, D], context [B, L, D], context_mask [B, L] bool (True = real token)."""
    b, s, _ = x.shape
    l = context.shape[1]
    q = self.wq(x).view(b, s, self.num_heads, self.head_dim)
    kv = self.wkv(context).view(b, l, self.num_heads, 2 * self.head_dim)  # (head, k/v, hd)
    k, v = torch.split(kv, self.head_dim, dim=-1)
    q, k = self.q_norm(q), self.k_norm(k)
    mask = context_mask[:, None, :].expand(b, s, l)
    out = _attention(q, k, v, mask)
    return self.wo(out.reshape(b, s, -1))


class _GeluProj(nn.Module):
  """Linear followed by tanh-approximate GELU (diffusers' GELU module; key ``proj``)."""

  def __init__(self, dim_in: int, dim_out: int):
    super().__init__()
    self.proj = nn.Linear(dim_in, dim_out, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
  """Linear(D, rD) -> GELU(tanh) -> Linear(rD, D), no biases.

  Kept as ``net = [GELU-proj, Identity, Linear]`` so the keys are ``net.0.proj`` and ``net.2``
  as in Step-Video (index 1 is diffusers' dropout slot).
  """

  def __init__(self, dim: int, inner_dim: int):
    super().__init__()
    self.net = nn.ModuleList([_GeluProj(dim, inner_dim), nn.Identity(),
                              nn.Linear(inner_dim, dim, bias=False)])

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for layer in self.net:
      x = layer(x)
    return x


class StepVideoBlock(nn.Module):
  """Step-Video transformer block without a timestep: modulation comes only from the table."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: int, rope: RoPE3D, cross: bool):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-5)
    self.attn1 = SelfAttention(dim, num_heads, rope)
    self.norm2 = nn.LayerNorm(dim, eps=1e-5)
    self.attn2 = CrossAttention(dim, num_heads) if cross else None
    self.ff = FeedForward(dim, mlp_ratio * dim)
    # Rows: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
    self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim ** 0.5)

  def forward(self, x: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor,
              context: Optional[torch.Tensor] = None,
              context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.scale_shift_table
    h = self.norm1(x) * (1 + scale_msa) + shift_msa
    x = x + gate_msa * self.attn1(h, positions, attn_mask)
    if self.attn2 is not None:
      # Step-Video: no norm on the query side and no gate on the cross-attention residual.
      x = x + self.attn2(x, context, context_mask)
    h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
    return x + gate_mlp * self.ff(h)


# ------------------------------------------------------------------------------------------------
# Diffusion head (MAR's SimpleMLPAdaLN)
# ------------------------------------------------------------------------------------------------


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
  return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
  """256-wide sinusoid ([cos, sin], max period 10000) -> Linear -> SiLU -> Linear."""

  def __init__(self, hidden: int, freq_dim: int = 256, max_period: float = 10000.0):
    super().__init__()
    self.freq_dim = freq_dim
    self.max_period = max_period
    self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

  def frequency_embedding(self, t: torch.Tensor) -> torch.Tensor:
    half = self.freq_dim // 2
    freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if self.freq_dim % 2:
      emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb

  def forward(self, t: torch.Tensor) -> torch.Tensor:
    return self.mlp(self.frequency_embedding(t))


class ResBlock(nn.Module):
  """MAR residual block: x + gate * MLP(modulate(LN(x), shift, scale)), adaLN from y."""

  def __init__(self, channels: int):
    super().__init__()
    self.in_ln = nn.LayerNorm(channels, eps=1e-6)
    self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(),
                             nn.Linear(channels, channels))
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels))

  def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
    return x + gate * self.mlp(_modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
  """MAR/DiT final layer: LN (no affine) -> modulate -> Linear."""

  def __init__(self, channels: int, out_channels: int):
    super().__init__()
    self.norm_final = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
    self.linear = nn.Linear(channels, out_channels)
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 2 * channels))

  def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
    return self.linear(_modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
  """MAR's diffusion MLP: predicts [epsilon, variance interpolation] from (x_t, t, z)."""

  def __init__(self, in_channels: int, model_channels: int, out_channels: int, z_channels: int,
               num_res_blocks: int):
    super().__init__()
    self.in_channels = in_channels
    self.time_embed = TimestepEmbedder(model_channels)
    self.cond_embed = nn.Linear(z_channels, model_channels)
    self.input_proj = nn.Linear(in_channels, model_channels)
    self.res_blocks = nn.ModuleList([ResBlock(model_channels) for _ in range(num_res_blocks)])
    self.final_layer = FinalLayer(model_channels, out_channels)
    self._init_weights()

  def _init_weights(self):
    # MAR's init: xavier-uniform Linear, N(0, 0.02) timestep MLP, zero adaLN and final layer.
    for module in self.modules():
      if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
    nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
    zeroed = [block.adaLN_modulation[-1] for block in self.res_blocks]
    zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
    for linear in zeroed:
      nn.init.zeros_(linear.weight)
      nn.init.zeros_(linear.bias)

  def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x [M, C], t [M] (original timestep, int or float), c [M, D] -> [M, 2C]."""
    h = self.input_proj(x)
    y = self.time_embed(t) + self.cond_embed(c)
    for block in self.res_blocks:
      h = block(h, y)
    return self.final_layer(h, y)


class TorchDiffLoss(nn.Module):
  """Holds the head network as ``.net`` so its keys are ``diffloss.net.*`` (as MAR's DiffLoss).

  The diffusion process itself is ``TorchGaussianDiffusion``; it has no parameters.
  """

  def __init__(self, target_channels: int, z_channels: int, width: int, depth: int):
    super().__init__()
    self.net = SimpleMLPAdaLN(in_channels=target_channels, model_channels=width,
                              out_channels=2 * target_channels, z_channels=z_channels,
                              num_res_blocks=depth)

  def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return self.net(x, t, c)


# ------------------------------------------------------------------------------------------------
# The full model
# ------------------------------------------------------------------------------------------------


class TorchVideoMAR(nn.Module):
  """VideoMAR: Step-Video blocks over masked video tokens, 3D RoPE, MAR diffusion head.

  Args:
    token_dim: channels C of one video token.
    width, depth, num_heads, mlp_ratio: transformer size (D = width).
    rope_split: channels of each head given to the (frame, row, col) RoPE; sum = head_dim.
      None or () means (hd/2, hd/4, hd/4).
    rope_base: RoPE base.
    context_kind: "none", "class" (int labels, one context token) or "text" (L feature tokens).
    num_classes / context_dim / context_length: context sizes for "class" / "text".
    head_width, head_depth: SimpleMLPAdaLN width and number of residual blocks.
    pos_embed_size: > 0 adds a learned (row, column) table `pos_embed_learned`
      [size, size, width] to every token after the mask token (an option beyond the
      paper's RoPE-only model); 0 = none.
  """

  def __init__(self, *, token_dim: int, width: int, depth: int, num_heads: int,
               mlp_ratio: int = 4, rope_split: Optional[Sequence[int]] = None,
               rope_base: float = 10000.0, context_kind: str = "none", num_classes: int = 0,
               context_dim: int = 0, context_length: int = 0, head_width: int = 1024,
               head_depth: int = 3, pos_embed_size: int = 0):
    super().__init__()
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    if context_kind not in ("none", "class", "text"):
      raise ValueError(f"unknown context_kind {context_kind!r}")
    head_dim = width // num_heads
    if not rope_split:
      rope_split = (head_dim // 2, head_dim // 4, head_dim // 4)
    if sum(rope_split) != head_dim:
      raise ValueError(f"rope_split {tuple(rope_split)} must sum to head_dim {head_dim}")

    self.token_dim = token_dim
    self.width = width
    self.depth = depth
    self.num_heads = num_heads
    self.context_kind = context_kind
    self.context_length = context_length
    self.rope = RoPE3D(rope_split, rope_base)  # no parameters, so no state-dict keys

    self.z_proj = nn.Linear(token_dim, width)
    self.mask_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
    self.pos_embed_size = pos_embed_size
    if pos_embed_size:
      self.pos_embed_learned = nn.Parameter(
          torch.randn(pos_embed_size, pos_embed_size, width) * 0.02)
    if context_kind == "text":
      if context_dim <= 0 or context_length <= 0:
        raise ValueError("text context needs context_dim > 0 and context_length > 0")
      self.context_embed = nn.Linear(context_dim, width)
      # Learned null context (classifier-free guidance / no caption).
      self.fake_latent = nn.Parameter(torch.randn(1, context_length, width) * 0.02)
    elif context_kind == "class":
      if num_classes <= 0:
        raise ValueError("class context needs num_classes > 0")
      self.class_emb = nn.Embedding(num_classes, width)
      self.fake_latent = nn.Parameter(torch.randn(1, 1, width) * 0.02)

    cross = context_kind != "none"
    self.decoder_blocks = nn.ModuleList(
      [StepVideoBlock(width, num_heads, mlp_ratio, self.rope, cross) for _ in range(depth)])
    self.decoder_norm = nn.LayerNorm(width, eps=1e-6)
    self.diffloss = TorchDiffLoss(token_dim, width, head_width, head_depth)

  # -- context ------------------------------------------------------------------------------------

  def _embed_context(self, batch: int, context, context_mask
                     ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Returns (context [B, L, D], mask [B, L] bool) or (None, None) without a context."""
    if self.context_kind == "none":
      if context is not None:
        raise ValueError("context given but the model was built with context_kind='none'")
      return None, None
    if context is None:
      ctx = self.fake_latent.expand(batch, -1, -1)
      return ctx, torch.ones(ctx.shape[:2], dtype=torch.bool)
    if self.context_kind == "class":
      labels = torch.as_tensor(context).long().reshape(batch)
      ctx = self.class_emb(labels)[:, None, :]
      return ctx, torch.ones(batch, 1, dtype=torch.bool)
    context = torch.as_tensor(context, dtype=torch.float32)
    if context.shape[1] != self.context_length:
      raise ValueError(f"text context has {context.shape[1]} tokens, the model was built for "
                       f"{self.context_length}")
    ctx = self.context_embed(context)
    if context_mask is None:
      mask = torch.ones(ctx.shape[:2], dtype=torch.bool)
    else:
      mask = torch.as_tensor(context_mask).bool()
    return ctx, mask

  # -- forward ------------------------------------------------------------------------------------

  def forward_transformer(self, tokens: torch.Tensor, is_masked: torch.Tensor,
                          positions: torch.Tensor, attn_mask: torch.Tensor,
                          context=None, context_mask=None) -> Dict[str, torch.Tensor]:
    """Runs the transformer and returns every intermediate output.

    tokens [B, S, C] float, is_masked [B, S] bool, positions [S, 3] or [B, S, 3] integer
    (frame, row, col), attn_mask [S, S] or [B, S, S] bool (True = may attend).
    Returns {"input_proj", "block_0", ..., "block_{depth-1}", "z"}, each [B, S, D].
    """
    tokens = torch.as_tensor(tokens, dtype=torch.float32)
    is_masked = torch.as_tensor(is_masked).bool()
    positions = torch.as_tensor(positions).long()
    attn_mask = torch.as_tensor(attn_mask).bool()
    b, s, _ = tokens.shape
    if positions.ndim == 2:
      positions = positions[None].expand(b, s, 3)
    if attn_mask.ndim == 2:
      attn_mask = attn_mask[None].expand(b, s, s)

    masked = is_masked[..., None]
    # Zero masked values before the projection: callers may leave NaN in masked slots, and a
    # where() after z_proj would drop it from the output but not from z_proj's weight gradient.
    tokens = torch.where(masked, torch.zeros_like(tokens), tokens)
    x = torch.where(masked, self.mask_token.expand(b, s, -1), self.z_proj(tokens))
    if self.pos_embed_size:
      rows = positions[..., 1].clamp(0, self.pos_embed_size - 1)
      cols = positions[..., 2].clamp(0, self.pos_embed_size - 1)
      x = x + self.pos_embed_learned[rows, cols]
    outputs = {"input_proj": x}

    ctx, ctx_mask = self._embed_context(b, context, context_mask)
    for i, block in enumerate(self.decoder_blocks):
      x = block(x, positions, attn_mask, ctx, ctx_mask)
      outputs[f"block_{i}"] = x
    outputs["z"] = self.decoder_norm(x)
    return outputs

  def forward(self, *args, **kwargs) -> Dict[str, torch.Tensor]:
    return self.forward_transformer(*args, **kwargs)

  def head(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Diffusion head: x [M, C] noisy tokens, t [M] original timesteps, c [M, D] -> [M, 2C]."""
    return self.diffloss.net(x, torch.as_tensor(t), c)


def frame_causal_layout(num_frames: int, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
  """Positions and attention mask of one frame-major sequence of num_frames * h * w tokens.

  Returns positions LongTensor [S, 3] of (frame, row, col) and attn_mask BoolTensor [S, S]:
  query i may attend key j iff frame(j) <= frame(i) (temporally causal, spatially full).
  """
  grid = torch.meshgrid(torch.arange(num_frames), torch.arange(h), torch.arange(w), indexing="ij")
  positions = torch.stack(grid, dim=-1).reshape(-1, 3).long()
  frame = positions[:, 0]
  attn_mask = frame[None, :] <= frame[:, None]
  return positions, attn_mask


# ------------------------------------------------------------------------------------------------
# Gaussian diffusion (IDDPM, in MAR's DiffLoss training setting)
# ------------------------------------------------------------------------------------------------


def _betas(num_timesteps: int, schedule: str) -> np.ndarray:
  """IDDPM's named beta schedules, float64."""
  if schedule == "linear":
    scale = 1000.0 / num_timesteps  # keeps the schedule's shape for any number of steps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
  if schedule == "cosine":
    def alpha_bar(u):
      return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = [min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
             for i in range(num_timesteps)]
    return np.array(betas, dtype=np.float64)
  raise ValueError(f"unknown noise schedule {schedule!r}")


def _normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
  """IDDPM's tanh approximation 0.5 * (1 + tanh(g(x))), written as sigmoid(2 g(x)) (the same
  function) so that tiny tail probabilities keep their float32 precision."""
  return torch.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))


def _discretized_gaussian_log_likelihood(x, means, log_scales):
  """Log-probability (nats) of x's bin of width 2/255 under N(means, exp(log_scales)^2).

  The outermost bins (x beyond +-0.999) extend to +-infinity, as for 8-bit data in [-1, 1].
  Upper tails are computed as cdf(-y) rather than 1 - cdf(y), and a bin above the mean as a
  difference of upper tails: mathematically IDDPM's formula, without its cancellation.
  """
  centered = x - means
  inv_std = torch.exp(-log_scales)
  plus = inv_std * (centered + 1.0 / 255.0)
  minus = inv_std * (centered - 1.0 / 255.0)
  log_cdf_plus = torch.log(_approx_std_normal_cdf(plus).clamp(min=1e-12))
  log_one_minus_cdf_min = torch.log(_approx_std_normal_cdf(-minus).clamp(min=1e-12))
  cdf_delta = torch.where(minus > 0,
                          _approx_std_normal_cdf(-minus) - _approx_std_normal_cdf(-plus),
                          _approx_std_normal_cdf(plus) - _approx_std_normal_cdf(minus))
  log_cdf_delta = torch.log(cdf_delta.clamp(min=1e-12))
  return torch.where(x < -0.999, log_cdf_plus,
                     torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
  return x.mean(dim=list(range(1, x.ndim)))


class TorchGaussianDiffusion:
  """IDDPM Gaussian diffusion with epsilon mean, learned-range variance and the MSE loss.

  Schedule arrays are computed in float64 numpy (as IDDPM) and gathered as float32 tensors.
  There is no respacing: timesteps are the original 0 .. num_timesteps-1.
  """

  def __init__(self, num_timesteps: int = 1000, noise_schedule: str = "cosine"):
    betas = _betas(num_timesteps, noise_schedule)
    self.num_timesteps = num_timesteps
    self.betas = betas
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    self.alphas_cumprod = ac
    self.sqrt_alphas_cumprod = np.sqrt(ac)
    self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
    self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
    self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1.0)
    self.posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    # The posterior variance is 0 at t = 0; IDDPM uses the t = 1 value there before the log.
    self.posterior_log_variance_clipped = np.log(
      np.append(self.posterior_variance[1], self.posterior_variance[1:]))
    self.posterior_mean_coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
    self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
    self.log_betas = np.log(betas)

  @staticmethod
  def _extract(arr: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """arr[t] as float32, shaped [M, 1, ...] to broadcast against an ndim-dim tensor."""
    values = torch.from_numpy(arr)[t.long()].float()
    return values.reshape(values.shape + (1,) * (ndim - 1))

  def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
    n = x_start.ndim
    return (self._extract(self.sqrt_alphas_cumprod, t, n) * x_start
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, n) * noise)

  def q_posterior_mean_variance(self, x_start, x_t, t):
    """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    n = x_t.ndim
    mean = (self._extract(self.posterior_mean_coef1, t, n) * x_start
            + self._extract(self.posterior_mean_coef2, t, n) * x_t)
    log_var = self._extract(self.posterior_log_variance_clipped, t, n).expand_as(x_t)
    return mean, log_var

  def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean, log-variance and x_0 prediction of p(x_{t-1} | x_t) from the head's [M, 2C]."""
    c = x_t.shape[1]
    eps, var_values = torch.split(model_output, c, dim=1)
    n = x_t.ndim
    min_log = self._extract(self.posterior_log_variance_clipped, t, n)
    max_log = self._extract(self.log_betas, t, n)
    frac = (var_values + 1) / 2  # [-1, 1] -> [posterior variance, beta]
    log_var = frac * max_log + (1 - frac) * min_log
    pred_xstart = (self._extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t
                   - self._extract(self.sqrt_recipm1_alphas_cumprod, t, n) * eps)
    mean, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
    return mean, log_var, pred_xstart

  def training_losses(self, model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      x_start: torch.Tensor, t: torch.Tensor,
                      noise: torch.Tensor) -> Dict[str, torch.Tensor]:
    """MAR's loss per row: mean_c((noise - eps)^2) + vb (bits), each [M].

    The variational-bound term sees a detached epsilon so it trains only the variance.
    """
    t = torch.as_tensor(t).long()
    x_t = self.q_sample(x_start, t, noise)
    out = model_fn(x_t, t)
    c = x_start.shape[1]
    eps, var_values = torch.split(out, c, dim=1)
    frozen = torch.cat([eps.detach(), var_values], dim=1)

    true_mean, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
    mean, log_var, _ = self.p_mean_variance(frozen, x_t, t)
    kl = _mean_flat(_normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
    nll = -_discretized_gaussian_log_likelihood(x_start, mean, 0.5 * log_var)
    nll = _mean_flat(nll) / math.log(2.0)
    vb = torch.where(t == 0, nll, kl)

    mse = _mean_flat((noise - eps) ** 2)
    return {"loss": mse + vb, "mse": mse, "vb": vb}


# ------------------------------------------------------------------------------------------------
# Layer-by-layer reference outputs and test helpers
# ------------------------------------------------------------------------------------------------


def reference_forward(model: TorchVideoMAR, diffusion: TorchGaussianDiffusion, tokens, mask,
                      timesteps, noise, context=None, context_mask=None
                      ) -> Dict[str, np.ndarray]:
  """Every intermediate output of one training-style forward pass, as float32 numpy.

  tokens [B, T, h, w, C], mask [B, T, h, w] (1/True = masked), timesteps [B, T, h, w] int,
  noise [B, T, h, w, C]; numpy or torch. Each sample is one frame-major sequence with the
  frame-causal layout; the head runs on every token with that token's timestep and noise.
  Returns "input_proj", "block_{i}", "z" ([B, T, h, w, D]), "head_out" ([B, T, h, w, 2C]) and
  "loss_per_token" ([B, T, h, w]).
  """
  tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.float32)
  mask = torch.as_tensor(np.asarray(mask)).bool()
  timesteps = torch.as_tensor(np.asarray(timesteps)).long()
  noise = torch.as_tensor(np.asarray(noise), dtype=torch.float32)
  if context is not None:
    context = torch.as_tensor(np.asarray(context))
  if context_mask is not None:
    context_mask = torch.as_tensor(np.asarray(context_mask)).bool()

  b, t_frames, h, w, c = tokens.shape
  s = t_frames * h * w
  positions, attn_mask = frame_causal_layout(t_frames, h, w)

  with torch.no_grad():
    outs = model.forward_transformer(tokens.reshape(b, s, c), mask.reshape(b, s), positions,
                                     attn_mask, context=context, context_mask=context_mask)
    z = outs["z"].reshape(b * s, -1)
    x_start = tokens.reshape(b * s, c)
    t = timesteps.reshape(b * s)
    eps_noise = noise.reshape(b * s, c)
    x_t = diffusion.q_sample(x_start, t, eps_noise)
    head_out = model.head(x_t, t, z)
    losses = diffusion.training_losses(lambda xt, tt: model.head(xt, tt, z), x_start, t,
                                       eps_noise)

  result = {name: v.reshape(b, t_frames, h, w, -1) for name, v in outs.items()}
  result["head_out"] = head_out.reshape(b, t_frames, h, w, 2 * c)
  result["loss_per_token"] = losses["loss"].reshape(b, t_frames, h, w)
  return {name: v.detach().to(torch.float32).numpy() for name, v in result.items()}


def randomize_(model: nn.Module, seed: int = 0, std: float = 0.5) -> nn.Module:
  """Fills every parameter with seeded noise so that every layer does visible work.

  MAR zero-initialises the head's adaLN and output layers, and small random tables would make
  the gated blocks near-identities, hiding errors in them. Linear weights get
  N(0, 1 / fan_in) (unit gain), norm weights 1 + N(0, (std/5)^2), everything else (biases,
  `scale_shift_table` and so the gates, tokens, embeddings) N(0, std^2).
  """
  norm_weights, linear_weights = set(), set()
  for module in model.modules():
    if isinstance(module, (nn.LayerNorm, RMSNorm)) and getattr(module, "weight", None) is not None:
      norm_weights.add(id(module.weight))
    if isinstance(module, nn.Linear):
      linear_weights.add(id(module.weight))
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for param in model.parameters():
      noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
      if id(param) in norm_weights:
        param.copy_(1.0 + noise * std / 5)
      elif id(param) in linear_weights:
        param.copy_(noise / math.sqrt(param.shape[1]))
      else:
        param.copy_(noise * std)
  return model
