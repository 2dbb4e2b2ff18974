"""Cosmos-Tokenizer original keys <-> diffusers `AutoencoderKLCosmos` keys.

The golden key lists below are written from the ORIGINAL module definitions
(NVIDIA/Cosmos-Tokenizer cosmos_tokenizer/modules/layers3d.py, EncoderFactorized /
DecoderFactorized, with NVIDIA/Cosmos's conditional hybrid resampler convs), not from the
mapping code, so they check it independently.
"""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLCosmos

from videomar_jax.tokenizers.cosmos.keys import (_RULES, CosmosKeyError, diffusers_to_original,
                                              is_original_layout, original_to_diffusers)

# Original structure for each config: channels * channels_mult as diffusers block widths.
# CV8x8x8-like: channels=8, channels_mult=[1, 2, 2], patch 4, attention at resolution 8.
CONFIG_T8 = dict(in_channels=3, out_channels=3, latent_channels=4,
                 encoder_block_out_channels=(8, 8, 16, 16),
                 decode_block_out_channels=(8, 16, 16, 16),
                 attention_resolutions=(8,), resolution=32, num_layers=1, patch_size=4,
                 spatial_compression_ratio=8, temporal_compression_ratio=8,
                 latents_mean=None, latents_std=None)
# CV4x8x8-like: channels=8, encoder channels_mult=[2, 4, 4]; the original decoder is built
# with channels_mult=[2, 4] when temporal_compression == 4 (networks/continuous_video.py).
CONFIG_T4 = dict(CONFIG_T8, encoder_block_out_channels=(8, 16, 32, 32),
                 decode_block_out_channels=(16, 32, 32), temporal_compression_ratio=4)


# --- Original modules, as defined in layers3d.py -------------------------------------------

def conv(prefix, cout, cin, kernel):  # CausalConv3d wraps nn.Conv3d as `conv3d`.
  return {f"{prefix}.conv3d.weight": (cout, cin, *kernel), f"{prefix}.conv3d.bias": (cout,)}


def norm(prefix, c):  # CausalNormalize wraps nn.GroupNorm as `norm`.
  return {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,)}


def factorized(prefix, cin, cout):  # nn.Sequential(spatial (1,3,3), temporal (3,1,1)).
  return {**conv(f"{prefix}.0", cout, cin, (1, 3, 3)), **conv(f"{prefix}.1", cout, cout, (3, 1, 1))}


def resnet(prefix, cin, cout):  # CausalResnetBlockFactorized3d.
  out = {**norm(f"{prefix}.norm1", cin), **factorized(f"{prefix}.conv1", cin, cout),
         **norm(f"{prefix}.norm2", cout), **factorized(f"{prefix}.conv2", cout, cout)}
  if cin != cout:
    out.update(conv(f"{prefix}.nin_shortcut", cout, cin, (1, 1, 1)))
  return out


def attention(prefix, c):  # nn.Sequential(CausalAttnBlock, CausalTemporalAttnBlock).
  out = {}
  for s in (0, 1):
    out.update(norm(f"{prefix}.{s}.norm", c))
    for name in ("q", "k", "v", "proj_out"):
      out.update(conv(f"{prefix}.{s}.{name}", c, c, (1, 1, 1)))
  return out


def downsample(prefix, c, spatial, temporal):  # CausalHybridDownsample3d.
  out = conv(f"{prefix}.conv1", c, c, (1, 3, 3)) if spatial else {}
  if temporal:
    out.update(conv(f"{prefix}.conv2", c, c, (3, 1, 1)))
  if spatial or temporal:
    out.update(conv(f"{prefix}.conv3", c, c, (1, 1, 1)))
  return out


def upsample(prefix, c, spatial, temporal):  # CausalHybridUpsample3d.
  out = conv(f"{prefix}.conv1", c, c, (3, 1, 1)) if temporal else {}
  if spatial:
    out.update(conv(f"{prefix}.conv2", c, c, (1, 3, 3)))
  if spatial or temporal:
    out.update(conv(f"{prefix}.conv3", c, c, (1, 1, 1)))
  return out


