"""Sharded training over a (data, fsdp, tensor) mesh of 8 fake CPU devices.

The equivalence tests compare a sharded step with the same step on one device: the same
loss and gradients up to float32 reduction order (the sum over the batch and the matmul
contractions are split differently), checked at rtol 1e-5 and atol 1e-6 x max|value|.
"""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from conftest import perturb, small_config
from videomar_jax.data import pipeline
from videomar_jax.parallel import mesh as mesh_lib
from videomar_jax.parallel import partition, rules as rules_lib
from videomar_jax.sampling import generate as generate_lib
from videomar_jax.sampling.generate import SamplerSettings, generate
from videomar_jax.tokenizers import make_tokenizer
from videomar_jax.train import optimizer as optim_lib
from videomar_jax.train.checkpoint import Checkpointer
from videomar_jax.losses import next_frame
from videomar_jax.train.setup import make_model
from videomar_jax.train import setup
from videomar_jax.tokenizers.base import video_to_tokens
from videomar_jax.train.state import create_state, make_train_step


def _settings(model):
  return next_frame.LossSettings.from_config(model.config)


MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2)]

# Parameter -> mesh axes per dimension under the default rules on a (2, 2, 2) mesh, for the
# test model (scanned blocks: leading `layers` axis). embed -> fsdp, heads/mlp -> tensor,
# head_mlp -> fsdp, the rest replicated.
GOLDEN_SHARDINGS = {
    "transformer/z_proj/kernel": (None, "fsdp"),
    "transformer/z_proj/bias": ("fsdp",),
    "transformer/mask_token": (None, None, "fsdp"),
    "transformer/decoder_norm/scale": ("fsdp",),
    "transformer/blocks/scale_shift_table": (None, None, "fsdp"),
    "transformer/blocks/norm1/scale": (None, "fsdp"),
    "transformer/blocks/attn1/wqkv/kernel": (None, "fsdp", "tensor", None, None),
    "transformer/blocks/attn1/q_norm/scale": (None, None),
    "transformer/blocks/attn1/wo/kernel": (None, "tensor", None, "fsdp"),
    "transformer/blocks/ff_proj/kernel": (None, "fsdp", "tensor"),
    "transformer/blocks/ff_out/kernel": (None, "tensor", "fsdp"),
    "diffusion_head/input_proj/kernel": (None, None),
    "diffusion_head/cond_embed/kernel": ("fsdp", None),
    "diffusion_head/time_embed/mlp_0/kernel": (None, None),
    "diffusion_head/time_embed/mlp_2/kernel": (None, "fsdp"),
    "diffusion_head/res_blocks_0/adaLN_modulation_1/kernel": (None, "fsdp"),
    "diffusion_head/res_blocks_0/adaLN_modulation_1/bias": ("fsdp",),
    "diffusion_head/res_blocks_0/mlp_2/kernel": (None, "fsdp"),
    "diffusion_head/res_blocks_0/in_ln/scale": (None,),
    "diffusion_head/final_layer/linear/kernel": (None, None),
}


def _config():
  config = small_config()
  config.batch_size = 8
  return config


def _setup(config, mesh_shape):
  model = make_model(config)
  optimizer = optim_lib.make_optimizer(config.optim, config.batch_size, 100)
  mesh = mesh_lib.make_mesh(dict(zip(mesh_lib.MESH_AXES, mesh_shape)))
  rules = rules_lib.rules_from_config(config.sharding.rules)
  shardings = setup.state_shardings(model, optimizer, mesh, rules, config.seed)
  return model, optimizer, mesh, rules, shardings


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  return {"video": rng.integers(0, 256, (config.batch_size, 3, 16, 16, 3), np.uint8)}


def test_mesh_sizes_fill_and_errors():
  assert mesh_lib.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == {
      "data": 2, "fsdp": 2, "tensor": 2}
  assert mesh_lib.parse_mesh("data:4,fsdp:16") == {"data": 4, "fsdp": 16, "tensor": 1}
  with pytest.raises(ValueError, match="not divisible"):
    mesh_lib.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="only one mesh axis may be -1"):
    mesh_lib.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="has 4 devices, but 8"):
    mesh_lib.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="bad mesh entry 'pipeline:2'"):
    mesh_lib.parse_mesh("data:4,pipeline:2")


