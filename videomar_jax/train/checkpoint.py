"""Orbax checkpoints of a run: train state, data-iterator state, curriculum position, config.

Layout: `<workdir>/checkpoints/<step>/{state,data,meta}`. `meta` is JSON with the stage
index whose data iterator was saved and the run's config, so a restarted run knows where
in the curriculum it is before it builds the data pipeline. Orbax writes each step to a
temporary folder and renames it when complete, so a run killed mid-save keeps the previous
checkpoint intact.

Saves are synchronous by default: `save` returns once the step is on disk. With
`async_save` (config.train.async_checkpoint) `save` returns once the arrays are copied off
the devices and Orbax writes them in a background thread while training goes on; `wait`
(called by the next `save`, by `close`, and by the trainer before it stops for a
preemption) blocks until that step is complete, and a failed write is reported there, as
the same `CheckpointSaveError` naming its step.
"""

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
import numpy as np

from videomar_jax.errors import ConfigError, UserError

# Config keys that shape the parameters (or the tokens they read): a checkpoint restores
# only into the model it was written from. Compute-only settings may change on resume.
_MODEL_SECTIONS = ("model", "head.width", "head.depth", "tokenizer.name",
                   "tokenizer.patch_size", "tokenizer.variant", "tokenizer.latent_channels")
_COMPUTE_ONLY = ("model.dtype", "model.remat_policy", "model.attention_chunk",
                 "model.attention_impl",
                 "model.context.drop_prob")


def _flatten(tree, prefix: str = "") -> dict:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def model_differences(stored_config_json: str, config: ml_collections.ConfigDict) -> list[str]:
  """`key: old -> new` for every parameter-shaping key that differs between the config a
  checkpoint was written with and `config`."""
  old = _flatten(json.loads(stored_config_json))
  new = _flatten(json.loads(config.to_json_best_effort()))
  keys = sorted(k for k in set(old) | set(new)
                if any(k == s or k.startswith(s + ".") for s in _MODEL_SECTIONS)
                and k not in _COMPUTE_ONLY)
  missing = "(absent)"
  return [f"{k}: {old.get(k, missing)} -> {new.get(k, missing)}" for k in keys
          if old.get(k, missing) != new.get(k, missing)]


class ResumeMismatchError(ConfigError):
  """A workdir's checkpoint was written by another model than the config describes."""


class CheckpointRestoreError(RuntimeError):
  """One checkpoint step could not be read (damaged, incomplete, or missing files)."""


class NoRestorableCheckpointError(UserError):
  """Checkpoints exist, but none of them can be read."""


class CheckpointSaveError(UserError):
  """A checkpoint could not be written (disk full, read-only or missing directory)."""


# A failed Orbax restore abandons TensorStore reads whose completion callbacks later post to
# a closed asyncio loop, each printing a traceback ("Event loop is closed") from native
# threads, dozens in all; a failed save logs its writer threads' tracebacks. With this set
# (the CLI clears it for --verbosity=1 or VIDEOMAR_TRACEBACK=1), restores that may fail and
# saves run with the process's stderr silenced; a failure is then reported in one line.
QUIET_IO_FAILURES = True


@contextlib.contextmanager
def _stderr_silenced(enabled: bool):
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def _short(error: BaseException, limit: int = 240) -> str:
  """The gist of a restore failure: TensorStore and Orbax messages run to pages."""
  cause = error.__cause__ or error
  text = " ".join(f"{type(cause).__name__}: {cause}".split())
  text = text.split(" See full TensorStore details")[0]
  return text if len(text) <= limit else text[:limit] + "..."