def mid(prefix, c):
  return {**resnet(f"{prefix}.mid.block_1", c, c), **attention(f"{prefix}.mid.attn_1", c),
          **resnet(f"{prefix}.mid.block_2", c, c)}


# Patch 4 -> 3 * 4**3 = 192 channels into encoder.conv_in and out of decoder.conv_out.
# num_spatial_downs = log2(8) - log2(4) = 1, num_temporal_downs = log2(8) - 2 = 1: down.0
# resamples both ways, down.1 neither (no convs). Decoder: up.2 (first run) neither,
# up.1 both. Attention at resolution 8: encoder level 0, decoder level 0 (both res blocks).
GOLDEN_T8 = {
    **factorized("encoder.conv_in", 192, 8),
    **resnet("encoder.down.0.block.0", 8, 8),
    **attention("encoder.down.0.attn.0", 8),
    **downsample("encoder.down.0.downsample", 8, spatial=True, temporal=True),
    **resnet("encoder.down.1.block.0", 8, 16),
    **downsample("encoder.down.1.downsample", 16, spatial=False, temporal=False),
    **resnet("encoder.down.2.block.0", 16, 16),
    **mid("encoder", 16),
    **norm("encoder.norm_out", 16),
    **factorized("encoder.conv_out", 16, 4),
    **conv("quant_conv", 4, 4, (1, 1, 1)),
    **conv("post_quant_conv", 4, 4, (1, 1, 1)),
    **factorized("decoder.conv_in", 4, 16),
    **mid("decoder", 16),
    **resnet("decoder.up.2.block.0", 16, 16),
    **resnet("decoder.up.2.block.1", 16, 16),
    **upsample("decoder.up.2.upsample", 16, spatial=False, temporal=False),
    **resnet("decoder.up.1.block.0", 16, 16),
    **resnet("decoder.up.1.block.1", 16, 16),
    **upsample("decoder.up.1.upsample", 16, spatial=True, temporal=True),
    **resnet("decoder.up.0.block.0", 16, 8),
    **attention("decoder.up.0.attn.0", 8),
    **resnet("decoder.up.0.block.1", 8, 8),
    **attention("decoder.up.0.attn.1", 8),
    **norm("decoder.norm_out", 8),
    **factorized("decoder.conv_out", 8, 192),
}

# Temporal 4 with patch 4: no temporal resampling at all. down.0 spatial only, down.1 none;
# the two-level decoder upsamples spatially in up.1 only. Attention: encoder level 0,
# decoder level 0.
GOLDEN_T4 = {
    **factorized("encoder.conv_in", 192, 8),
    **resnet("encoder.down.0.block.0", 8, 16),
    **attention("encoder.down.0.attn.0", 16),
    **downsample("encoder.down.0.downsample", 16, spatial=True, temporal=False),
    **resnet("encoder.down.1.block.0", 16, 32),
    **resnet("encoder.down.2.block.0", 32, 32),
    **mid("encoder", 32),
    **norm("encoder.norm_out", 32),
    **factorized("encoder.conv_out", 32, 4),
    **conv("quant_conv", 4, 4, (1, 1, 1)),
    **conv("post_quant_conv", 4, 4, (1, 1, 1)),
    **factorized("decoder.conv_in", 4, 32),
    **mid("decoder", 32),
    **resnet("decoder.up.1.block.0", 32, 32),
    **resnet("decoder.up.1.block.1", 32, 32),
    **upsample("decoder.up.1.upsample", 32, spatial=True, temporal=False),
    **resnet("decoder.up.0.block.0", 32, 16),
    **attention("decoder.up.0.attn.0", 16),
    **resnet("decoder.up.0.block.1", 16, 16),
    **attention("decoder.up.0.attn.1", 16),
    **norm("decoder.norm_out", 16),
    **factorized("decoder.conv_out", 16, 192),
}

