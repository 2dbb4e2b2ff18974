"""This JAX model against the independent PyTorch reference (`interop/torch_reference.py`)."""

import argparse
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from conftest import REPO, small_config
from videomar_jax import interop
from videomar_jax.interop import torch_checkpoint as checkpoints, layout, torch_reference, verify
from videomar_jax.models import sequence
from videomar_jax.train.setup import make_model
from videomar_jax.models.diffusion_head import SimpleMLPAdaLN


def _config(kind="text", dtype="float32"):
  config = small_config()
  config.model.dtype = dtype
  config.model.context.kind = kind
  if kind == "text":
    config.model.context.dim, config.model.context.length = 12, 5
  elif kind == "class":
    config.model.context.num_classes = 7
  return config


def _torch_checkpoint(config, path, seed=0):
  net = torch_reference.randomize_(verify.torch_model(config), seed=seed)
  torch.save(net.state_dict(), path)
  return net


@pytest.mark.parametrize("kind", ["none", "class", "text"])
def test_random_torch_weights_convert_and_verify_in_float32(tmp_path, kind):
  config = _config(kind)
  net = _torch_checkpoint(config, tmp_path / "model.pt")
  state_dict, _ = checkpoints.read_state_dict(str(tmp_path / "model.pt"))
  report, outputs = verify.verify(config, state_dict, verify.random_inputs(config, seed=1))
  assert report.passed, report.table()
  # float32 round-off only: ~1e-7 relative per layer, growing to 1-2e-6 through the head's
  # matmuls (how much depends on the CPU kernels of the installed jaxlib/torch: input_proj
  # was once bit-equal and is now 2e-7 off). bf16 compute is ~1e-2 off, so 1e-5 still tells
  # a float32 run from anything else.
  assert max(d.max_rel for d in report.layers if d.name != "loss_per_token") < 1e-5, (
      report.table())
  # The converted parameters are the ones verify used: running the reference directly on
  # the same inputs gives the reference's own outputs.
  inputs = verify.random_inputs(config, seed=1)
  again = verify.torch_forward(config, net, inputs)
  np.testing.assert_array_equal(again["z"], outputs["torch/z"])
  # Every block does real work (random gates are not near zero), so a wrong block shows.
  change = np.abs(outputs["torch/block_1"] - outputs["torch/block_0"]).max()
  assert change > 0.1 * np.abs(outputs["torch/block_0"]).max()


def test_learned_position_table_converts_and_verifies(tmp_path):
  """model.pos_embed_size (beyond the paper): one `pos_embed_learned` tensor, added after
  the mask token in both implementations; rows/columns come from the token positions."""
  config = _config("none")
  config.model.pos_embed_size = 6  # the random inputs are 4 x 6 tokens a frame
  net = _torch_checkpoint(config, tmp_path / "model.pt")
  assert tuple(net.state_dict()["pos_embed_learned"].shape) == (6, 6, 32)
  state_dict, _ = checkpoints.read_state_dict(str(tmp_path / "model.pt"))
  report, _ = verify.verify(config, state_dict, verify.random_inputs(config, seed=1))
  assert report.passed, report.table()
  assert max(d.max_rel for d in report.layers if d.name != "loss_per_token") < 1e-5, (
      report.table())


def test_bfloat16_needs_and_meets_its_looser_tolerance(tmp_path):
  config = _config("text", "bfloat16")
  _torch_checkpoint(config, tmp_path / "model.pt")
  state_dict, _ = checkpoints.read_state_dict(str(tmp_path / "model.pt"))
  inputs = verify.random_inputs(config)
  report, _ = verify.verify(config, state_dict, inputs)
  assert report.passed and report.tolerance == verify.TOLERANCES["bfloat16"], report.table()
  strict, _ = verify.verify(config, state_dict, inputs, tolerance=verify.TOLERANCES["float32"])
  assert not strict.passed  # bfloat16 really ran: it is outside the float32 tolerance


def test_a_corrupted_layer_is_reported_as_the_first_divergence(tmp_path):
  config = _config("text")
  net = _torch_checkpoint(config, tmp_path / "model.pt")
  state_dict = {k: v.numpy() for k, v in net.state_dict().items()}
  params = layout.torch_to_flax(state_dict, make_model(config).abstract_params(), 2)
  inputs = verify.random_inputs(config)
  torch_out = verify.torch_forward(config, net, inputs)
  # A small error in block 1's feed-forward output (scan layout: index 1 of the stack).
  kernel = params["transformer"]["blocks"]["ff_out"]["kernel"].copy()
  kernel[1] *= 1.01
  params["transformer"]["blocks"]["ff_out"]["kernel"] = kernel
  diffs = verify.compare(verify.jax_forward(config, params, inputs), torch_out, 2,
                         verify.TOLERANCES["float32"])
  status = {d.name: d.ok for d in diffs}
  assert status["input_proj"] and status["block_0"]
  assert next(d.name for d in diffs if not d.ok) == "block_1"


