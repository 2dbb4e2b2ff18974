"""The device mesh: named axes (`data`, `fsdp`, `tensor`) sized from `config.mesh`.

`data` replicates parameters and splits the batch; `fsdp` splits the batch too, and also
the parameters and optimizer state (ZeRO-3 style, gathered per layer by XLA); `tensor`
splits attention heads and MLP features (Megatron style). A size of -1 takes the devices
the other axes leave.
"""

import math

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils

from videomar_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the axes a global batch is split over


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
  """Resolves `{"data": -1, "fsdp": 4, "tensor": 1}` against the device count."""
  sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
  unknown = set(mesh_config.keys()) - set(MESH_AXES) - {"num_devices"}
  if unknown:
    raise ConfigError(f"unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}.")
  fill = [axis for axis, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise ConfigError(f"only one mesh axis may be -1, got {fill}.")
  if any(size == 0 or size < -1 for size in sizes.values()):
    raise ConfigError(f"mesh sizes must be positive or -1, got {sizes}.")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if num_devices % fixed:
      raise ConfigError(f"mesh {sizes}: {num_devices} devices are not divisible by the fixed "
                       f"axes' product {fixed}.")
    sizes[fill[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(f"mesh {sizes} has {math.prod(sizes.values())} devices, but "
                     f"{num_devices} are available.")
  return sizes


def parse_mesh(text: str) -> dict[str, int]:
  """`data:4,fsdp:16,tensor:1` -> {"data": 4, "fsdp": 16, "tensor": 1} (missing axes: 1)."""
  sizes = {axis: 1 for axis in MESH_AXES}
  for part in filter(None, text.split(",")):
    name, _, value = part.partition(":")
    if name not in MESH_AXES or not value.lstrip("-").isdigit() or (
        int(value) < 1 and int(value) != -1):
      raise ConfigError(f"bad mesh entry {part!r} in {text!r}; use e.g. "
                        "data:4,fsdp:16,tensor:1 (axes: data, fsdp, tensor; sizes > 0, or -1 "
                        "for the devices the others leave).")
    sizes[name] = int(value)
  return sizes


def make_mesh(mesh_config: ml_collections.ConfigDict | dict,
              devices=None) -> jax.sharding.Mesh:
  """A `Mesh` over `devices` (default: all devices of all processes, or the first
  `mesh_config.num_devices` of them when that is set and > 0; single process only)."""
  devices = jax.devices() if devices is None else list(devices)
  wanted = int(dict(mesh_config).get("num_devices", 0) or 0)
  if wanted:
    if wanted > len(devices) or (wanted < len(devices) and jax.process_count() > 1):
      raise ConfigError(f"mesh.num_devices={wanted}: {len(devices)} devices in "
                       f"{jax.process_count()} process(es); a multi-process run uses all.")
    devices = devices[:wanted]
  sizes = mesh_shape(mesh_config, len(devices))
  shape = tuple(sizes[axis] for axis in MESH_AXES)
  if devices[0].platform == "cpu":  # no physical topology to follow
    device_array = np.asarray(devices).reshape(shape)
  else:  # topology-aware placement; a shape the slice cannot take is an error, not a fallback
    try:
      device_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except NotImplementedError as e:  # each axis must be a product of physical axes
      raise ConfigError(f"mesh {sizes} does not map onto the slice's physical axes: "
                        f"{str(e).split('. ')[0]}; choose sizes that are each a product "
                        "of the slice's axes (e.g. --mesh=fsdp:-1).") from None
  return jax.sharding.Mesh(device_array, MESH_AXES)
