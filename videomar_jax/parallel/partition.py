"""Placing arrays and steps on a mesh, for any state pytree.

`optimizer_shardings` lays optimizer moments out like their parameters; `shard_train_step`
jits a step with in/out shardings and the state donated, and activates the rules so the
model's activation constraints apply; `global_batch` / `process_batch_rows` split a batch
over the data axes and over processes. What a train state holds is the trainer's business
(`train.setup.state_shardings`), so nothing here imports it.
"""

import functools

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from videomar_jax.parallel.mesh import BATCH_AXES
from videomar_jax.parallel.rules import logical_axis_rules


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh) -> NamedSharding:
  """Batch-major arrays of any rank: dim 0 split over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def optimizer_shardings(optimizer: optax.GradientTransformation, abstract_opt_state,
                        params, mesh):
  """Shardings of an optimizer state: every moment follows its parameter's sharding
  (`params`, a tree of `NamedSharding`s); counters and other non-parameter leaves are
  replicated."""
  return optax.tree_map_params(
      optimizer, lambda _, sharding: sharding, abstract_opt_state, params,
      transform_non_params=lambda _: replicated(mesh))


def with_shardings(shapes, shardings):
  """A tree of `ShapeDtypeStruct`s carrying `shardings` (what Orbax restores into, and what
  compile-only planning lowers from)."""
  return jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def shard_train_step(train_step, shardings, mesh, rules):
  """`train_step(state, batch)` jitted over the mesh, state donated. Calls run under the
  mesh and the rules, so tracing sees the model's activation constraints."""
  jitted = jax.jit(train_step, in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=(shardings, replicated(mesh)), donate_argnums=0)

  @functools.wraps(train_step)
  def step(state, batch):
    with logical_axis_rules(rules), jax.set_mesh(mesh):
      return jitted(state, batch)
  step.lower = lambda *args: _lower(jitted, mesh, rules, *args)
  return step


def _lower(jitted, mesh, rules, *args):
  with logical_axis_rules(rules), jax.set_mesh(mesh):
    return jitted.lower(*args)


def process_batch_rows(mesh, global_batch_size: int) -> list[int]:
  """The rows of a global batch that live on this process's devices, ascending. On CPU they
  are a contiguous block in process order; a TPU mesh laid out by physical topology may
  interleave hosts. The loader reads exactly these rows (`pipeline.GlobalBatchRows`)."""
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
  rows = set()
  for index in index_map.values():
    rows.update(range(*index[0].indices(global_batch_size)))
  return sorted(rows)


def global_batch(local_batch: dict, mesh) -> dict:
  """This process's rows of a global batch (numpy, in the order of `process_batch_rows`) ->
  global arrays split over the batch axes. With one process the local batch is the whole
  batch."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(v))
          for k, v in local_batch.items()}