# Every hybrid resampler of the original structure (prefix, channels), used or not.
RESAMPLERS_T8 = [("encoder.down.0.downsample", 8), ("encoder.down.1.downsample", 16),
                 ("decoder.up.2.upsample", 16), ("decoder.up.1.upsample", 16)]
RESAMPLERS_T4 = [("encoder.down.0.downsample", 16), ("encoder.down.1.downsample", 32),
                 ("decoder.up.1.upsample", 32)]

# A few keys spelled out in full (the brief's examples among them).
LITERAL_T8 = [
    "encoder.conv_in.0.conv3d.weight", "encoder.conv_in.1.conv3d.bias",
    "encoder.down.0.block.0.conv1.0.conv3d.weight", "encoder.down.0.block.0.conv1.1.conv3d.weight",
    "encoder.down.0.block.0.norm1.norm.weight", "encoder.down.1.block.0.nin_shortcut.conv3d.weight",
    "encoder.down.0.attn.0.0.q.conv3d.weight", "encoder.down.0.attn.0.1.proj_out.conv3d.bias",
    "encoder.down.0.downsample.conv1.conv3d.weight",
    "encoder.down.0.downsample.conv2.conv3d.weight",
    "encoder.down.0.downsample.conv3.conv3d.bias",
    "encoder.mid.block_1.conv2.1.conv3d.weight", "encoder.mid.attn_1.0.q.conv3d.weight",
    "encoder.mid.attn_1.1.q.conv3d.weight", "encoder.mid.attn_1.1.norm.norm.bias",
    "encoder.mid.block_2.norm2.norm.weight", "encoder.norm_out.norm.weight",
    "encoder.conv_out.1.conv3d.weight", "quant_conv.conv3d.weight", "post_quant_conv.conv3d.weight",
    "decoder.conv_in.0.conv3d.weight", "decoder.mid.attn_1.0.k.conv3d.weight",
    "decoder.up.1.upsample.conv1.conv3d.weight", "decoder.up.1.upsample.conv2.conv3d.weight",
    "decoder.up.1.upsample.conv3.conv3d.weight", "decoder.up.0.block.0.nin_shortcut.conv3d.weight",
    "decoder.up.0.attn.1.0.v.conv3d.weight", "decoder.norm_out.norm.bias",
    "decoder.conv_out.1.conv3d.weight",
]

