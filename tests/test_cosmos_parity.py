"""Flax Cosmos tokenizer == diffusers' AutoencoderKLCosmos, and the weight converter.

Small random diffusers models (every weight random, GroupNorm affines included, attention
reached in down/up blocks as well as the middle blocks) are converted with
`diffusers_to_flax`; encode latents and the decoding of the same latents must agree.
"""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLCosmos

import jax
from videomar_jax.io import safetensors_io
from videomar_jax.tokenizers.cosmos.convert import (CosmosConversionError, convert, detect_layout,
                                                 diffusers_to_flax, expected_diffusers_shapes,
                                                 flax_to_diffusers, load_torch_state_dict)
from videomar_jax.tokenizers.cosmos.keys import diffusers_to_original
from videomar_jax.tokenizers.cosmos import (VARIANTS, CosmosAutoencoder, CosmosConfig,
                                            abstract_params)

# max |flax - torch| / max |torch| over each output, float32 on a CPU (measured ~1.5e-6).
REL_TOL = 1e-4

_SMALL = dict(latent_channels=8, encoder_block_out_channels=(16, 16, 32, 32),
              attention_resolutions=(8, 4), resolution=32)
# name: (config, pixel frames); frames are 32 x 48 (non-square).
CASES = {
    # CV8x8x8 structure: encoder block 0 halves T, H, W; decoder block 1 doubles them.
    "t8s8": (CosmosConfig(**_SMALL, decode_block_out_channels=(16, 32, 32, 32), num_layers=2,
                          temporal_compression_ratio=8, spatial_compression_ratio=8), 17),
    # CV4x8x8 structure: spatial-only samplers, and (as released) a decoder one level shorter.
    "t4s8": (CosmosConfig(**_SMALL, decode_block_out_channels=(16, 32, 32), num_layers=1,
                          temporal_compression_ratio=4, spatial_compression_ratio=8), 9),
    # CV8x16x16 structure: a spatial+temporal and a spatial-only sampler on each side.
    "t8s16": (CosmosConfig(**_SMALL, decode_block_out_channels=(16, 32, 32, 32), num_layers=1,
                           temporal_compression_ratio=8, spatial_compression_ratio=16), 9),
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
  # On a 2-core machine torch's intra-op thread pool makes every small op of these tiny
  # models take milliseconds (~100x slower than one thread).
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _random_diffusers(config: CosmosConfig, seed: int = 0) -> AutoencoderKLCosmos:
  """A float32 eval-mode model whose every parameter is random (norm affines included)."""
  model = AutoencoderKLCosmos(**config.to_diffusers()).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if ".norm." in name and name.endswith(".weight"):  # GroupNorm scale
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
      elif name.endswith(".bias"):
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))
      else:  # conv kernels; sharper q/k so that the softmax is far from uniform
        gain = 2.0 if (".to_q." in name or ".to_k." in name) else 1.0
        p.copy_(gain * torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
  return model


def _state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _channels_last(x: torch.Tensor) -> np.ndarray:
  return x.detach().numpy().transpose(0, 2, 3, 4, 1)  # [B, C, T, H, W] -> [B, T, H, W, C]


def _rel_err(got, want) -> tuple[float, float]:
  err = float(np.abs(np.asarray(got) - want).max())
  return err, err / float(np.abs(want).max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_encode_decode_match_diffusers(case):
  config, frames = CASES[case]
  torch_model = _random_diffusers(config)
  params = diffusers_to_flax(_state_dict(torch_model), config)
  video = torch.rand(2, 3, frames, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
  with torch.no_grad():
    latents = torch_model.encode(video).latent_dist.mode()
    decoded = torch_model.decode(latents).sample

  model = CosmosAutoencoder(config)
  encode = jax.jit(lambda p, v: model.apply({"params": p}, v, method=CosmosAutoencoder.encode))
  decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=CosmosAutoencoder.decode))
  z = encode(params, _channels_last(video))
  y = decode(params, _channels_last(latents))  # the same latents in both

  want_z, want_y = _channels_last(latents), _channels_last(decoded)
  t, r = config.temporal_stride, config.spatial_stride
  assert z.shape == want_z.shape == (2, 1 + (frames - 1) // t, 32 // r, 48 // r, 8)
  assert y.shape == want_y.shape == (2, frames, 32, 48, 3)
  for what, got, want in (("latents", z, want_z), ("decoded", y, want_y)):
    err, rel = _rel_err(got, want)
    print(f"{case} {what}: max abs {err:.3g}, max rel {rel:.3g}")
    assert rel <= REL_TOL, (what, err, rel)


def test_param_counts_and_keys_match_diffusers():
  # The full-size networks are built on torch's meta device: no memory, milliseconds.
  for name in ("CV4x8x8", "CV8x8x8", "CV8x16x16", "CV8x8x8-narrow"):
    config = VARIANTS[name]
    with torch.device("meta"):
      torch_model = AutoencoderKLCosmos(**config.to_diffusers())
    shapes = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()}
    expected = expected_diffusers_shapes(config)  # from the Flax model's parameter tree
    assert shapes == expected, name
    total = sum(p.numel() for p in torch_model.parameters())
    # test_cosmos_tokenizer.py::PARAM_COUNTS holds these totals.
    assert sum(int(np.prod(s)) for s in expected.values()) == total, name


def test_conversion_is_strict_and_reports_every_problem():
  config = CASES["t4s8"][0]
  state_dict = _state_dict(_random_diffusers(config))
  broken = dict(state_dict)
  del broken["decoder.up_blocks.0.upsamplers.0.conv2.weight"]
  broken["encoder.down_blocks.0.resnets.0.conv3.weight"] = np.zeros((16, 16, 1, 1, 1))
  broken["quant_conv.weight"] = np.zeros((8, 8, 1, 1, 3))
  broken["encoder.patch_embed.wavelets"] = np.ones(2)  # a buffer: ignored
  with pytest.raises(CosmosConversionError) as info:
    diffusers_to_flax(broken, config)
  message = str(info.value)
  for key in ("decoder.up_blocks.0.upsamplers.0.conv2.weight",
              "encoder.down_blocks.0.resnets.0.conv3.weight", "quant_conv.weight"):
    assert key in message
  assert "(8, 8, 1, 1, 3)" in message and "(8, 8, 1, 1, 1)" in message
  assert info.value.missing == ["decoder.up_blocks.0.upsamplers.0.conv2.weight"]
  assert info.value.unexpected == ["encoder.down_blocks.0.resnets.0.conv3.weight"]
  assert list(info.value.mismatched) == ["quant_conv.weight"]
  with pytest.raises(CosmosConversionError, match="original Cosmos-Tokenizer layout"):
    diffusers_to_flax(diffusers_to_original(state_dict), config)


def test_flax_to_diffusers_inverts_diffusers_to_flax():
  config = CASES["t8s8"][0]
  state_dict = _state_dict(_random_diffusers(config))
  params = diffusers_to_flax(state_dict, config)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      abstract_params(config))
  back = flax_to_diffusers({"params": params}, config)
  assert sorted(back) == sorted(state_dict)
  for key, value in state_dict.items():
    assert back[key].dtype == np.float32 and np.array_equal(back[key], value), key
  with pytest.raises(CosmosConversionError, match="missing"):
    flax_to_diffusers({k: v for k, v in params.items() if k != "quant_conv"}, config)