def test_parameter_shardings_match_the_golden_table():
  *_, shardings = _setup(_config(), (2, 2, 2))
  table = {}
  for path, sharding in jax.tree_util.tree_leaves_with_path(shardings.params):
    name = "/".join(k.key for k in path)
    table[name] = tuple(sharding.spec)
  for name, expected in GOLDEN_SHARDINGS.items():
    got = table[name] + (None,) * (len(expected) - len(table[name]))
    assert got == expected, name
  # Optimizer moments follow their parameters; EMA too.
  mu = shardings.opt_state[1][0].mu  # chain(clip, adamw): adamw's ScaleByAdamState
  assert mu["transformer"]["blocks"]["ff_proj"]["kernel"] == \
      shardings.params["transformer"]["blocks"]["ff_proj"]["kernel"]
  assert shardings.ema_params == shardings.params


def test_unknown_missing_conflicting_and_indivisible_rules_are_errors():
  config = _config()
  config.sharding.rules.embed = "fsdp+pipeline"
  with pytest.raises(ValueError, match="sharding rule embed='fsdp\\+pipeline'"):
    rules_lib.rules_from_config(config.sharding.rules)
  config = _config()
  config.sharding.rules.head_width = "fsdp"  # cond_embed is [embed, head_width]
  with pytest.raises(ValueError, match="diffusion_head/cond_embed/kernel.*use a mesh axis twice"):
    _setup(config, (2, 2, 2))
  config = _config()
  rules = tuple(r for r in rules_lib.rules_from_config(config.sharding.rules) if r[0] != "mlp")
  model = make_model(config)
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with pytest.raises(ValueError, match="no sharding rule for logical axis 'mlp'"):
    rules_lib.param_shardings(model.logical_axes(), model.abstract_params(), mesh, rules)
  config = _config()
  config.model.num_heads = 1
  with pytest.raises(ValueError, match="attn1/wo/kernel: dimension 1 \\(heads, size 1\\) "
                     "cannot be split 2 ways over mesh axes tensor"):
    _setup(config, (2, 2, 2))


def _loss_and_grads(model, tokenizer):
  def fn(params, video, rng):
    tokens, (h, w) = video_to_tokens(tokenizer, video, model.config.model.patch_size)
    return jax.value_and_grad(
        lambda p: next_frame.next_frame_loss(model, p, tokens, rng, _settings(model), h=h, w=w)[0])(params)
  return fn


def _assert_close(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * max(np.abs(y).max(), 1e-30))


@pytest.fixture(scope="module")
def one_device():
  """The single-device loss, gradients and train step every mesh is compared with
  (computed once: the model, optimizer and step do not depend on the mesh)."""
  config = _config()
  model, optimizer, _, _, _ = _setup(config, MESHES[0])
  tokenizer = make_tokenizer(config.tokenizer)
  video = _batch(config)["video"]
  params = create_state(model, optimizer, config.seed).params
  loss, grads = jax.jit(_loss_and_grads(model, tokenizer))(params, video, jax.random.key(3))
  step = make_train_step(model, tokenizer, optimizer, config.optim.ema_decay,
                         _settings(model))
  state, metrics = jax.jit(step)(create_state(model, optimizer, config.seed), {"video": video})
  return dict(loss=loss, grads=grads, step_params=state.params, step_loss=metrics["loss"])


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_sharded_loss_gradients_and_step_equal_one_device(mesh_shape, one_device):
  config = _config()
  model, optimizer, mesh, rules, shardings = _setup(config, mesh_shape)
  tokenizer = make_tokenizer(config.tokenizer)
  video = _batch(config)["video"]
  rng = jax.random.key(3)
  params = create_state(model, optimizer, config.seed).params

  fn = _loss_and_grads(model, tokenizer)
  sharded = jax.jit(fn, in_shardings=(shardings.params, partition.batch_sharding(mesh),
                                      partition.replicated(mesh)),
                    out_shardings=(partition.replicated(mesh), shardings.params))
  with rules_lib.logical_axis_rules(rules), jax.set_mesh(mesh):
    loss_n, grads_n = sharded(jax.device_put(params, shardings.params), video, rng)
  np.testing.assert_allclose(float(loss_n), float(one_device["loss"]), rtol=1e-5)
  _assert_close(grads_n, one_device["grads"])
  assert grads_n["transformer"]["blocks"]["ff_proj"]["kernel"].sharding == \
      shardings.params["transformer"]["blocks"]["ff_proj"]["kernel"]

  # The full step: sharded state in, donated, sharded state out.
  step = make_train_step(model, tokenizer, optimizer, config.optim.ema_decay,
                         _settings(model))
  state = setup.create_sharded_state(model, optimizer, shardings, config.seed)
  state_n, metrics_n = partition.shard_train_step(step, shardings, mesh, rules)(
      state, partition.global_batch({"video": video}, mesh))
  np.testing.assert_allclose(float(metrics_n["loss"]), float(one_device["step_loss"]),
                             rtol=1e-5)
  _assert_close(state_n.params, one_device["step_params"])
  assert state.params["transformer"]["z_proj"]["kernel"].is_deleted()  # donated


