"""The authors' PyTorch key layout: strict import, bit-exact export/import, file formats.

These tests need no PyTorch except the `.pt` round trip (PyTorch is a test dependency).
"""

import argparse

import jax
import ml_dtypes
import numpy as np
import pytest
import torch

from conftest import perturb, small_config
from videomar_jax import interop
from videomar_jax.interop import torch_checkpoint as checkpoints, layout
from videomar_jax.io import safetensors_io
from videomar_jax.train.setup import make_model


def _text_config(scan_layers=True):
  config = small_config(scan_layers=scan_layers)
  config.model.context.kind = "text"
  config.model.context.dim = 12
  config.model.context.length = 5
  return config


def _params(config, seed=0):
  return perturb(make_model(config).init(jax.random.key(seed)), jax.random.key(seed + 1))


def _assert_bit_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_export_then_import_is_bit_exact(tmp_path, scan_layers, suffix):
  config = _text_config(scan_layers)
  params = _params(config)
  path = str(tmp_path / f"model{suffix}")
  interop.export_params(params, config, path)
  _assert_bit_equal(params, interop.load_params(path, config))


def test_authors_key_names_and_shapes():
  config = _text_config()
  d, hd, c = 32, 16, make_model(config).token_dim
  state_dict = layout.flax_to_torch(_params(config), config.model.depth)
  expected = {
      "z_proj.weight": (d, c), "z_proj.bias": (d,), "mask_token": (1, 1, d),
      "context_embed.weight": (d, 12), "fake_latent": (1, 5, d), "decoder_norm.bias": (d,),
      "decoder_blocks.1.attn1.wqkv.weight": (3 * d, d), "decoder_blocks.1.attn1.wo.weight": (d, d),
      "decoder_blocks.0.attn1.q_norm.weight": (hd,), "decoder_blocks.0.attn2.wkv.weight": (2 * d, d),
      "decoder_blocks.0.attn2.wq.weight": (d, d), "decoder_blocks.0.ff.net.0.proj.weight": (4 * d, d),
      "decoder_blocks.0.ff.net.2.weight": (d, 4 * d), "decoder_blocks.0.scale_shift_table": (6, d),
      "decoder_blocks.0.norm2.weight": (d,),
      "diffloss.net.time_embed.mlp.0.weight": (32, 256),
      "diffloss.net.res_blocks.0.adaLN_modulation.1.weight": (96, 32),
      "diffloss.net.res_blocks.0.in_ln.weight": (32,),
      "diffloss.net.final_layer.linear.weight": (2 * c, 32),
      "diffloss.net.final_layer.adaLN_modulation.1.bias": (64,),
  }
  for key, shape in expected.items():
    assert state_dict[key].shape == shape, key
  assert not [k for k in state_dict if "norm_final" in k]  # MAR's final norm has no affine
  # top level 8, 16 per block, head: input_proj, time_embed, cond_embed 8, 8 per res block, final 4
  assert len(state_dict) == 8 + 2 * 16 + 8 + 8 * 1 + 4


def test_fused_qkv_is_laid_out_per_head():
  """Step-Video's `wqkv` output features are ordered (head, q/k/v, head_dim)."""
  config = _text_config(scan_layers=False)
  params = _params(config)
  kernel = np.asarray(params["transformer"]["blocks_0"]["attn1"]["wqkv"]["kernel"])  # [D,H,3,hd]
  weight = layout.flax_to_torch(params, 2)["decoder_blocks.0.attn1.wqkv.weight"]
  hd = kernel.shape[-1]
  head, which = 1, 2  # head 1's values
  rows = weight[(head * 3 + which) * hd:(head * 3 + which + 1) * hd]
  np.testing.assert_array_equal(rows, kernel[:, head, which, :].T)


