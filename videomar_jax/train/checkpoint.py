"""Orbax checkpoints of a run: train state, data-iterator state, curriculum position, config.

Layout: `<workdir>/checkpoints/<step>/{state,data,meta}`. `meta` is JSON with the stage
index whose data iterator was saved and the run's config, so a restarted run knows where
in the curriculum it is before it builds the data pipeline. Orbax writes each step to a
temporary folder and renames it when complete, so a run killed mid-save keeps the previous
checkpoint intact.
"""

import json
import os

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from videomar_jax.errors import ConfigError

# Config keys that shape the parameters (or the tokens they read): a checkpoint restores
# only into the model it was written from. Compute-only settings may change on resume.
_MODEL_SECTIONS = ("model", "head.width", "head.depth", "tokenizer.name",
                   "tokenizer.patch_size", "tokenizer.variant", "tokenizer.latent_channels")
_COMPUTE_ONLY = ("model.dtype", "model.remat_policy", "model.attention_chunk",
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


class Checkpointer:
  """A thin wrapper around `ocp.CheckpointManager` for the trainer's three items."""

  def __init__(self, workdir: str, keep: int, directory: str = "", create: bool = True):
    """Checkpoints go to `directory`, default `<workdir>/checkpoints`. A URI such as
    gs://bucket/run/checkpoints is passed to Orbax as it is."""
    if not directory:
      directory = os.path.join(workdir, "checkpoints")
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "data", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, stage: int,
           config: ml_collections.ConfigDict) -> None:
    meta = {"step": int(step), "stage": int(stage), "process_count": jax.process_count(),
            "config": config.to_json_best_effort()}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave(meta)), force=True)
    self.manager.wait_until_finished()

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
    args = ocp.args.PyTreeRestore(
        item={name: abstract}, partial_restore=True,
        restore_args=jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=None),
                                            {name: abstract}))
    return self._restore(step, state=args)["state"][name]

  def _restore(self, step: int, **args):
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # orbax raises many types; name the checkpoint that failed
      raise RuntimeError(f"Could not restore checkpoint {self.directory}/{step} "
                         f"({', '.join(args)}): {type(e).__name__}: {e}") from e

  def close(self) -> None:
    self.manager.wait_until_finished()
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
