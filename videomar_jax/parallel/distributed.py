"""Multi-process start-up: `jax.distributed.initialize` from flags or environment.

Modes: `none` (one process; nothing to do), `auto` (Cloud TPU VMs and SLURM/Open MPI
clusters, where JAX discovers the coordinator itself), `manual` (coordinator address,
process count and id from flags, else from `VIDEOMAR_COORDINATOR_ADDRESS`,
`VIDEOMAR_NUM_PROCESSES`, `VIDEOMAR_PROCESS_ID`). On CPU the collectives go through gloo,
so several processes on one machine (over 127.0.0.1) behave like hosts of a pod.
"""

import os

import jax

MODES = ("none", "auto", "manual")


def initialize(mode: str = "none", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> None:
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r} not in {MODES}.")
  if mode == "none":
    return
  if mode == "auto":
    jax.distributed.initialize()
    return
  env = os.environ
  coordinator_address = coordinator_address or env.get("VIDEOMAR_COORDINATOR_ADDRESS")
  if num_processes is None and "VIDEOMAR_NUM_PROCESSES" in env:
    num_processes = int(env["VIDEOMAR_NUM_PROCESSES"])
  if process_id is None and "VIDEOMAR_PROCESS_ID" in env:
    process_id = int(env["VIDEOMAR_PROCESS_ID"])
  missing = [name for name, value in (("coordinator_address", coordinator_address),
                                      ("num_processes", num_processes),
                                      ("process_id", process_id)) if value is None]
  if missing:
    raise ValueError(f"--distributed=manual needs {missing} (flags or VIDEOMAR_* "
                     "environment variables).")
  if num_processes == 1:
    return
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id {process_id} not in [0, {num_processes}).")
  if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
