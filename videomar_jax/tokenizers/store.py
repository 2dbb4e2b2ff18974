"""A tokenizer directory: the network's config and its weights, readable without the run.

Layout of `DIR` (written by `videomar tokenizer convert` and `videomar tokenizer train`)::

    DIR/tokenizer.json       {"kind": "cosmos", "variant": "CV8x8x8" | null,
                              "network": {...CosmosConfig...}, "latent_scale": 0.5,
                              "source": "where the weights came from"}
    DIR/params.safetensors   float32 weights, keys are flax paths joined by "/"

Loading is strict: the weights must be exactly the parameters the network config builds,
with the same shapes, or a `TokenizerStoreError` lists every difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any

import numpy as np
from flax import traverse_util

from videomar_jax.errors import UserError
from videomar_jax.io import safetensors_io
from videomar_jax.tokenizers.cosmos import CosmosConfig, abstract_params

CONFIG_FILE = "tokenizer.json"
PARAMS_FILE = "params.safetensors"


class TokenizerStoreError(UserError):
  """A tokenizer directory that is missing, incomplete or does not match its config."""


@dataclasses.dataclass(frozen=True)
class StoredTokenizer:
  network: CosmosConfig
  params: Any  # nested dict of float32 numpy arrays
  variant: str | None
  latent_scale: float
  source: str
  directory: str


def check_params(params, network: CosmosConfig, where: str) -> None:
  """Raises `TokenizerStoreError` listing missing, unexpected and mis-shaped weights."""
  expected = traverse_util.flatten_dict(abstract_params(network), sep="/")
  given = traverse_util.flatten_dict(params, sep="/")
  missing = sorted(set(expected) - set(given))
  unexpected = sorted(set(given) - set(expected))
  misshaped = [f"{k}: {tuple(np.shape(given[k]))} != {tuple(expected[k].shape)}"
               for k in sorted(set(given) & set(expected))
               if tuple(np.shape(given[k])) != tuple(expected[k].shape)]
  if missing or unexpected or misshaped:
    parts = [f"{where}: the weights do not match the tokenizer network"]
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("wrong shape", misshaped)):
      if items:
        parts.append(f"{title} ({len(items)}): " + ", ".join(items[:20]) +
                     (" ..." if len(items) > 20 else ""))
    raise TokenizerStoreError("; ".join(parts))


def save(directory: str, network: CosmosConfig, params, *, variant: str | None,
         latent_scale: float, source: str) -> str:
  """Writes a tokenizer directory (weights first, config last, each atomically)."""
  check_params(params, network, directory)
  os.makedirs(directory, exist_ok=True)
  flat = {k: np.asarray(v, dtype=np.float32)
          for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  safetensors_io.save(flat, os.path.join(directory, PARAMS_FILE))
  meta = {"kind": "cosmos", "variant": variant, "network": network.to_dict(),
          "latent_scale": float(latent_scale), "source": source}
  tmp = os.path.join(directory, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp, os.path.join(directory, CONFIG_FILE))
  return directory


def read_meta(directory: str) -> dict:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isdir(directory):
    raise TokenizerStoreError(f"no tokenizer directory at {directory} (write one with "
                              "`videomar tokenizer convert` or `videomar tokenizer train`).")
  if not os.path.isfile(path):
    raise TokenizerStoreError(f"{directory} has no {CONFIG_FILE}: not a tokenizer directory.")
  try:
    with open(path) as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise TokenizerStoreError(f"{path} is not valid JSON ({e}).") from None
  if meta.get("kind") != "cosmos" or "network" not in meta:
    raise TokenizerStoreError(f"{path}: expected kind 'cosmos' with a 'network' entry.")
  return meta


def load(directory: str) -> StoredTokenizer:
  """Reads and checks a tokenizer directory."""
  meta = read_meta(directory)
  try:
    network = CosmosConfig.from_dict(meta["network"])
  except (TypeError, ValueError) as e:
    raise TokenizerStoreError(f"{directory}/{CONFIG_FILE}: bad network config: {e}") from None
  params_path = os.path.join(directory, PARAMS_FILE)
  if not os.path.isfile(params_path):
    raise TokenizerStoreError(f"{directory} has no {PARAMS_FILE}.")
  try:
    flat = safetensors_io.load(params_path)
  except safetensors_io.SafetensorsError as e:
    raise TokenizerStoreError(str(e)) from None
  params = traverse_util.unflatten_dict(flat, sep="/")
  check_params(params, network, params_path)
  return StoredTokenizer(network=network, params=params, variant=meta.get("variant"),
                         latent_scale=float(meta.get("latent_scale", 1.0)),
                         source=str(meta.get("source", "")),
                         directory=os.path.abspath(directory))


def fingerprint(directory: str) -> str:
  """SHA-256 of the weights file: tells whether two directories hold the same tokenizer."""
  digest = hashlib.sha256()
  with open(os.path.join(directory, PARAMS_FILE), "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def copy(directory: str, destination: str) -> str:
  """Copies a tokenizer directory (config and weights) to `destination`."""
  read_meta(directory)
  os.makedirs(destination, exist_ok=True)
  for name in (PARAMS_FILE, CONFIG_FILE):  # config last: a half-copied dir has no config
    tmp = os.path.join(destination, f"{name}.tmp{os.getpid()}")
    shutil.copyfile(os.path.join(directory, name), tmp)
    os.replace(tmp, os.path.join(destination, name))
  return destination
