"""`videomar torch keys`: what a checkpoint holds, the config that matches it, key maps."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs.videomar import get_config
from videomar_jax import interop
from videomar_jax.interop import keys, layout
from videomar_jax.io import safetensors_io
from videomar_jax.train.setup import make_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "videomar.py")


def _config(*overrides, preset="tiny"):
  """The config `--config=configs/videomar.py:<preset> <overrides>` gives on the CLI (each
  value parsed as the type of the field it sets, as the CLI's override flags do)."""
  config = get_config(preset)
  for flag in overrides:
    path, value = flag.removeprefix("--config.").split("=", 1)
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
      node = node[name]
    kind = type(node[leaf])
    node[leaf] = (value.lower() == "true") if kind is bool else kind(value)
  return config


# Three architectures unlike each other and unlike the presets they are parsed against.
SIZES = {
    "text": ("--config.model.context.kind=text", "--config.model.context.dim=24",
             "--config.model.context.length=7"),
    "class": ("--config.model.width=96", "--config.model.depth=3", "--config.model.num_heads=3",
              "--config.model.mlp_ratio=2", "--config.head.width=64", "--config.head.depth=3",
              "--config.model.pos_embed_size=0", "--config.model.context.kind=class",
              "--config.model.context.num_classes=10"),
    "cosmos": ("--config.model.width=64", "--config.model.depth=2", "--config.model.num_heads=2",
               "--config.tokenizer.name=cosmos", "--config.tokenizer.variant=CV4x8x8",
               "--config.tokenizer.latent_channels=16", "--config.head.width=32",
               "--config.head.depth=1"),
}


def _state_dict(config, seed=0):
  """Random tensors in the authors' layout for `config` (no model is run)."""
  shapes = layout.expected_torch_shapes(make_model(config).abstract_params(), config.model.depth)
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_inferred_overrides_rebuild_the_checkpoints_layout(name):
  original = _config(*SIZES[name])
  state_dict = _state_dict(original)
  sizes = keys.infer_sizes(state_dict)
  assert sizes["width"] == original.model.width and sizes["depth"] == original.model.depth
  assert sizes["num_heads"] == original.model.num_heads
  # Parsed against a different preset, the printed overrides give exactly this layout.
  rebuilt = _config(*keys.config_overrides(sizes), preset="small")
  expected = layout.expected_torch_shapes(make_model(rebuilt).abstract_params(),
                                          rebuilt.model.depth)
  assert keys.diff_report(state_dict, expected) == ""
  assert {k: tuple(v.shape) for k, v in state_dict.items()} == expected


def test_summary_groups_blocks_and_counts_parameters():
  state_dict = _state_dict(_config(*SIZES["class"]))
  text = keys.summarize(state_dict, "ckpt")
  total = sum(v.size for v in state_dict.values())
  assert text.splitlines()[0] == f"ckpt: {len(state_dict)} tensors, {total:,} parameters (float32: {len(state_dict)})"
  assert "  decoder_blocks.{0-2}.attn1.wqkv.weight [288, 96] x3" in text
  assert "  class_emb.weight [10, 96]" in text
  assert "diffloss.net.res_blocks.{0-2}.mlp.{0,2}.weight [64, 64] x6" in text
  block_line = next(l for l in text.splitlines() if l.startswith("decoder_blocks:"))
  block_params = sum(v.size for k, v in state_dict.items() if k.startswith("decoder_blocks."))
  assert block_line.startswith(f"decoder_blocks: {16 * 3} tensors, {block_params:,} parameters")


def test_diff_is_grouped_not_one_line():
  state_dict = _state_dict(_config())
  small = _config(preset="small")
  expected = layout.expected_torch_shapes(make_model(small).abstract_params(), small.model.depth)
  report = keys.diff_report(state_dict, expected)
  lines = report.splitlines()
  assert lines[0].endswith("mis-shaped:") and len(lines) < 80
  assert "  decoder_blocks.{4,5}.attn1.wqkv.weight [768, 256] x2" in lines  # missing blocks
  assert "  decoder_blocks.{0-3}.attn1.wqkv.weight [384, 128] -> [768, 256] x4" in lines
  assert "  pos_embed_learned [8, 8, 128]" in lines  # unexpected: small has no table


def _renamed(state_dict):
  out = {}
  for k, v in state_dict.items():
    k = k.replace("decoder_blocks.", "blocks.").replace("diffloss.net.", "head.")
    out[k.replace("z_proj.", "input_embed.")] = v
  return out


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_key_map_loads_renamed_checkpoints(tmp_path, suffix):
  config = _config()
  state_dict = _state_dict(config, seed=3)
  params = layout.torch_to_flax(state_dict, make_model(config).abstract_params(),
                                config.model.depth)
  path = str(tmp_path / "renamed.safetensors")
  safetensors_io.save(_renamed(state_dict), path)
  with pytest.raises(layout.LayoutError, match="missing"):
    interop.load_params(path, config)
  rules = [["^blocks\\.", "decoder_blocks."], ["^head\\.", "diffloss.net."],
           ["^input_embed\\.", "z_proj."]]
  key_map = str(tmp_path / f"map{suffix}")
  with open(key_map, "w") as f:
    if suffix == ".json":
      json.dump(dict(rules), f)
    else:
      f.write("".join(f"'{p}': '{r}'\n" for p, r in rules))
  loaded = interop.load_params(path, config, key_map=key_map)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_key_map_errors(tmp_path):
  def write(name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)
  with pytest.raises(keys.KeyMapError, match="no such file"):
    keys.load_key_map(str(tmp_path / "none.json"))
  with pytest.raises(keys.KeyMapError, match="not valid JSON"):
    keys.load_key_map(write("a.json", "{"))
  with pytest.raises(keys.KeyMapError, match="bad regex"):
    keys.load_key_map(write("b.json", '{"(": "x"}'))
  with pytest.raises(keys.KeyMapError, match="a mapping"):
    keys.load_key_map(write("c.json", '"text"'))
  rules = keys.load_key_map(write("d.json", '[["^a\\\\.", "c."], ["^b\\\\.", "c."]]'))
  with pytest.raises(keys.KeyMapError, match="renames both 'a.x' and 'b.x' to 'c.x'"):
    keys.apply_key_map({"a.x": 1, "b.x": 2}, rules)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "videomar_jax.cli.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_lists_suggests_and_diffs(tmp_path):
  config = _config(*SIZES["class"])
  state_dict = _state_dict(config)
  path = str(tmp_path / "model.safetensors")
  safetensors_io.save(_renamed(state_dict), path)
  key_map = tmp_path / "map.json"
  key_map.write_text(json.dumps({"^blocks\\.": "decoder_blocks.", "^head\\.": "diffloss.net.",
                                 "^input_embed\\.": "z_proj."}))
  result = _cli("torch", "keys", f"--torch_checkpoint={path}", f"--key_map={key_map}")
  assert result.returncode == 0, result.stderr
  assert "decoder_blocks.{0-2}.ff.net.0.proj.weight [192, 96] x3" in result.stdout
  overrides = [line.strip().rstrip(" \\") for line in
               result.stdout.split("Matching config overrides:")[1].strip().splitlines()]
  assert "--config.model.context.num_classes=10" in overrides
  result = _cli("torch", "keys", f"--torch_checkpoint={path}", f"--key_map={key_map}",
                f"--config={CONFIG}:tiny", *overrides)
  assert result.returncode == 0 and "matches the config" in result.stdout, result.stderr
  # Without the map: the diff, grouped, and exit status 1; a broken map: one line.
  result = _cli("torch", "keys", f"--torch_checkpoint={path}", f"--config={CONFIG}:tiny",
                *overrides)
  assert result.returncode == 1
  assert "  blocks.{0-2}.attn1.wqkv.weight [288, 96] x3" in result.stdout
  key_map.write_text("{")
  result = _cli("torch", "keys", f"--torch_checkpoint={path}", f"--key_map={key_map}")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().startswith("ERROR: --key_map=") and len(result.stderr.strip().splitlines()) == 1