def test_strict_import_lists_missing_unexpected_and_misshaped_keys(tmp_path):
  config = _text_config()
  state_dict = layout.flax_to_torch(_params(config), config.model.depth)
  del state_dict["decoder_blocks.1.attn2.wo.weight"]
  state_dict["diffusion_pos_embed_learned"] = np.zeros((1, 4, 32), np.float32)
  state_dict["mask_token"] = np.zeros((1, 1, 33), np.float32)
  path = str(tmp_path / "bad.safetensors")
  safetensors_io.save(state_dict, path)
  with pytest.raises(layout.LayoutError) as error:
    interop.load_params(path, config)
  message = str(error.value)
  assert "bad.safetensors" in message
  assert "1 missing, 1 unexpected, 1 mis-shaped" in message
  assert "missing (1; shape the config expects):\n  decoder_blocks.1.attn2.wo.weight" in message
  assert "unexpected (1; shape in the checkpoint):\n  diffusion_pos_embed_learned [1, 4, 32]" in message
  assert "  mask_token [1, 1, 33] -> [1, 1, 32]" in message


def test_training_checkpoint_wrappers_and_prefixes(tmp_path):
  config = _text_config()
  raw, ema = _params(config, 0), _params(config, 5)
  to_torch = lambda p, prefix="": {prefix + k: torch.from_numpy(np.array(v)) for k, v in
                                   layout.flax_to_torch(p, config.model.depth).items()}
  path = str(tmp_path / "checkpoint-last.pth")
  torch.save({"model": to_torch(raw, "module."), "model_ema": to_torch(ema),
              "args": argparse.Namespace(model="videomar"), "epoch": 3}, path)
  _assert_bit_equal(ema, interop.load_params(path, config))  # auto: the EMA weights
  _assert_bit_equal(raw, interop.load_params(path, config, which="model"))
  with pytest.raises(checkpoints.CheckpointFileError, match="entry 'model' is a dict, not a tensor"):
    interop.load_params(path, config, which="bare")
  bf16 = str(tmp_path / "bf16.pt")
  torch.save({k: v.bfloat16() for k, v in to_torch(raw).items()}, bf16)
  loaded = interop.load_params(bf16, config)
  assert all(np.asarray(x).dtype == np.float32 for x in jax.tree_util.tree_leaves(loaded))


def test_safetensors_reader_matches_the_reference_library_and_rejects_corrupt_files(tmp_path):
  import safetensors.torch  # pylint: disable=import-outside-toplevel
  tensors = {"a": torch.randn(3, 5).bfloat16(), "b": torch.arange(7), "c": torch.randn(2)}
  path = str(tmp_path / "x.safetensors")
  safetensors.torch.save_file(tensors, path)
  ours = safetensors_io.load(path)
  for name, value in tensors.items():
    np.testing.assert_array_equal(np.asarray(ours[name], np.float64),
                                  value.double().numpy() if value.is_floating_point()
                                  else value.numpy())
  safetensors_io.save(ours, str(tmp_path / "y.safetensors"))
  again = safetensors.torch.load_file(str(tmp_path / "y.safetensors"))
  assert again["a"].dtype == torch.bfloat16 and torch.equal(again["a"], tensors["a"])

  # Lazy: the header is read at once, each tensor's bytes only when it is converted.
  lazy = safetensors_io.open_lazy(path)
  assert sorted(lazy) == ["a", "b", "c"] and lazy["a"].shape == (3, 5)
  assert lazy["a"].dtype == ml_dtypes.bfloat16 and lazy["b"].dtype == np.int64
  safetensors.torch.save_file({**tensors, "c": tensors["c"] + 1}, path)  # same layout
  np.testing.assert_array_equal(np.asarray(lazy["c"]), (tensors["c"] + 1).numpy())

  with open(path, "rb") as f:
    data = f.read()
  with open(tmp_path / "truncated.safetensors", "wb") as f:
    f.write(data[:-6])
  with pytest.raises(safetensors_io.SafetensorsError, match="truncated or corrupt"):
    safetensors_io.load(str(tmp_path / "truncated.safetensors"))
  with open(tmp_path / "garbage.safetensors", "wb") as f:
    f.write(b"\xff" * 64)
  with pytest.raises(safetensors_io.SafetensorsError, match="header length"):
    safetensors_io.load(str(tmp_path / "garbage.safetensors"))
  with open(tmp_path / "garbage.pt", "wb") as f:
    f.write(b"not a zip file")
  with pytest.raises(checkpoints.CheckpointFileError, match="garbage.pt: not a loadable"):
    interop.load_params(str(tmp_path / "garbage.pt"), _text_config())