def _write_replicated_arrays_once_per_process() -> None:
  """Orbax's default ("replica-parallel") has each replica of a replicated array write a
  slice of it, so that several hosts share the writing. In one process that gains
  nothing, and it costs a device slice per piece per save: thousands of dispatches for a
  model replicated over 4 devices (3.4 s a save for the 2-layer test model). One process
  writes each shard whole; with several processes Orbax's default stays (None: Orbax
  picks, and it turns replica-parallel off on GPUs). The handler is Orbax's process-wide
  one for jax.Array, so this replaces any other registered there. It reaches two Orbax
  internals: an Orbax without them (another release than the pinned one) keeps its default,
  which is correct, only slower to save (test_sharding pins the setting on the tested one)."""
  try:  # the default handler's metadata store; the registry call that can leave out the
    # override warning. pylint: disable=g-import-not-at-top
    from orbax.checkpoint._src.metadata import array_metadata_store
    from orbax.checkpoint._src.serialization import type_handler_registry
    handler = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False if jax.process_count() == 1 else None,
        array_metadata_store=array_metadata_store.Store())
    type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
        jax.Array, handler, override=True, ignore_warnings=True)
  except (ImportError, AttributeError, TypeError):  # moved or re-signed in another release
    pass


class Checkpointer:
  """A thin wrapper around `ocp.CheckpointManager` for the trainer's three items."""

  def __init__(self, workdir: str, keep: int, directory: str = "", create: bool = True,
               async_save: bool = False):
    """Checkpoints go to `directory`, default `<workdir>/checkpoints`. A URI such as
    gs://bucket/run/checkpoints is passed to Orbax as it is. `async_save`: `save` returns
    before the step is written (see the module docstring)."""
    if not directory:
      directory = os.path.join(workdir, "checkpoints")
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.async_save = async_save
    self._in_flight = None  # the step of an async save not yet known to be complete
    _write_replicated_arrays_once_per_process()
    # Orbax's checkpointer is asynchronous either way; a synchronous save waits for it.
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "data", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    """The newest complete checkpoint (an async save in flight is waited for first)."""
    self.wait()
    return self.manager.latest_step()

  def steps_newest_first(self) -> list[int]:
    return sorted(self.manager.all_steps(), reverse=True)

  def save(self, step: int, state, data_iterator, stage: int,
           config: ml_collections.ConfigDict) -> None:
    """Writes checkpoint `step` (with `async_save`, starts writing it: see `wait`). The
    data iterator's position is read now, before training moves it on."""
    self.wait()  # the previous async save first: its failure names its own step
    meta = {"step": int(step), "stage": int(stage), "process_count": jax.process_count(),
            "config": config.to_json_best_effort()}
    try:
      with _stderr_silenced(QUIET_IO_FAILURES):
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta)), force=True)
        if not self.async_save:
          self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if self.async_save:
      self._in_flight = step

  def wait(self) -> None:
    """Blocks until an async save in flight is complete on disk; its failure raises
    `CheckpointSaveError` naming that step. Without one, returns at once."""
    step, self._in_flight = self._in_flight, None
    if step is None:
      return
    try:
      with _stderr_silenced(QUIET_IO_FAILURES):
        self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e

  def _save_error(self, step: int, error: BaseException) -> CheckpointSaveError:
    # Orbax writes into a temporary folder and renames it when complete, so a failed save
    # leaves the previous checkpoint as it was.
    latest = self.manager.latest_step()
    kept = (f"checkpoint {latest} is intact" if latest not in (None, step)
            else "no earlier checkpoint exists")
    return CheckpointSaveError(
        f"could not write checkpoint {step} to {self.directory} ({_short(error)}); {kept}. "
        "Free disk space or make the directory writable, then run the same command "
        "again to resume.")

  def restore_meta(self, step: int) -> dict:
    return self._restore(step, meta=ocp.args.JsonRestore())["meta"]

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state (into `abstract_state`'s structure) and, if given, the iterator."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self._restore(step, **args)["state"]

  def restore_subtree(self, step: int, name: str, abstract):
    """Restores one field of the saved state (e.g. "ema_params") into `abstract`'s structure,
    leaving the rest (optimizer moments) on disk."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    args = ocp.args.PyTreeRestore(
        item={name: abstract}, partial_restore=True,
        restore_args=jax.tree_util.tree_map(lambda _: ocp.ArrayRestoreArgs(sharding=device),
                                            {name: abstract}))
    return self._restore(step, state=args)["state"][name]

  def restore_data(self, step: int, data_iterator) -> None:
    """Positions `data_iterator` where the run was at `step`."""
    self._restore(step, data=grain.checkpoint.CheckpointRestore(data_iterator))

  def _restore(self, step: int, **args):
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # orbax raises many types; name the checkpoint that failed
      raise CheckpointRestoreError(f"Could not restore checkpoint {self.directory}/{step} "
                                   f"({', '.join(args)}): {_short(e)}") from e

  def newest_restorable(self, restore: Callable[[int], object], *, quarantine: bool = False,
                        log: Callable[[str], None] | None = None):
    """(step, restore(step)) for the newest step that restores, trying older ones after a
    failure, or (None, None) when there is no checkpoint at all.

    A step that fails (a truncated or missing file, an empty step folder) gets a warning
    naming it and why; it is never deleted. With `quarantine` (a training run, which will
    write new steps) damaged steps are moved to `<directory>/damaged/<step>`, so that Orbax
    neither resumes from them again nor writes a new step over them. `restore` raising a
    `UserError` (e.g. a checkpoint of another model) is not damage: it propagates. With
    several processes all of them must succeed on a step for it to count.
    """
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    damaged = []
    result, found = None, None
    for step in self.steps_newest_first():
      with _stderr_silenced(QUIET_IO_FAILURES):
        try:
          result, error = restore(step), None
        except UserError:
          raise
        except Exception as e:  # pylint: disable=broad-except
          result, error = None, e
          time.sleep(0.5)  # the abandoned reads' callbacks land while stderr is silenced
      ok = error is None
      if jax.process_count() > 1:
        ok = bool(np.all(multihost_utils.process_allgather(np.int32(ok))))
      if ok:
        found = step
        break
      damaged.append(step)
      if jax.process_index() == 0:
        reason = _short(error) if error is not None else "another process could not read it"
        log(f"WARNING: checkpoint {self.directory}/{step} cannot be restored ({reason}); "
            "trying the one before it.")
    if damaged and quarantine:
      self._quarantine(damaged)
    if found is None and damaged:
      raise NoRestorableCheckpointError(
          f"none of the checkpoints in {self.directory} can be restored (steps "
          f"{', '.join(map(str, damaged))}; see the warnings above). Start afresh in a new "
          "--workdir, or repair or remove the damaged steps.")
    if damaged and jax.process_index() == 0:
      where = (f"; moved to {self.directory}/damaged/ (kept, not deleted)" if quarantine
               else " (left where they are)")
      log(f"WARNING: using checkpoint {found}, the newest that restores; damaged: "
          f"{', '.join(map(str, damaged))}{where}.")
    return found, result

  def _quarantine(self, steps: list[int]) -> None:
    if jax.process_index() == 0:
      target = epath.Path(self.directory) / "damaged"
      target.mkdir(parents=True, exist_ok=True)
      for step in steps:
        destination = target / str(step)
        suffix = 1
        while destination.exists():  # damaged twice at the same step: keep both
          destination, suffix = target / f"{step}.{suffix}", suffix + 1
        (epath.Path(self.directory) / str(step)).rename(destination)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("videomar quarantined damaged checkpoints")
    self.manager.reload()

  def close(self) -> None:
    """Waits for a save in flight (raising its failure), then closes the manager."""
    try:
      self.wait()
    finally:
      # After a failed save, closing finishes its abandoned writes: their threads print
      # tracebacks too.
      with _stderr_silenced(QUIET_IO_FAILURES):
        self.manager.close()


def checkpoint_location(path: str) -> tuple[str, int | None]:
  """(checkpoint directory, step or None = latest) for a run directory, a run whose
  `config.train.checkpoint_dir` is elsewhere, a checkpoint directory URI (gs://...), or one
  `<checkpoints>/<step>` folder."""
  local = "://" not in path
  path = os.path.abspath(path) if local else path.rstrip("/")
  parent, base = os.path.dirname(path), os.path.basename(path)
  if base.isdigit() and (not local or os.path.basename(parent) == "checkpoints"):
    return parent, int(base)
  if not local:  # a checkpoint directory URI (a run's gs://.../checkpoints)
    return path, None
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  if os.path.isfile(os.path.join(path, "config.json")):
    with open(os.path.join(path, "config.json")) as f:
      remote = json.load(f).get("train", {}).get("checkpoint_dir", "")
    if remote:
      return remote.rstrip("/"), None
  raise FileNotFoundError(f"{path} is neither a run directory with checkpoints/ nor a "
                          "checkpoints/<step> folder.")
