"""State dicts of NVIDIA's own Cosmos tokenizer network convert, and encode / decode as it.

NVIDIA's `EncoderFactorized` / `DecoderFactorized` give every hybrid resampler conv1, conv2
and conv3 and only then switch directions off, so their state dicts carry convs that never
run; `convert` must drop exactly those (for each variant and for `legacy_mode`) and still
reject anything else. The reference network is `nvidia_cosmos_reference.py` (written from
NVIDIA's module definitions).
"""

import dataclasses

import numpy as np
import pytest
import torch

import jax
from nvidia_cosmos_reference import CausalContinuousVideoTokenizer
from videomar_jax.tokenizers.cosmos.convert import (CosmosConversionError, convert,
                                                 expected_diffusers_shapes,
                                                 unused_resampler_keys)
from videomar_jax.tokenizers.cosmos.keys import original_to_diffusers
from videomar_jax.tokenizers.cosmos import VARIANTS, CosmosAutoencoder

REL_TOL = 1e-4  # max |flax - torch| / max |torch|, float32
RELEASED = ("CV4x8x8", "CV8x8x8", "CV8x16x16")


def _legacy(config):
  return dataclasses.replace(config, legacy_mode=True)


# name -> (config, pixel frames): each released variant's structure at narrow widths, and
# the legacy decoders (their temporal up-sampling in the first up block instead).
CASES = {f"{v}-narrow": (VARIANTS[f"{v}-narrow"], 9) for v in RELEASED}
CASES.update({f"{v}-narrow-legacy": (_legacy(VARIANTS[f"{v}-narrow"]), 9)
              for v in ("CV8x8x8", "CV8x16x16")})


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # tiny models: torch's thread pool only adds overhead on 2 cores
  yield
  torch.set_num_threads(threads)


def _random_reference(config, seed=0):
  model = CausalContinuousVideoTokenizer(config).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if ".norm." in name and name.endswith(".weight"):
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
      elif name.endswith(".bias"):
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))
      else:
        gain = 2.0 if (".q." in name or ".k." in name) else 1.0
        p.copy_(gain * torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
  return model


def _channels_last(x):
  return x.detach().numpy().transpose(0, 2, 3, 4, 1)


@pytest.mark.parametrize("name", RELEASED)
@pytest.mark.parametrize("legacy", [False, True], ids=["default", "legacy"])
def test_full_size_key_sets(name, legacy):
  """NVIDIA's full-size key set (built on the meta device) = the Flax network's after
  renaming, except exactly the switched-off resampler convs."""
  config = _legacy(VARIANTS[name]) if legacy else VARIANTS[name]
  with torch.device("meta"):
    reference = CausalContinuousVideoTokenizer(config)
  # Zero-strided stand-ins: the right shapes at no memory cost.
  stand_ins = {k: np.broadcast_to(np.float32(0), v.shape)
               for k, v in reference.state_dict().items()}
  renamed = {k: v.shape for k, v in original_to_diffusers(stand_ins).items()}
  expected = expected_diffusers_shapes(config)
  unused = unused_resampler_keys(config)
  assert unused and unused == set(renamed) - set(expected)
  assert {k: s for k, s in renamed.items() if k not in unused} == expected
  # Every unused tensor belongs to a resampler that owns all three convs in NVIDIA's code.
  assert all(".downsamplers.0.conv" in k or ".upsamplers.0.conv" in k for k in unused)


def test_issue_example_cv8x8x8():
  # CV8x8x8: the encoder's second sampler and the decoder's first do nothing at all.
  assert unused_resampler_keys(VARIANTS["CV8x8x8"]) == {
      f"{blocks}.{i}.{s}.0.conv{k}.{p}"
      for blocks, i, s in (("encoder.down_blocks", 1, "downsamplers"),
                           ("decoder.up_blocks", 0, "upsamplers"))
      for k in (1, 2, 3) for p in ("weight", "bias")}
  # CV8x16x16: one unused direction on each side.
  assert unused_resampler_keys(VARIANTS["CV8x16x16"]) == {
      "encoder.down_blocks.1.downsamplers.0.conv2.weight",
      "encoder.down_blocks.1.downsamplers.0.conv2.bias",
      "decoder.up_blocks.0.upsamplers.0.conv1.weight",
      "decoder.up_blocks.0.upsamplers.0.conv1.bias"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_nvidia_state_dict_converts_and_matches(case, tmp_path):
  config, frames = CASES[case]
  reference = _random_reference(config)
  torch.save(reference.state_dict(), tmp_path / "model.pt")
  messages = []
  params = convert(tmp_path / "model.pt", config, log=messages.append)
  num_unused = len(unused_resampler_keys(config))
  assert len(messages) == 1 and f"dropped {num_unused} tensors" in messages[0]
  assert "switched-off" in messages[0]

  video = torch.rand(2, 3, frames, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
  with torch.no_grad():
    latents = reference.encode(video)
    decoded = reference.decode(latents)
  model = CosmosAutoencoder(config)
  z = jax.jit(lambda p, v: model.apply({"params": p}, v, method=CosmosAutoencoder.encode))(
      params, _channels_last(video))
  y = jax.jit(lambda p, v: model.apply({"params": p}, v, method=CosmosAutoencoder.decode))(
      params, _channels_last(latents))
  assert y.shape == (2, frames, 32, 48, 3)
  for what, got, want in (("latents", z, _channels_last(latents)),
                          ("decoded", y, _channels_last(decoded))):
    rel = float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())
    print(f"{case} {what}: max rel {rel:.3g}")
    assert rel <= REL_TOL, (what, rel)


def test_legacy_checkpoint_differs_from_default():
  # The two decoders run different convs: mixing them up would give wrong videos, which is
  # why legacy_mode is a config field rather than guessed from the keys.
  config = VARIANTS["CV8x8x8-narrow"]
  assert unused_resampler_keys(config) != unused_resampler_keys(_legacy(config))
  with pytest.raises(ValueError, match="legacy_mode"):
    _legacy(config).to_diffusers()


def test_other_unexpected_tensors_still_fail(tmp_path):
  config = VARIANTS["CV8x16x16-narrow"]
  state = _random_reference(config).state_dict()
  state["encoder.down.0.block.0.conv1.0.conv3d.extra"] = torch.zeros(1)  # no rule at all
  torch.save(state, tmp_path / "bad.pt")
  with pytest.raises(ValueError, match="conv1.0.conv3d.extra"):
    convert(tmp_path / "bad.pt", config, log=lambda m: None)
  # An unused conv of the wrong variant: CV8x8x8's fully switched-off decoder sampler is
  # not switched off in CV8x16x16 (only its conv1 is), so a missing conv2 is an error.
  state = _random_reference(config).state_dict()
  del state["decoder.up.2.upsample.conv2.conv3d.weight"]
  torch.save(state, tmp_path / "missing.pt")
  with pytest.raises(CosmosConversionError) as err:
    convert(tmp_path / "missing.pt", config, log=lambda m: None)
  assert err.value.missing == ["decoder.up_blocks.0.upsamplers.0.conv2.weight"]
