"""TPU slices by name (`v5p:4x4x4`), as compile-only devices for `videomar plan --topology`.

libtpu (the `tpu` extra: `pip install -e .[tpu]`) can describe a slice it is not running on
and compile for it: `jax.experimental.topologies.get_topology_desc` returns one device per
chip (v4 and v5p run their two TensorCores as one "megacore" device), which a `Mesh` and
`jit(...).lower(...).compile()` take like real ones. Nothing can run on them; the compiled
program's memory and cost analyses are the TPU compiler's own, so per-chip memory is exact
where the CPU plan's is an estimate.

HBM per chip, from Google's Cloud TPU pages (v4: "32 GiB"; v5e: "16 GB"; v5p: "95 GB"; v6e:
"32 GB"; all taken as 2^30 bytes here). The compiler's own limit differs a little (refusing
programs, it reported 15.75G available on v5e and 95.74G on v5p), so a plan within a few
percent of the figure is marginal; a program over the compiler's limit is refused outright.
"""

import dataclasses
import importlib.util
import math
import os
import re

from videomar_jax.errors import ConfigError, UserError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  generation: str  # libtpu's name of the chip in a topology string
  dims: int  # 3: a 3D torus (v4, v5p); 2: a 2D one (v5e, v6e)
  chip_config: str  # "megacore": one device per chip of two TensorCores
  hbm_bytes: int


CHIPS = {
    "v4": Chip("v4", 3, "megacore", 32 * GIB),
    "v5e": Chip("v5e", 2, "default", 16 * GIB),
    "v5litepod": Chip("v5e", 2, "default", 16 * GIB),  # Cloud's accelerator-type name
    "v5p": Chip("v5p", 3, "megacore", 95 * GIB),
    "v6e": Chip("v6e", 2, "default", 32 * GIB),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # as given, e.g. "v5p:4x4x4"
  chip: Chip
  shape: tuple[int, ...]  # chips along each torus axis

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)


def parse_topology(text: str) -> Topology:
  """`v5p:4x4x4` / `v5e:2x2` -> a `Topology`; anything else is one line naming the forms."""
  match = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", text.strip().lower())
  if not match or match.group(1) not in CHIPS:
    raise ConfigError(f"unknown TPU topology {text!r}; use CHIP:AxB (v5e, v5litepod, v6e) "
                      "or CHIP:AxBxC (v4, v5p), e.g. v5e:2x2, v5p:4x4x4.")
  chip = CHIPS[match.group(1)]
  shape = tuple(int(n) for n in match.group(2).split("x"))
  if len(shape) != chip.dims or min(shape) < 1:
    form = "x".join("ABC"[:chip.dims])
    raise ConfigError(f"TPU topology {text!r}: {match.group(1)} slices are {form} with "
                      f"sizes >= 1 ({chip.dims} axes), e.g. "
                      f"{match.group(1)}:{'x'.join(['2'] * chip.dims)}.")
  return Topology(text.strip().lower(), chip, shape)


def require_libtpu() -> None:
  if importlib.util.find_spec("libtpu") is None:
    raise UserError("plan --topology compiles with the TPU compiler, libtpu, which is not "
                    "installed: pip install -e .[tpu]")


def _wrap(topology: Topology) -> tuple[bool, bool, bool]:
  """Which axes close into a ring: a 3D slice of whole 4x4x4 cubes is a torus on every axis;
  a 2D (v5e/v6e) slice wraps an axis of the full pod's 16 chips."""
  shape = topology.shape + (1,) * (3 - len(topology.shape))
  if topology.chip.dims == 3:
    return (all(n % 4 == 0 for n in shape),) * 3
  return tuple(n == 16 for n in shape[:2]) + (False,)


def topology_devices(topology: Topology) -> list:
  """One compile-only device per chip of `topology`, in libtpu's order."""
  require_libtpu()
  # libtpu takes a machine-wide lock (/tmp/libtpu_lockfile) on load, so that one process
  # owns the chips; compiling for a described slice owns none, and two plans (or a plan on a
  # TPU VM that is training) may run at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  shape = topology.shape + (1,) * (3 - len(topology.shape))
  # Hosts of 2x2x1 chips (a smaller slice: one host), as for a multi-host TPU VM slice.
  per_host = (min(shape[0], 2), min(shape[1], 2), 1)
  spec = f"{topology.chip.generation}:{'x'.join(map(str, topology.shape))}"
  try:
    description = topologies.get_topology_desc(
        topology_name=spec, platform="tpu", chip_config_name=topology.chip.chip_config,
        chips_per_host_bounds=per_host, num_slices=1, wrap=_wrap(topology))
  except jax.errors.JaxRuntimeError as e:
    raise ConfigError(f"libtpu rejects TPU topology {topology.name!r}: "
                      f"{str(e).splitlines()[0]}") from None
  return list(description.devices)
