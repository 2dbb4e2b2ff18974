"""The VideoMAR transformer: RoPE, scan/remat equivalences, logical axes, context, presets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, perturb, small_config
from videomar_jax.models import attention, rope, sequence
from videomar_jax.models.transformer import layers_to_scanned, scanned_to_layers
from videomar_jax.train.setup import make_model
from videomar_jax.models.videomar import VideoMAR

T, H, W = 3, 2, 3  # frames and token grid of the test sequences
N = H * W


def _inputs(model, rng, batch=2):
  tokens = jax.random.normal(rng, (batch, T * N, model.token_dim))
  is_masked = jax.random.bernoulli(jax.random.fold_in(rng, 1), 0.5, (batch, T * N))
  return (tokens, is_masked, sequence.frame_positions(range(T), H, W),
          sequence.frame_causal_mask(T, N))


def _model_and_params(seed=0, **overrides):
  model = make_model(small_config(**overrides))
  return model, perturb(model.init(jax.random.key(seed)), jax.random.key(seed + 1))


def test_rope_scores_depend_only_on_relative_position():
  split = rope.default_split(16)
  q = jax.random.normal(jax.random.key(0), (1, 5, 2, 16))
  k = jax.random.normal(jax.random.key(1), (1, 5, 2, 16))
  pos = jax.random.randint(jax.random.key(2), (5, 3), 0, 10)
  score = lambda p: jnp.einsum("bqhd,bkhd->bhqk", rope.apply_rope_3d(q, p, split),
                               rope.apply_rope_3d(k, p, split))
  np.testing.assert_allclose(score(pos), score(pos + jnp.array([7, 3, 11])), atol=1e-4)
  assert not np.allclose(score(pos), score(pos * 2), atol=1e-2)


def test_rope_split_is_validated():
  assert rope.resolve_split(64) == (32, 16, 16)
  assert rope.resolve_split(64, (16, 24, 24)) == (16, 24, 24)
  with pytest.raises(ValueError, match="rope_split"):
    rope.resolve_split(64, (32, 16, 8))


def test_custom_rope_split_changes_the_model():
  model, params = _model_and_params(rope_split=(8, 4, 4))
  other, _ = _model_and_params(rope_split=(4, 6, 6))
  inputs = _inputs(model, jax.random.key(3))
  assert not np.allclose(model.encode(params, *inputs), other.encode(params, *inputs))


def test_scanned_and_per_layer_models_agree_and_params_convert():
  scanned, params = _model_and_params(scan_layers=True)
  looped = make_model(small_config(scan_layers=False))
  depth = scanned.config.model.depth
  layer_params = dict(params, transformer=scanned_to_layers(params["transformer"], depth))
  assert jax.tree_util.tree_structure(layer_params) == jax.tree_util.tree_structure(
      looped.init(jax.random.key(0)))
  inputs = _inputs(scanned, jax.random.key(4))
  np.testing.assert_allclose(scanned.encode(params, *inputs),
                             looped.encode(layer_params, *inputs), atol=1e-5)
  back = layers_to_scanned(layer_params["transformer"], depth)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, params["transformer"])


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_keeps_outputs_and_gradients(policy):
  model, params = _model_and_params(remat_policy="none")
  remat = make_model(small_config(remat_policy=policy))
  inputs = _inputs(model, jax.random.key(5))
  loss = lambda m: lambda p: jnp.sum(m.encode(p, *inputs) ** 2)
  g1, g2 = jax.grad(loss(model))(params), jax.grad(loss(remat))(params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         g1, g2)


@pytest.mark.parametrize("chunk", [4, 7])  # 18 queries: even blocks, and a padded last one
def test_query_chunked_attention_keeps_outputs_and_gradients(chunk):
  model, params = _model_and_params(attention_chunk=0)
  chunked = make_model(small_config(attention_chunk=chunk))
  inputs = _inputs(model, jax.random.key(6))
  np.testing.assert_allclose(chunked.encode(params, *inputs), model.encode(params, *inputs),
                             rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda p: jnp.sum(m.encode(p, *inputs) ** 2)
  g1, g2 = jax.grad(loss(model))(params), jax.grad(loss(chunked))(params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         g1, g2)


def _all_frames_layout(num_frames=4, num_cond=1):
  frames = np.concatenate([np.arange(num_frames - 1), np.arange(num_cond, num_frames)])
  return frames, np.arange(len(frames)) >= num_frames - 1


@pytest.mark.parametrize("layout", ["all_frames", "frame_causal"])
def test_frame_block_mask_means_the_dense_mask(layout):
  frames, is_target = (_all_frames_layout() if layout == "all_frames"
                       else (np.arange(4), np.zeros(4, bool)))
  dense = sequence.attention_mask(*2 * (np.repeat(frames, N), np.repeat(is_target, N)))
  block = sequence.frame_block_mask(frames, is_target, N)
  assert isinstance(block, attention.FrameBlockMask)
  assert block.num_computed_blocks < len(frames) ** 2
  np.testing.assert_array_equal(block.dense(), dense)
  # Not worth it (fewer than min_saving of the blocks skipped): the dense mask itself.
  np.testing.assert_array_equal(
      sequence.frame_block_mask(frames, is_target, N, min_saving=0.9), dense)


@pytest.mark.parametrize("chunk", [0, 7])  # 7: the query-chunked path takes the dense form
def test_frame_block_attention_keeps_outputs_and_gradients(chunk):
  frames, is_target = _all_frames_layout()
  block = sequence.frame_block_mask(frames, is_target, N)
  dense = block.dense()[None, None]
  q, k, v = (jax.random.normal(jax.random.key(i), (2, len(frames) * N, 2, 4)) for i in range(3))
  run = lambda mask: lambda q, k, v: attention.dot_product_attention(q, k, v, mask, chunk)
  np.testing.assert_allclose(run(block)(q, k, v), run(dense)(q, k, v), rtol=1e-5, atol=1e-6)
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  g1 = jax.grad(loss(run(block)), argnums=(0, 1, 2))(q, k, v)
  g2 = jax.grad(loss(run(dense)), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="does not fit"):
    attention.dot_product_attention(q[:, :N], k, v, block)


def test_flop_count_follows_the_blocks_attention_computes():
  from videomar_jax.tools import flops  # pylint: disable=g-import-not-at-top
  from videomar_jax.losses import next_frame  # pylint: disable=g-import-not-at-top
  frames, is_target = next_frame.sequence_frames("all_frames", 8, 1)
  block = sequence.frame_block_mask(frames, is_target, N)
  assert block.num_computed_blocks == 81  # of 14 x 14
  assert sequence.attended_key_fraction(frames, is_target) == 81 / 196
  config = load_config("tiny")
  sparse = flops.train_flops_per_example(config, 8, 32, 48)
  config.model.attention_chunk = 64  # query chunks take the dense mask
  dense = flops.train_flops_per_example(config, 8, 32, 48)
  s, d, depth = 14 * 64, config.model.width, config.model.depth
  assert dense - sparse == pytest.approx(3 * depth * s * 2 * 2 * d * s * (1 - 81 / 196))


def _context_model(kind):
  config = small_config()
  config.model.context.kind = kind
  config.model.context.num_classes = 5
  config.model.context.dim, config.model.context.length = 12, 3
  model = make_model(config)
  return model, perturb(model.init(jax.random.key(0)), jax.random.key(1))


@pytest.mark.parametrize("kind", ["none", "class", "text"])
def test_every_parameter_has_logical_axis_names(kind):
  model, _ = _context_model(kind)
  specs = model.logical_axes()
  shapes = model.abstract_params()
  flat_specs = jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  flat_shapes = jax.tree_util.tree_leaves(shapes)
  assert len(flat_specs) == len(flat_shapes)
  for spec, shape in zip(flat_specs, flat_shapes):
    assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) == len(shape.shape)
    assert any(name is not None for name in spec), spec
  assert specs["transformer"]["blocks"]["attn1"]["wqkv"]["kernel"] == (
      jax.sharding.PartitionSpec("layers", "embed", "heads", "qkv", "kv"))


def test_text_context_padding_and_null_context():
  model, params = _context_model("text")
  inputs = _inputs(model, jax.random.key(6))
  text = jax.random.normal(jax.random.key(7), (2, 3, 12))
  pad = jnp.array([[True, True, False], [True, True, True]])
  z = model.encode(params, *inputs, context=text, context_mask=pad)
  # A padded context token's value cannot matter.
  z_pad = model.encode(params, *inputs, context=text.at[0, 2].set(99.0), context_mask=pad)
  np.testing.assert_allclose(z, z_pad, atol=1e-5)
  # The context matters, and dropping it is exactly the null context.
  z_other = model.encode(params, *inputs, context=-text, context_mask=pad)
  assert not np.allclose(z, z_other, atol=1e-3)
  dropped = model.encode(params, *inputs, context=text, context_mask=pad,
                         drop_context=jnp.array([True, False]))
  null = model.encode(params, *inputs)
  np.testing.assert_allclose(dropped[0], null[0], atol=1e-5)
  np.testing.assert_allclose(dropped[1], z[1], atol=1e-5)
  with pytest.raises(ValueError, match="text context"):
    model.encode(params, *inputs, context=jnp.zeros((2, 3, 7)))


def test_class_label_context():
  model, params = _context_model("class")
  inputs = _inputs(model, jax.random.key(8))
  z1 = model.encode(params, *inputs, context=jnp.array([1, 2]))
  z2 = model.encode(params, *inputs, context=jnp.array([1, 3]))
  np.testing.assert_allclose(z1[0], z2[0], atol=1e-5)
  assert not np.allclose(z1[1], z2[1], atol=1e-3)
  with pytest.raises(ValueError, match="class labels"):
    model.encode(params, *inputs, context=jnp.array([[1, 2]]))


def test_no_context_model_rejects_a_context():
  model, params = _model_and_params()
  with pytest.raises(ValueError, match="kind is 'none'"):
    model.encode(params, *_inputs(model, jax.random.key(0)), context=jnp.array([1, 2]))


def test_bfloat16_compute_is_close_to_float32():
  model, params = _model_and_params()
  bf16 = make_model(small_config(dtype="bfloat16"))
  inputs = _inputs(model, jax.random.key(9))
  z32, z16 = model.encode(params, *inputs), bf16.encode(params, *inputs)
  assert z16.dtype == jnp.float32 and np.all(np.isfinite(z16))
  assert np.max(np.abs(z32 - z16)) < 0.1


def test_wrong_token_width_is_a_clear_error():
  model, params = _model_and_params()
  tokens, is_masked, pos, mask = _inputs(model, jax.random.key(0))
  with pytest.raises(ValueError, match="channels"):
    model.encode(params, tokens[..., :-1], is_masked, pos, mask)


def test_presets_parameter_counts():
  counts = {}
  for preset in ("tiny", "tiny_long", "small", "base", "paper"):
    model = make_model(load_config(preset))
    counts[preset] = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(
        model.abstract_params()))
  assert counts["tiny"] < counts["small"] < counts["base"] < counts["paper"]
  assert counts["tiny_long"] == counts["tiny"]
  assert 1.3e9 < counts["paper"] < 1.5e9, counts  # the paper's "1.4B"


def test_tiny_long_is_the_tiny_recipe_trained_longer():
  tiny, long = load_config("tiny").to_dict(), load_config("tiny_long").to_dict()
  tiny_stages, long_stages = tiny.pop("stages"), long.pop("stages")
  assert (tiny.pop("preset"), long.pop("preset")) == ("tiny", "tiny_long")
  # r18: every crop from rest (where generation starts), 8800 4-frame + 500 8-frame steps.
  assert (tiny["data"].pop("crop_first_frame_prob"),
          long["data"].pop("crop_first_frame_prob")) == (0.5, 1.0)
  assert long == tiny
  assert [(s["num_frames"], s["steps"]) for s in long_stages] == [(4, 8800), (8, 500)]
  for a, b in zip(tiny_stages, long_stages):
    assert {**a, "steps": 0, "num_frames": 0} == {**b, "steps": 0, "num_frames": 0}