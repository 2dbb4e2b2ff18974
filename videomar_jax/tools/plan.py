"""Capacity planning without the hardware: compile a train step for a mesh, read its cost.

`plan(config, mesh_sizes)` lowers and compiles the sharded train step of the last curriculum
stage on fake CPU devices (one per mesh position), from abstract shapes only: no parameter,
optimizer state or batch is ever allocated. XLA's per-device memory analysis (arguments,
outputs, temporaries, with donated buffers aliased) and cost analysis (FLOPs of one
device's program) then say whether the model fits a chip before a slice is rented.

The batch is given as latents (what a cached-latent run feeds; the tokenizer is not part of
the step), sized from the tokenizer's geometry, so configs whose tokenizer cannot be built
here (the paper's Cosmos CV8x8x8) plan all the same. CPU compilation differs from TPU/GPU
in fusion and layout, so treat the figures as estimates within some tens of percent;
parameter, gradient and optimizer bytes are exact.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections

from videomar_jax.tools import flops
from videomar_jax.errors import ConfigError
from videomar_jax.parallel import partition
from videomar_jax.parallel.mesh import MESH_AXES, make_mesh
from videomar_jax.train import setup


def ensure_cpu_devices(count: int) -> None:
  """Makes JAX expose `count` CPU devices; must run before JAX initialises its backend."""
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", count)
  if jax.device_count() < count:
    raise RuntimeError(f"JAX already started with {jax.device_count()} devices; run `plan` "
                       "in a fresh process.")


def _bytes(tree) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(tree))


def plan(config: ml_collections.ConfigDict, mesh_sizes: dict[str, int],
         stage_index: int = -1) -> dict:
  """Compiles the train step for `mesh_sizes` ({"data": 4, "fsdp": 16, "tensor": 1})."""
  num_devices = math.prod(mesh_sizes[a] for a in MESH_AXES)
  if any(mesh_sizes[a] < 1 for a in MESH_AXES):
    raise ConfigError(f"plan needs explicit positive mesh sizes, got {mesh_sizes}.")
  experiment = setup.build(config, mesh=make_mesh(mesh_sizes, jax.devices()[:num_devices]),
                           with_tokenizer=False)
  mesh, state, model = experiment.mesh, experiment.abstract_state, experiment.model
  stage = experiment.resolved.stages[stage_index]
  batch_size = stage.batch_size
  geometry = experiment.resolved.geometry
  shape = flops.sequence_shape(config, stage.num_frames, stage.resolution)
  side = stage.resolution // geometry.spatial_stride
  latents = jax.ShapeDtypeStruct(
      (batch_size, stage.latent_frames, side, side, geometry.latent_channels), jnp.float32,
      sharding=partition.batch_sharding(mesh))
  if batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
    raise ConfigError(f"batch size {batch_size} is not divisible by data x fsdp = "
                     f"{mesh.shape['data'] * mesh.shape['fsdp']}.")
  step = experiment.train_step
  compiled = step.lower(state, {"latents": latents}).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  params = _bytes(state.params)
  per_device = {
      "arguments": memory.argument_size_in_bytes,
      "outputs": memory.output_size_in_bytes,
      "temporaries": memory.temp_size_in_bytes,
      "aliased": memory.alias_size_in_bytes,  # donated inputs reused as outputs
      "generated_code": memory.generated_code_size_in_bytes,
  }
  # Live at the step's peak: inputs + temporaries + the outputs that do not reuse an input.
  per_device["peak_estimate"] = (per_device["arguments"] + per_device["temporaries"]
                                 + per_device["outputs"] - per_device["aliased"])
  model_flops = flops.train_flops_per_example(config, stage.num_frames, stage.resolution,
                                              model.token_dim) * batch_size
  return {
      "mesh": dict(mesh.shape), "num_devices": num_devices,
      "stage": {"num_frames": stage.num_frames, "resolution": stage.resolution,
                "batch_size": batch_size, **shape},
      "dtype": config.model.dtype, "param_dtype": "float32",
      "parameters": sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(state.params)),
      "state_bytes_total": _bytes(state), "param_bytes_total": params,
      "per_device_bytes": per_device,
      "compiled_flops_per_device": float(cost.get("flops", float("nan"))),
      "model_flops_per_step": model_flops,
      "model_flops_per_device": model_flops / num_devices,
  }


def format_plan(result: dict) -> str:
  gib = lambda b: f"{b / 2**30:8.2f} GiB"
  d = result["per_device_bytes"]
  s = result["stage"]
  lines = [
      f"mesh {result['mesh']} ({result['num_devices']} devices); compute {result['dtype']}, "
      f"params/optimizer float32",
      f"step: batch {s['batch_size']}, {s['num_frames']} frames at {s['resolution']}px -> "
      f"{s['latent_frames']} latent frames x {s['tokens_per_frame']} tokens "
      f"(sequence {s['sequence_length']})",
      f"parameters {result['parameters']:,}; train state (params, EMA, Adam) "
      f"{gib(result['state_bytes_total'])} in total",
      "per device:",
      f"  arguments    {gib(d['arguments'])}   (state shards + batch shard)",
      f"  outputs      {gib(d['outputs'])}   ({gib(d['aliased'])} of them reuse donated inputs)",
      f"  temporaries  {gib(d['temporaries'])}   (activations, gradients, gathered weights)",
      f"  peak (est.)  {gib(d['peak_estimate'])}",
      f"FLOPs per step per device: model (analytic) {result['model_flops_per_device']:.3e}; "
      f"XLA's count {result['compiled_flops_per_device']:.3e} (counts a scanned layer "
      "loop's body once)",
  ]
  return "\n".join(lines)