def _assert_same_tree(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_loading_files_directories_and_original_layout(tmp_path):
  config = CASES["t4s8"][0]
  torch_model = _random_diffusers(config)
  state_dict = _state_dict(torch_model)
  params = diffusers_to_flax(state_dict, config)

  # A diffusers directory: the config comes from its config.json.
  torch_model.save_pretrained(tmp_path / "diffusers")
  _assert_same_tree(convert(tmp_path / "diffusers"), params)
  with pytest.raises(ValueError, match="config.json describes"):
    convert(tmp_path / "diffusers", CASES["t8s8"][0])

  # .pt in bfloat16 with DDP/compile prefixes, widened to float32 on reading.
  torch.save({"state_dict": {f"module._orig_mod.{k}": v.to(torch.bfloat16)
                             for k, v in torch_model.state_dict().items()}},
             tmp_path / "bf16.pt")
  loaded = load_torch_state_dict(tmp_path / "bf16.pt")
  assert sorted(loaded) == sorted(state_dict)
  key = "encoder.conv_in.conv_s.weight"
  assert loaded[key].dtype == np.float32
  np.testing.assert_array_equal(
      loaded[key], torch.from_numpy(state_dict[key]).to(torch.bfloat16).float().numpy())

  # The original Cosmos-Tokenizer layout, split like encoder.jit / decoder.jit (with the
  # patcher buffers TorchScript saves), as .safetensors and .pt.
  original = diffusers_to_original(state_dict)
  assert detect_layout(original) == "original" and detect_layout(state_dict) == "diffusers"
  encoder = {k: v for k, v in original.items() if k.startswith(("encoder.", "quant_conv."))}
  encoder["encoder.patcher3d.wavelets"] = np.full(2, 0.5 ** 0.5, np.float32)
  decoder = {k: torch.from_numpy(v) for k, v in original.items() if k not in encoder}
  safetensors_io.save(encoder, str(tmp_path / "encoder.safetensors"))
  torch.save(decoder, tmp_path / "decoder.pt")
  _assert_same_tree(convert([tmp_path / "encoder.safetensors", tmp_path / "decoder.pt"],
                            config), params)

  # Files that disagree on a shared key.
  torch.save({"quant_conv.bias": torch.zeros(8)}, tmp_path / "other.pt")
  with pytest.raises(ValueError, match="quant_conv.bias"):
    load_torch_state_dict([tmp_path / "encoder.safetensors", tmp_path / "diffusers",
                           tmp_path / "other.pt"])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_files_are_read(tmp_path):
  module = torch.jit.script(torch.nn.Conv3d(2, 3, 1))
  module.save(str(tmp_path / "conv.jit"))
  loaded = load_torch_state_dict(str(tmp_path / "conv.jit"))
  assert sorted(loaded) == ["bias", "weight"]
  np.testing.assert_array_equal(loaded["weight"], module.weight.detach().numpy())
