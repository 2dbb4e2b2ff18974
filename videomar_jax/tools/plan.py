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

`plan_for_topology(config, topology)` compiles the same step (`plan_on_mesh`) with the TPU
compiler for a named slice (`v5p:4x4x4`, tools/tpu_topology.py) on this machine, TPU or not:
its per-chip figures are the TPU program's own, set against the chip's HBM. A program that
cannot fit is refused by that compiler; the plan then says so, with its message.
"""

import math
import time

import jax
import jax.numpy as jnp
import ml_collections

from videomar_jax.tools import flops, tpu_topology
from videomar_jax.errors import ConfigError
from videomar_jax.parallel import partition
from videomar_jax.parallel.mesh import MESH_AXES, make_mesh, mesh_shape
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
  """Compiles the train step for `mesh_sizes` ({"data": 4, "fsdp": 16, "tensor": 1}) on the
  first devices of the default backend (fake CPU devices: `ensure_cpu_devices`)."""
  num_devices = math.prod(mesh_sizes[a] for a in MESH_AXES)
  if any(mesh_sizes[a] < 1 for a in MESH_AXES):
    raise ConfigError(f"plan needs explicit positive mesh sizes, got {mesh_sizes}.")
  return plan_on_mesh(config, make_mesh(mesh_sizes, jax.devices()[:num_devices]), stage_index)


def plan_on_mesh(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 stage_index: int = -1) -> dict:
  """Compiles the sharded train step over `mesh` (any devices jit can compile for: fake CPU
  ones, or a TPU topology's compile-only ones) from abstract shapes, and reads its cost."""
  num_devices = mesh.devices.size
  experiment = setup.build(config, mesh=mesh, with_tokenizer=False)
  state, model = experiment.abstract_state, experiment.model
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
  start = time.perf_counter()
  per_device, cost, compiler_error = None, {}, None
  try:
    compiled = experiment.train_step.lower(state, {"latents": latents}).compile()
  except jax.errors.JaxRuntimeError as e:
    # A TPU compiler refuses a program that does not fit the chip's HBM; that is an answer.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    compiler_error = str(e).splitlines()[0]
  else:
    per_device = _memory(compiled.memory_analysis())
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  compile_seconds = time.perf_counter() - start
  params = _bytes(state.params)
  model_flops = flops.train_flops_per_example(config, stage.num_frames, stage.resolution,
                                              model.token_dim) * batch_size
  return {
      "mesh": dict(mesh.shape), "num_devices": num_devices,
      "device_kind": mesh.devices.flat[0].device_kind,
      "stage": {"num_frames": stage.num_frames, "resolution": stage.resolution,
                "batch_size": batch_size, **shape},
      "dtype": config.model.dtype, "param_dtype": "float32",
      "parameters": sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(state.params)),
      "state_bytes_total": _bytes(state), "param_bytes_total": params,
      "per_device_bytes": per_device,
      "compiled_flops_per_device": float(cost.get("flops", float("nan"))),
      "model_flops_per_step": model_flops,
      "model_flops_per_device": model_flops / num_devices,
      "compile_seconds": compile_seconds,
      "compiler_error": compiler_error,
  }


def _memory(memory) -> dict[str, int]:
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
  return per_device


def topology_mesh_sizes(config: ml_collections.ConfigDict,
                        topology: tpu_topology.Topology) -> dict[str, int]:
  """`config.mesh` over every chip of `topology` (-1 fills); a mismatch is one line."""
  try:
    return mesh_shape({axis: config.mesh[axis] for axis in MESH_AXES}, topology.num_chips)
  except ConfigError as e:
    raise ConfigError(f"{topology.name} has {topology.num_chips} chips: {e}") from None


def plan_for_topology(config: ml_collections.ConfigDict, topology: tpu_topology.Topology,
                      stage_index: int = -1) -> dict:
  """`plan_on_mesh` over every chip of a TPU slice, compiled by libtpu (no TPU needed): the
  mesh is `config.mesh` (one axis may be -1), and per-chip memory is set against the
  chip's HBM."""
  sizes = topology_mesh_sizes(config, topology)
  mesh = make_mesh(sizes, tpu_topology.topology_devices(topology))
  result = plan_on_mesh(config, mesh, stage_index)
  hbm = topology.chip.hbm_bytes
  peak = result["per_device_bytes"] and result["per_device_bytes"]["peak_estimate"]
  result.update(topology=topology.name, hbm_bytes_per_chip=hbm,
                fits=result["compiler_error"] is None and peak <= hbm)
  return result


def _gib(num_bytes: int) -> str:
  return f"{num_bytes / 2**30:8.2f} GiB"


def format_plan(result: dict) -> str:
  d = result["per_device_bytes"]
  s = result["stage"]
  unit = "chip" if "topology" in result else "device"
  where = (f"{result['num_devices']} chips, {result['device_kind']}" if unit == "chip"
           else f"{result['num_devices']} devices")
  lines = [
      f"mesh {result['mesh']} ({where}); compute {result['dtype']}, params/optimizer float32",
      f"step: batch {s['batch_size']}, {s['num_frames']} frames at {s['resolution']}px -> "
      f"{s['latent_frames']} latent frames x {s['tokens_per_frame']} tokens "
      f"(sequence {s['sequence_length']})",
      f"parameters {result['parameters']:,}; train state (params, EMA, Adam) "
      f"{_gib(result['state_bytes_total'])} in total",
  ]
  if d is None:
    lines.append(f"the compiler: {result['compiler_error']}")
  else:
    lines += [
        f"per {unit}:",
        f"  arguments    {_gib(d['arguments'])}   (state shards + batch shard)",
        f"  outputs      {_gib(d['outputs'])}   ({_gib(d['aliased'])} of them reuse donated "
        "inputs)",
        f"  temporaries  {_gib(d['temporaries'])}   (activations, gradients, gathered weights)",
        f"  peak (est.)  {_gib(d['peak_estimate'])}",
        f"FLOPs per step per {unit}: model (analytic) {result['model_flops_per_device']:.3e}; "
        f"XLA's count {result['compiled_flops_per_device']:.3e} (counts a scanned layer "
        "loop's body once)",
    ]
  if "topology" in result:
    peak = ("the compiler refused the step" if d is None
            else f"peak {_gib(d['peak_estimate']).strip()}")
    lines.append(f"{result['topology']}: {peak}; {result['hbm_bytes_per_chip'] / 2**30:.2f} "
                 f"GiB HBM per chip -> {'fits' if result['fits'] else 'DOES NOT FIT'}")
  return "\n".join(lines)


def format_comparison(tpu: dict, cpu: dict) -> str:
  """The TPU compiler's per-chip figures next to the fake-CPU estimate for the same mesh."""
  lines = [f"per chip          {tpu['topology']:>14}   {'CPU estimate':>14}"]
  for key in ("arguments", "outputs", "temporaries", "aliased", "peak_estimate"):
    exact = "-" if tpu["per_device_bytes"] is None else _gib(tpu["per_device_bytes"][key])
    lines.append(f"  {key:<15} {exact:>14}   {_gib(cpu['per_device_bytes'][key]):>14}")
  lines.append(f"  {'compile':<15} {tpu['compile_seconds']:>12.1f} s   "
               f"{cpu['compile_seconds']:>12.1f} s")
  return "\n".join(lines)