# (original, diffusers) pairs for CONFIG_T8, from diffusers' VAE_KEYS_RENAME_DICT and the
# original module order: index 0 of each attention Sequential is the spatial block, index 1
# the temporal one; `up` is indexed by level, `up_blocks` by execution order.
PAIRS_T8 = [
    ("encoder.conv_in.0.conv3d.weight", "encoder.conv_in.conv_s.weight"),
    ("encoder.conv_in.1.conv3d.weight", "encoder.conv_in.conv_t.weight"),
    ("encoder.down.0.block.0.conv1.0.conv3d.weight",
     "encoder.down_blocks.0.resnets.0.conv1.conv_s.weight"),
    ("encoder.down.0.block.0.conv2.1.conv3d.bias",
     "encoder.down_blocks.0.resnets.0.conv2.conv_t.bias"),
    ("encoder.down.1.block.0.nin_shortcut.conv3d.weight",
     "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
    ("encoder.down.0.attn.0.0.q.conv3d.weight", "encoder.down_blocks.0.attentions.0.to_q.weight"),
    ("encoder.down.0.attn.0.1.k.conv3d.weight",
     "encoder.down_blocks.0.temp_attentions.0.to_k.weight"),
    ("encoder.down.0.downsample.conv1.conv3d.weight",
     "encoder.down_blocks.0.downsamplers.0.conv1.weight"),
    ("encoder.down.0.downsample.conv2.conv3d.weight",
     "encoder.down_blocks.0.downsamplers.0.conv2.weight"),
    ("encoder.mid.block_1.conv1.0.conv3d.weight",
     "encoder.mid_block.resnets.0.conv1.conv_s.weight"),
    ("encoder.mid.block_2.conv1.0.conv3d.weight",
     "encoder.mid_block.resnets.1.conv1.conv_s.weight"),
    ("encoder.mid.attn_1.0.v.conv3d.weight", "encoder.mid_block.attentions.0.to_v.weight"),
    ("encoder.mid.attn_1.1.v.conv3d.weight", "encoder.mid_block.temp_attentions.0.to_v.weight"),
    ("encoder.mid.attn_1.0.proj_out.conv3d.weight",
     "encoder.mid_block.attentions.0.to_out.0.weight"),
    ("encoder.mid.attn_1.1.norm.norm.weight",
     "encoder.mid_block.temp_attentions.0.norm.norm.weight"),
    ("encoder.conv_out.1.conv3d.weight", "encoder.conv_out.conv_t.weight"),
    ("quant_conv.conv3d.weight", "quant_conv.weight"),
    ("post_quant_conv.conv3d.bias", "post_quant_conv.bias"),
    ("decoder.mid.attn_1.1.q.conv3d.weight", "decoder.mid_block.temp_attentions.0.to_q.weight"),
    ("decoder.up.2.block.0.conv1.0.conv3d.weight",
     "decoder.up_blocks.0.resnets.0.conv1.conv_s.weight"),
    ("decoder.up.2.block.1.conv2.1.conv3d.weight",
     "decoder.up_blocks.0.resnets.1.conv2.conv_t.weight"),
    ("decoder.up.1.block.0.conv1.0.conv3d.weight",
     "decoder.up_blocks.1.resnets.0.conv1.conv_s.weight"),
    ("decoder.up.1.upsample.conv1.conv3d.weight", "decoder.up_blocks.1.upsamplers.0.conv1.weight"),
    ("decoder.up.1.upsample.conv2.conv3d.weight", "decoder.up_blocks.1.upsamplers.0.conv2.weight"),
    ("decoder.up.1.upsample.conv3.conv3d.weight", "decoder.up_blocks.1.upsamplers.0.conv3.weight"),
    ("decoder.up.0.block.0.nin_shortcut.conv3d.weight",
     "decoder.up_blocks.2.resnets.0.conv_shortcut.weight"),
    ("decoder.up.0.attn.1.0.q.conv3d.weight", "decoder.up_blocks.2.attentions.1.to_q.weight"),
    ("decoder.up.0.attn.1.1.proj_out.conv3d.bias",
     "decoder.up_blocks.2.temp_attentions.1.to_out.0.bias"),
    ("decoder.conv_out.0.conv3d.weight", "decoder.conv_out.conv_s.weight"),
]

# Registered buffers that the .jit state dicts carry and the mapping must ignore.
BUFFERS = {
    "encoder.patcher3d.wavelets": np.array([0.7071, 0.7071], np.float32),
    "encoder.patcher3d._arange": np.arange(2),
    "encoder.patcher3d.patch_size_buffer": np.array([4], np.int32),
    "decoder.unpatcher3d.wavelets": np.array([0.7071, 0.7071], np.float32),
    "decoder.unpatcher3d._arange": np.arange(2),
}


def _model(config):
  torch.manual_seed(0)
  return AutoencoderKLCosmos(**config)


def _numpy(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _shapes(sd):
  return {k: tuple(v.shape) for k, v in sd.items()}


def _assert_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


@pytest.fixture(scope="module", params=["t8", "t4"])
def case(request):
  config, golden = {"t8": (CONFIG_T8, GOLDEN_T8), "t4": (CONFIG_T4, GOLDEN_T4)}[request.param]
  model = _model(config)
  return model, _numpy(model), golden


def test_golden_original_keys_and_shapes(case):
  _, sd, golden = case
  original = diffusers_to_original(sd)
  assert _shapes(original) == golden
  assert is_original_layout(original) and not is_original_layout(sd)


def test_literal_keys():
  original = diffusers_to_original(_numpy(_model(CONFIG_T8)))
  missing = [k for k in LITERAL_T8 if k not in original]
  assert not missing
  # Decoder levels flip: original up.0 (last to run, 8 channels) is diffusers up_blocks.2.
  assert "decoder.up.2.attn.0.0.q.conv3d.weight" not in original


def test_pairs_carry_the_same_tensor():
  # Values pass through untouched, so identity shows which tensor went where (even for
  # same-shaped pairs such as spatial vs temporal attention).
  sd = _numpy(_model(CONFIG_T8))
  original = diffusers_to_original(sd)
  for orig_key, diff_key in PAIRS_T8:
    assert original[orig_key] is sd[diff_key], (orig_key, diff_key)


def test_round_trip_exact(case):
  _, sd, _ = case
  _assert_equal(original_to_diffusers(diffusers_to_original(sd)), sd)
  original = diffusers_to_original(sd)
  _assert_equal(diffusers_to_original(original_to_diffusers(original)), original)


def test_loads_strict(case):
  model, sd, _ = case
  converted = original_to_diffusers({**BUFFERS, **diffusers_to_original(sd)})
  fresh = AutoencoderKLCosmos(**model.config)
  fresh.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in converted.items()}, strict=True)
  for k, v in fresh.state_dict().items():
    assert torch.equal(v, model.state_dict()[k]), k


