"""Key maps: regex renames of a state dict's keys, read from a JSON or YAML file.

`{"^model\\.blocks\\.": "decoder_blocks."}` or `[["pattern", "replacement"], ...]`, applied in
order with `re.sub`, so that a checkpoint whose names differ slightly from a known layout
still loads (`--key_map=FILE`, `config.train.init_key_map`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from videomar_jax.errors import UserError


class KeyMapError(UserError):
  """A key-map file that cannot be used (unreadable, not a mapping/list, bad regex)."""


def load_key_map(path: str) -> list[tuple[re.Pattern, str]]:
  """(compiled pattern, replacement) pairs from a JSON or YAML file, in file order."""
  if not os.path.isfile(path):
    raise KeyMapError(f"--key_map={path}: no such file.")
  with open(path) as f:
    text = f.read()
  try:
    if path.endswith((".yaml", ".yml")):
      import yaml  # pylint: disable=import-outside-toplevel
      raw = yaml.safe_load(text)
    else:
      raw = json.loads(text)
  except Exception as e:  # json / yaml parse errors: name the file, not a traceback
    raise KeyMapError(f"--key_map={path}: not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'} ({e}).") from None
  if isinstance(raw, Mapping):
    pairs = list(raw.items())
  elif isinstance(raw, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in raw):
    pairs = [tuple(p) for p in raw]
  else:
    raise KeyMapError(f"--key_map={path}: expected a mapping {{pattern: replacement}} or a "
                      "list of [pattern, replacement] pairs.")
  rules = []
  for pattern, replacement in pairs:
    if not isinstance(pattern, str) or not isinstance(replacement, str):
      raise KeyMapError(f"--key_map={path}: entry {pattern!r}: {replacement!r} is not two "
                        "strings.")
    try:
      rules.append((re.compile(pattern), replacement))
    except re.error as e:
      raise KeyMapError(f"--key_map={path}: bad regex {pattern!r} ({e}).") from None
  return rules


def apply_key_map(state_dict: Mapping[str, Any], rules) -> dict[str, Any]:
  """Every key renamed by every rule in turn; two keys renamed onto one name is an error."""
  out, sources = {}, {}
  for key, value in state_dict.items():
    new = key
    for pattern, replacement in rules:
      new = pattern.sub(replacement, new)
    if new in out:
      raise KeyMapError(f"the key map renames both {sources[new]!r} and {key!r} to {new!r}.")
    out[new], sources[new] = value, key
  return out