def test_generation_sharded_over_the_batch_matches_one_device():
  config = _config()
  model = make_model(config)
  params = create_state(model, optim_lib.make_optimizer(config.optim, 8, 100), 0).params
  given = jax.random.normal(jax.random.key(1), (8, 1, 16, model.token_dim))
  settings = SamplerSettings(num_frames=3, num_steps=4)
  one = generate(model, params, given, jax.random.key(2), settings, (4, 4))["tokens"]
  mesh = mesh_lib.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  given_sharded = jax.device_put(given, partition.batch_sharding(mesh))
  params_replicated = jax.device_put(params, partition.replicated(mesh))
  out = generate(model, params_replicated, given_sharded, jax.random.key(2), settings,
                 (4, 4))["tokens"]
  assert out.sharding.spec[0] in (("data", "fsdp"), "data")  # stayed split over the batch
  np.testing.assert_allclose(np.asarray(out), np.asarray(one), rtol=1e-5, atol=1e-5)


def test_generation_with_the_kv_cache_sharded_by_its_logical_axes_matches_one_device():
  """Params split by the rules table on a (data 2, fsdp 2, tensor 2) mesh and the KV cache
  laid out by `KV_CACHE_AXES` (batch over data x fsdp, heads over tensor): same video as
  one device, with guidance doubling the cached batch."""
  config = _config()
  config.model.context.kind, config.model.context.num_classes = "class", 3
  model, optimizer, mesh, rules, shardings = _setup(config, (2, 2, 2))
  params = perturb(create_state(model, optimizer, 0).params, jax.random.key(5), scale=0.02)
  given = jax.random.normal(jax.random.key(1), (4, 2, 16, model.token_dim))
  labels = jnp.array([0, 1, 2, 0])
  settings = SamplerSettings(num_frames=4, num_steps=3, cfg=2.0)
  one = generate(model, params, given, jax.random.key(2), settings, (4, 4), labels)["tokens"]
  with rules_lib.logical_axis_rules(rules), jax.set_mesh(mesh):
    sharded = generate(model, jax.device_put(params, shardings.params),
                       jax.device_put(given, partition.batch_sharding(mesh)),
                       jax.random.key(2), settings, (4, 4),
                       jax.device_put(labels, partition.batch_sharding(mesh)))["tokens"]
    decoder_state = jax.jit(lambda p, g, c: generate_lib._Decoder(  # pylint: disable=protected-access
        model, p, g, settings, (4, 4), c, None).prefill_with_cache(g))(
            jax.device_put(params, shardings.params), given, labels)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(one), rtol=1e-4, atol=1e-5)
  cache = decoder_state.kv_cache["k"]
  assert cache.shape[1] == 8  # the guided batch: context and null context
  spec = tuple(cache.sharding.spec) + (None,) * (cache.ndim - len(cache.sharding.spec))
  assert spec == (None, ("data", "fsdp"), None, "tensor", None)
  assert cache.addressable_shards[0].data.shape[3] == cache.shape[3] // 2  # heads split


def test_a_checkpoint_restores_onto_another_mesh(tmp_path):
  config = _config()
  model, optimizer, mesh_a, rules, shardings_a = _setup(config, (8, 1, 1))
  state = setup.create_sharded_state(model, optimizer, shardings_a, config.seed)
  source = [{"frames": np.zeros((4, 16, 16, 3), np.uint8)}] * 8
  data_iter = iter(pipeline.make_loader(source, global_batch_size=8, num_frames=3,
                                        resolution=16, seed=0))
  checkpointer = Checkpointer(str(tmp_path), keep=2)
  # One process writes each replicated shard whole (not cut into per-replica slices, a
  # device dispatch each): Orbax's array handler as the Checkpointer registers it.
  assert not ocp.type_handlers.get_type_handler(jax.Array)._use_replica_parallel  # pylint: disable=protected-access
  checkpointer.save(1, state, data_iter, 0, config)
  _, _, mesh_b, _, shardings_b = _setup(config, (2, 2, 2))
  target = setup.abstract_state(model, optimizer, shardings_b, config.seed)
  restored = checkpointer.restore(1, target)
  checkpointer.close()
  kernel = restored.params["transformer"]["blocks"]["attn1"]["wqkv"]["kernel"]
  assert kernel.sharding == shardings_b.params["transformer"]["blocks"]["attn1"]["wqkv"]["kernel"]
  # Each device holds only its shard (1/4 of the heads x embed block), not the whole array.
  assert kernel.addressable_shards[0].data.shape[1] == kernel.shape[1] // 2
  _assert_close(restored.params, jax.device_get(state.params))