def test_buffers_and_prefixes_ignored(case):
  _, sd, _ = case
  original = diffusers_to_original(sd)
  wrapped = {f"module.{k}": v for k, v in {**BUFFERS, **original}.items()}
  _assert_equal(original_to_diffusers(wrapped), sd)
  compiled = {k.replace("encoder.", "encoder._orig_mod.", 1): v for k, v in original.items()}
  _assert_equal(original_to_diffusers({f"_orig_mod.{k}": v for k, v in compiled.items()}), sd)
  # diffusers' own (non-persistent) patcher buffers are dropped going the other way too.
  extra = {"encoder.patch_embed.wavelets": BUFFERS["encoder.patcher3d.wavelets"],
           "decoder.unpatch_embed._arange": BUFFERS["decoder.unpatcher3d._arange"]}
  _assert_equal(diffusers_to_original({**sd, **extra}), original)


def test_encoder_and_decoder_jit_subsets(case):
  # encoder.jit = Sequential(encoder, quant_conv, distribution); decoder.jit =
  # Sequential(post_quant_conv, decoder): the same prefixes as autoencoder.jit.
  _, sd, _ = case
  original = diffusers_to_original(sd)
  for top in (("encoder.", "quant_conv."), ("decoder.", "post_quant_conv.")):
    part = {k: v for k, v in {**BUFFERS, **original}.items() if k.startswith(top)}
    _assert_equal(original_to_diffusers(part), {k: v for k, v in sd.items() if k.startswith(top)})


def test_unused_resampler_convs_dropped_with_expected_keys(case):
  # NVIDIA/Cosmos-Tokenizer's layers3d.py builds conv1/conv2/conv3 of every hybrid
  # resampler, used or not; the diffusers model has only the used ones.
  model, sd, golden = case
  original = diffusers_to_original(sd)
  resamplers = RESAMPLERS_T8 if golden is GOLDEN_T8 else RESAMPLERS_T4
  full = {}
  for prefix, c in resamplers:
    make = downsample if ".downsample" in prefix else upsample
    full.update(make(prefix, c, spatial=True, temporal=True))
  dead = {k: np.zeros(shape, np.float32) for k, shape in full.items() if k not in original}
  assert dead
  converted = original_to_diffusers({**original, **dead}, expected_keys=model.state_dict().keys())
  _assert_equal(converted, sd)
  # Without the target's keys they are mapped, not silently dropped.
  assert len(original_to_diffusers({**original, **dead})) == len(sd) + len(dead)


