"""The Flax Cosmos tokenizer on its own (no torch): causality, sizes, errors, Haar, configs.

Numerical parity with diffusers' AutoencoderKLCosmos is in test_cosmos_parity.py.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videomar_jax.tokenizers.cosmos import (VARIANTS, CosmosAutoencoder, CosmosConfig,
                                            abstract_params, get_variant, haar_dwt3d,
                                            haar_idwt3d, patch3d, random_params, unpatch3d)

# (encoder, decoder, total) parameters of the released networks; equal to
# sum(p.numel()) of diffusers' AutoencoderKLCosmos built with the same config
# (test_cosmos_parity.py::test_param_counts_match_diffusers checks it).
PARAM_COUNTS = {
    "CV4x8x8": (42_717_728, 43_064_960, 85_783_232),
    "CV8x8x8": (42_914_592, 62_738_560, 105_653_696),
    "CV8x16x16": (45_537_056, 65_361_024, 110_898_624),
}
NARROW = ("CV4x8x8-narrow", "CV8x8x8-narrow", "CV8x16x16-narrow")


_abstract_params = functools.lru_cache(maxsize=None)(abstract_params)


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


@functools.lru_cache(maxsize=None)
def _functions(config: CosmosConfig):
  """Jitted encode / decode of a config (compiled once per input shape)."""
  model = CosmosAutoencoder(config)
  encode = jax.jit(lambda p, v: model.apply({"params": p}, v, method=CosmosAutoencoder.encode))
  decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=CosmosAutoencoder.decode))
  return encode, decode


def _shapes(config: CosmosConfig, video_shape) -> tuple[tuple, tuple]:
  """(latent shape, decoded shape) by abstract evaluation: nothing is compiled or run."""
  model = CosmosAutoencoder(config)
  params = _abstract_params(config)
  video = jax.ShapeDtypeStruct(video_shape, jnp.float32)
  z = jax.eval_shape(lambda p, v: model.apply({"params": p}, v, method=model.encode),
                     params, video)
  y = jax.eval_shape(lambda p, z: model.apply({"params": p}, z, method=model.decode),
                     params, z)
  return z.shape, y.shape


# ---- Released variants and configs.
@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_counts_of_released_variants(name):
  params = abstract_params(get_variant(name))
  counts = (_count(params["encoder"]), _count(params["decoder"]), _count(params))
  assert counts == PARAM_COUNTS[name]
  assert set(params) == {"encoder", "decoder", "quant_conv", "post_quant_conv"}


def test_variants_strides_and_narrow_structure():
  strides = {"CV4x8x8": (4, 8), "CV8x8x8": (8, 8), "CV8x16x16": (8, 16)}
  for name, (t, s) in strides.items():
    full, narrow = get_variant(name), get_variant(name + "-narrow")
    for cfg in (full, narrow):
      assert (cfg.temporal_stride, cfg.spatial_stride) == (t, s)
      assert cfg.latent_channels == 16 and cfg.patch_size == 4 and cfg.patch_type == "haar"
    # Same samplers in the same blocks; the narrow one attends in more blocks.
    for stages in ("encoder_stages", "decoder_stages"):
      assert ([(st.spatial, st.temporal) for st in getattr(full, stages)()] ==
              [(st.spatial, st.temporal) for st in getattr(narrow, stages)()])
    assert not any(st.attention for st in full.encoder_stages() + full.decoder_stages())
    assert any(st.attention for st in narrow.encoder_stages())
    assert any(st.attention for st in narrow.decoder_stages())
  assert get_variant("CV8x8x8") == CosmosConfig()  # diffusers' defaults
  assert get_variant("CV4x8x8").decode_block_out_channels == (256, 512, 512)
  with pytest.raises(ValueError, match="CV8x16x16-narrow"):
    get_variant("CV16x8x8")


def test_config_dict_round_trip_and_unknown_keys():
  for cfg in VARIANTS.values():
    assert CosmosConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
  cfg = dataclasses.replace(get_variant("CV8x8x8-narrow"), dtype="bfloat16")
  assert CosmosConfig.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(ValueError, match="channel_mult"):
    CosmosConfig.from_dict({**cfg.to_dict(), "channel_mult": [1, 2]})

  diffusers_config = {"_class_name": "AutoencoderKLCosmos", "_diffusers_version": "0.42.1",
                      "scaling_factor": 1.0, "latents_mean": [0.0] * 16,
                      "latents_std": None, **get_variant("CV8x16x16").to_diffusers()}
  assert CosmosConfig.from_diffusers(diffusers_config) == get_variant("CV8x16x16")
  assert CosmosConfig.from_diffusers({}) == CosmosConfig()
  with pytest.raises(ValueError, match="down_block_types"):
    CosmosConfig.from_diffusers({**diffusers_config, "down_block_types": ["a"]})


def test_invalid_configs_are_rejected():
  with pytest.raises(ValueError, match="power of two"):
    CosmosConfig(temporal_compression_ratio=6)
  with pytest.raises(ValueError, match="dtype"):
    CosmosConfig(dtype="float64")
  with pytest.raises(ValueError, match="conv3x3='fft' is not one of"):
    CosmosConfig(conv3x3="fft")
  # Two down-sampling blocks cannot reach 4 * 2**3 = 32x spatial compression.
  with pytest.raises(ValueError, match="spatial downsamplers"):
    CosmosConfig(spatial_compression_ratio=32)
  # More temporal than spatial layers: the decoder would not undo the encoder.
  with pytest.raises(ValueError, match="decoder spatial upsamplers"):
    CosmosConfig(spatial_compression_ratio=4, temporal_compression_ratio=8)


# ---- Sizes.
@pytest.mark.parametrize("name", NARROW)
def test_frame_and_spatial_counts(name):
  cfg = get_variant(name)
  s, r = cfg.temporal_stride, cfg.spatial_stride
  for k, (hm, wm) in [(0, (1, 1)), (2, (3, 2))]:
    frames, height, width = 1 + s * k, hm * r, wm * r
    z_shape, y_shape = _shapes(cfg, (2, frames, height, width, 3))
    assert z_shape == (2, 1 + k, hm, wm, 16)
    assert y_shape == (2, frames, height, width, 3)
    assert cfg.num_latent_frames(frames) == 1 + k


def test_bad_sizes_raise_clear_errors():
  cfg = get_variant("CV8x8x8-narrow")
  with pytest.raises(ValueError, match=r"num_frames=10 .* 1, 9, 17, 25"):
    _shapes(cfg, (1, 10, 16, 16, 3))
  with pytest.raises(ValueError, match=r"height=12 .* spatial stride 8 \(valid: 8, 16, 24"):
    _shapes(cfg, (1, 9, 12, 16, 3))
  with pytest.raises(ValueError, match="width=20"):
    _shapes(cfg, (1, 9, 16, 20, 3))
  with pytest.raises(ValueError, match=r"\[B, F, H, W, 3\]"):
    _shapes(cfg, (1, 9, 16, 16, 4))
  with pytest.raises(ValueError, match=r"num_frames=6 .* 1, 5, 9"):
    _shapes(get_variant("CV4x8x8-narrow"), (1, 6, 16, 16, 3))
  model = CosmosAutoencoder(cfg)
  with pytest.raises(ValueError, match=r"\[B, T, h, w, 16\]"):
    jax.eval_shape(lambda p, z: model.apply({"params": p}, z, method=model.decode),
                   _abstract_params(cfg), jax.ShapeDtypeStruct((1, 2, 2, 2, 8), jnp.float32))


# ---- Haar patching (jitted: op-by-op dispatch is slow on a CPU).
_patch = jax.jit(patch3d, static_argnums=(1, 2))
_unpatch = jax.jit(unpatch3d, static_argnums=(1, 2))


@pytest.mark.parametrize("patch_type", ["haar", "rearrange"])
@pytest.mark.parametrize("p", [2, 4])
def test_patch_and_unpatch_are_inverses(patch_type, p):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 1 + 2 * p, 2 * p, 3 * p, 3), dtype=np.float32)
  patched = _patch(x, p, patch_type)
  assert patched.shape == (2, 3, 2, 3, 3 * p ** 3)
  np.testing.assert_allclose(_unpatch(patched, p, patch_type), x, atol=1e-5)
  y = rng.standard_normal(patched.shape, dtype=np.float32)  # and the other way round
  np.testing.assert_allclose(_patch(_unpatch(y, p, patch_type), p, patch_type)[:, 1:],
                             y[:, 1:], atol=1e-5)


def test_haar_bands():
  x = np.random.default_rng(1).standard_normal((1, 4, 8, 8, 2), dtype=np.float32)
  bands = jax.jit(haar_dwt3d)(x)
  blocks = x.reshape(1, 2, 2, 4, 2, 4, 2, 2)
  # Band lll (channels 0..C-1) is the mean of each 2x2x2 block; band hhh the +-1 pattern.
  np.testing.assert_allclose(bands[..., :2], blocks.mean(axis=(2, 4, 6)), atol=1e-6)
  sign = np.array([1, -1])[:, None, None] * np.array([1, -1])[:, None] * np.array([1, -1])
  hhh = np.einsum("btihjwkc,ijk->bthwc", blocks, sign) / 8
  np.testing.assert_allclose(bands[..., 14:], hhh, atol=1e-6)
  np.testing.assert_allclose(jax.jit(haar_idwt3d)(bands), x, atol=1e-6)
  # Patching repeats frame 0 first: a still video's first patch frame equals its others.
  still = np.repeat(x[:, :1], 9, axis=1)
  patched = _patch(still, 4, "haar")
  np.testing.assert_allclose(patched[:, 0], patched[:, 2], atol=1e-6)


# ---- Causality.
@pytest.mark.parametrize("name", ["CV8x8x8-narrow", "CV4x8x8-narrow"])
def test_encoder_and_decoder_are_causal(name):
  cfg = get_variant(name)
  s = cfg.temporal_stride
  params = random_params(cfg, seed=0)
  encode, decode = _functions(cfg)
  rng = np.random.default_rng(3)
  video = rng.uniform(-1, 1, (1, 1 + 3 * s, 16, 24, 3)).astype(np.float32)
  z = np.asarray(encode(params, video))
  assert z.shape == (1, 4, 2, 3, 16)
  for k in range(3):  # pixel frames from 1 + s*k on changed: latent frames 0..k are not
    changed = video.copy()
    changed[:, 1 + s * k:] = rng.uniform(-1, 1, changed[:, 1 + s * k:].shape)
    z2 = np.asarray(encode(params, changed))
    np.testing.assert_allclose(z2[:, :k + 1], z[:, :k + 1], atol=1e-6)
    assert np.abs(z2[:, k + 1] - z[:, k + 1]).max() > 1e-3

  y = np.asarray(decode(params, z))
  assert y.shape == video.shape
  for j in range(4):  # latent frame j decodes to pixel frames s*(j-1)+1 .. s*j (j > 0)
    first = 0 if j == 0 else s * (j - 1) + 1
    z2 = z.copy()
    z2[:, j] += rng.standard_normal(z[:, j].shape)
    y2 = np.asarray(decode(params, z2))
    np.testing.assert_allclose(y2[:, :first], y[:, :first], atol=1e-6)
    assert np.abs(y2[:, first] - y[:, first]).max() > 1e-3


def test_call_and_bfloat16_compute():
  cfg = get_variant("CV8x8x8-narrow")
  params = random_params(cfg, seed=1)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      abstract_params(cfg))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree_util.tree_leaves(params))
  # Same shapes as the causality test, so that encode/decode are compiled once.
  video = np.random.default_rng(4).uniform(-1, 1, (1, 25, 16, 24, 3)).astype(np.float32)
  encode, decode = _functions(cfg)
  y32 = np.asarray(decode(params, encode(params, video)))

  cfg16 = dataclasses.replace(cfg, dtype="bfloat16")
  y16 = jax.jit(lambda p, v: CosmosAutoencoder(cfg16).apply({"params": p}, v))(params, video)
  assert y16.dtype == jnp.bfloat16 and y16.shape == video.shape
  rel = float(np.abs(np.asarray(y16, np.float32) - y32).max() / np.abs(y32).max())
  assert rel < 5e-2, rel


def test_winograd_and_direct_3x3_convs_compute_the_same_network():
  # conv3x3 is computation only (like dtype): the same weights give the same latents and
  # videos either way, up to float32 rounding; diffusers' config never carries it.
  cfg = get_variant("CV4x8x8-narrow")
  params = random_params(cfg, seed=2)
  video = np.random.default_rng(5).uniform(-1, 1, (1, 9, 16, 24, 3)).astype(np.float32)
  outputs, convs = {}, {}
  for algorithm in ("winograd", "direct"):
    model = CosmosAutoencoder(dataclasses.replace(cfg, conv3x3=algorithm))
    convs[algorithm] = str(jax.make_jaxpr(lambda p, v, m=model: m.apply(
        {"params": p}, v, method=m.encode))(params, video)).count("conv_general_dilated")
    z = jax.jit(lambda p, v, m=model: m.apply({"params": p}, v, method=m.encode))(params, video)
    y = jax.jit(lambda p, z, m=model: m.apply({"params": p}, z, method=m.decode))(params, z)
    outputs[algorithm] = (np.asarray(z), np.asarray(y))
  for got, want in zip(outputs["winograd"], outputs["direct"]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  assert convs["direct"] > convs["winograd"], convs  # the two really ran differently
  assert "conv3x3" not in dataclasses.replace(cfg, conv3x3="direct").to_diffusers()