def test_positions_and_frame_causal_mask_agree_for_non_square_frames():
  for num_frames, h, w in [(1, 2, 5), (3, 4, 6), (4, 3, 2)]:
    positions, mask = torch_reference.frame_causal_layout(num_frames, h, w)
    np.testing.assert_array_equal(positions.numpy(),
                                  sequence.frame_positions(np.arange(num_frames), h, w))
    np.testing.assert_array_equal(mask.numpy(),
                                  np.asarray(sequence.frame_causal_mask(num_frames, h * w)))


def test_mar_layout_head_loads_and_matches(tmp_path):
  # A MAR training checkpoint: encoder/decoder weights we do not use, and `diffloss.net.*`
  # of a head over 48 token channels, 64 wide, 3 blocks, conditioned on width 32.
  config = small_config()
  config.head.width, config.head.depth = 64, 3
  net = torch_reference.randomize_(verify.torch_model(config), seed=3)
  head = {k: v for k, v in net.state_dict().items() if k.startswith("diffloss.net.")}
  assert checkpoints.mar_head_dims({k[13:]: v for k, v in head.items()}) == {
      "token_dim": 48, "width": 64, "depth": 3, "z_channels": 32}
  model_state = {**head, "encoder_blocks.0.attn.qkv.weight": torch.zeros(96, 32),
                 "diffusion_pos_embed_learned": torch.zeros(1, 64, 32)}
  path = str(tmp_path / "checkpoint-last.pth")
  torch.save({"model": model_state, "model_ema": model_state,
              "args": argparse.Namespace(model="mar_base")}, path)
  head_params = interop.load_mar_head(path, config)

  rng = np.random.default_rng(0)
  x = rng.standard_normal((10, 48)).astype(np.float32)
  t = rng.integers(0, 1000, 10)
  c = rng.standard_normal((10, 32)).astype(np.float32)
  jax_out = SimpleMLPAdaLN(48, 64, 96, 32, 3).apply({"params": head_params}, x, t, c)
  with torch.no_grad():
    torch_out = net.head(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(c))
  np.testing.assert_allclose(np.asarray(jax_out), torch_out.numpy(), rtol=1e-5, atol=1e-5)

  config.head.width = 128
  with pytest.raises(layout.LayoutError, match="'width': 64, 'depth': 3"):
    interop.load_mar_head(path, config)


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "videomar_jax.cli.main", *args],
                        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)


def test_verify_command_line(tmp_path):
  # The tiny preset resized to the checkpoint below (small_config's paper-method model).
  config_flags = [f"--config={REPO}/configs/videomar.py:tiny", "--config.model.width=32",
                  "--config.model.num_heads=2", "--config.head.width=32",
                  "--config.model.depth=2", "--config.head.depth=3",
                  "--config.model.pos_embed_size=0", "--config.model.rope_base=10000"]
  config = small_config()
  config.model.depth, config.model.scan_layers, config.head.depth = 2, False, 3
  _torch_checkpoint(config, tmp_path / "model.pt")
  result = _cli("verify", f"--torch_checkpoint={tmp_path}/model.pt", *config_flags,
                f"--json={tmp_path}/report.json", f"--outputs={tmp_path}/out.npz",
                "--verify_shape=1,2,3,5")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "PASS" in result.stdout and "block_1" in result.stdout
  with np.load(tmp_path / "out.npz") as out:
    for name in ("block_0", "block_1", "z", "head_out", "loss_per_token"):
      assert out[f"jax/{name}"].shape == out[f"torch/{name}"].shape
    assert out["jax/loss_per_token"].shape == (1, 2, 3, 5)

  # Inputs from a file; an impossible tolerance fails with a non-zero exit.
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "in.npz", tokens=rng.standard_normal((1, 2, 2, 2, 48)),
           mask=np.ones((1, 2, 2, 2)))
  result = _cli("verify", f"--torch_checkpoint={tmp_path}/model.pt", *config_flags,
                f"--inputs={tmp_path}/in.npz", "--tolerance=1e-12")
  assert result.returncode == 1 and "FAIL: first divergent layer" in result.stdout

  np.savez(tmp_path / "bad.npz", tokens=np.zeros((1, 2, 2, 2, 47)))
  result = _cli("verify", f"--torch_checkpoint={tmp_path}/model.pt", *config_flags,
                f"--inputs={tmp_path}/bad.npz")
  assert result.returncode != 0 and "tokens must be [B, T, h, w, 48]" in result.stderr
