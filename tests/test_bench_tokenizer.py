"""`videomar bench tokenizer` times diffusers' AutoencoderKLCosmos next to the Flax port
when torch is installed, and says why not when it is not."""

import sys

import torch  # the [torch] extra, as in test_cosmos_parity.py

from videomar_jax.tools.bench_tokenizer import bench_tokenizer

VARIANT = "CV4x8x8-narrow"
NUM_FRAMES, RESOLUTION = 9, 32  # 1 + 4 * 2 frames -> 3 latent frames of 4 x 4


def test_bench_tokenizer_times_diffusers_on_the_same_shapes():
  threads = torch.get_num_threads()
  result = bench_tokenizer(VARIANT, num_frames=NUM_FRAMES, resolution=RESOLUTION, repeats=1)
  assert result["latent_shape"] == [1, 3, 4, 4, 16]
  assert result["encode_seconds"] > 0 and result["decode_seconds"] > 0
  for key in ("torch_encode_seconds", "torch_decode_seconds", "speedup_encode_over_torch",
              "speedup_decode_over_torch"):
    assert result[key] > 0, key
  assert result["speedup_encode_over_torch"] == (result["torch_encode_seconds"]
                                                 / result["encode_seconds"])
  assert result["torch_threads"] >= 1
  assert torch.get_num_threads() == threads  # the caller's torch setting is restored


def test_bench_tokenizer_without_torch_reports_jax_figures_only(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  monkeypatch.setitem(sys.modules, "diffusers", None)
  result = bench_tokenizer(VARIANT, num_frames=NUM_FRAMES, resolution=RESOLUTION, repeats=1)
  assert result["encode_seconds"] > 0 and result["decode_seconds"] > 0
  assert result["torch_comparison"].startswith("skipped:")
  assert "\n" not in result["torch_comparison"]
  assert not [key for key in result if key.startswith(("torch_encode", "torch_decode",
                                                         "speedup_"))]