def test_unknown_keys_one_error(case):
  _, sd, _ = case
  original = diffusers_to_original(sd)
  bad = {"encoder.down.0.block.0.conv1.2.conv3d.weight": np.zeros((1,) * 5),
         "decoder.mystery.weight": np.zeros(1),
         "encoder.mid.attn_1.2.q.conv3d.weight": np.zeros((1,) * 5)}
  with pytest.raises(CosmosKeyError) as err:
    original_to_diffusers({**original, **bad})
  assert sorted(err.value.keys) == sorted(bad)
  for key in bad:
    assert key in str(err.value)
  with pytest.raises(CosmosKeyError) as err:
    diffusers_to_original({**sd, "decoder.up_blocks.0.foo.weight": np.zeros(1)})
  assert err.value.keys == ["decoder.up_blocks.0.foo.weight"]


def test_wrong_rank_rejected():
  sd = _numpy(_model(CONFIG_T8))
  original = diffusers_to_original(sd)
  # A 1x1x1 conv stored as a linear [out, in] weight is not the original layout.
  original["encoder.mid.attn_1.0.q.conv3d.weight"] = original[
      "encoder.mid.attn_1.0.q.conv3d.weight"][:, :, 0, 0, 0]
  with pytest.raises(CosmosKeyError, match="rank 2, expected 5"):
    original_to_diffusers(original)


def test_rules_unambiguous():
  for side in ("original", "diffusers"):
    keys = diffusers_to_original(_numpy(_model(CONFIG_T8)))
    keys = keys if side == "original" else original_to_diffusers(keys)
    for key in keys:
      assert sum(bool(r.patterns[side].fullmatch(key)) for r in _RULES) == 1, key


# --- NVIDIA/Cosmos-Tokenizer's own layers3d.py: every hybrid resampler owns conv1-3 -------

def nvidia_golden(golden, resamplers):
  """A golden list as NVIDIA/Cosmos-Tokenizer's EncoderFactorized / DecoderFactorized build
  it: each level's CausalHybridDown/Upsample3d creates conv1, conv2 and conv3 before its
  spatial_*/temporal_* flags switch any of them off."""
  out = dict(golden)
  for prefix, c in resamplers:
    make = downsample if ".downsample" in prefix else upsample
    out.update(make(prefix, c, spatial=True, temporal=True))
  return out


GOLDEN_T8_NVIDIA = nvidia_golden(GOLDEN_T8, RESAMPLERS_T8)
GOLDEN_T4_NVIDIA = nvidia_golden(GOLDEN_T4, RESAMPLERS_T4)


@pytest.mark.parametrize("name", ["t8", "t4"])
def test_nvidia_reference_has_the_golden_keys(name):
  # The test suite's PyTorch reference of NVIDIA's network (tests/nvidia_cosmos_reference.py)
  # builds exactly these tensors, switched-off convs included; converting them drops only
  # those the golden lists above (the conditional layout) do not have.
  from nvidia_cosmos_reference import CausalContinuousVideoTokenizer  # pylint: disable=g-import-not-at-top
  from videomar_jax.tokenizers.cosmos.convert import unused_resampler_keys  # pylint: disable=g-import-not-at-top
  from videomar_jax.tokenizers.cosmos import CosmosConfig  # pylint: disable=g-import-not-at-top
  config_dict, golden, nvidia = {"t8": (CONFIG_T8, GOLDEN_T8, GOLDEN_T8_NVIDIA),
                                 "t4": (CONFIG_T4, GOLDEN_T4, GOLDEN_T4_NVIDIA)}[name]
  config = CosmosConfig.from_diffusers(config_dict)
  with torch.device("meta"):
    reference = CausalContinuousVideoTokenizer(config)
  assert _shapes(reference.state_dict()) == nvidia
  extra = {k: np.zeros(s, np.float32) for k, s in nvidia.items() if k not in golden}
  assert set(original_to_diffusers(extra)) == unused_resampler_keys(config)
