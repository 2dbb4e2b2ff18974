"""What a PyTorch checkpoint holds, against what a config expects (`videomar torch keys`).

* `summarize`: the tensors grouped by top-level module, with block indices collapsed
  (`decoder_blocks.{0-11}.attn1.wqkv.weight [2304, 768] x12`), counts, dtypes and parameters.
* `infer_sizes` / `config_overrides`: the architecture the authors' layout implies (width,
  depth, heads from the q/k norm, MLP ratio, head width and depth, token dim, position table,
  context) and the `--config.*` flags that build it.
* `diff_report`: missing / unexpected / mis-shaped keys against a config, grouped the same
  way rather than as one long line.
* Key maps (`--key_map=FILE`): a JSON or YAML file of regex renames applied to every key
  before anything else, so that a checkpoint whose names differ slightly still loads:
  `{"^model\\.blocks\\.": "decoder_blocks."}` or `[["pattern", "replacement"], ...]`, applied
  in order with `re.sub`.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from videomar_jax.io.key_map import KeyMapError, apply_key_map, load_key_map  # pylint: disable=unused-import


# ---- Grouping.
def _pattern(key: str) -> tuple[str, tuple[int, ...]]:
  """'decoder_blocks.3.attn1.wqkv.weight' -> ('decoder_blocks.{}.attn1.wqkv.weight', (3,))."""
  parts = key.split(".")
  indices = tuple(int(p) for p in parts if p.isdigit())
  return ".".join("{}" if p.isdigit() else p for p in parts), indices


def _span(values: list[int]) -> str:
  values = sorted(set(values))
  if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
    return f"{values[0]}-{values[-1]}"
  return ",".join(str(v) for v in values)


def _rows(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, Any, int]]:
  """(name with index ranges, the shared shape or None, count) per key pattern."""
  groups: dict[str, list] = collections.defaultdict(list)
  for key in sorted(shapes, key=_natural):
    pattern, indices = _pattern(key)
    groups[pattern].append((indices, tuple(shapes[key])))
  rows = []
  for pattern, members in groups.items():
    values = [{m[0][i] for m in members} for i in range(pattern.count("{}"))]
    slots = [str(next(iter(v))) if len(v) == 1 else f"{{{_span(list(v))}}}" for v in values]
    distinct = {m[1] for m in members}
    rows.append((pattern.format(*slots),
                 next(iter(distinct)) if len(distinct) == 1 else None, len(members)))
  return rows


def collapse(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
  """One line per key pattern: indices as ranges, the shape (or 'shapes vary'), xN."""
  return [f"{name} {list(shape) if shape is not None else 'shapes vary'}"
          + (f" x{count}" if count > 1 else "") for name, shape, count in _rows(shapes)]


def _natural(key: str):
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def _dtype_name(value) -> str:
  dtype = getattr(value, "dtype", None)
  return str(dtype).replace("torch.", "") if dtype is not None else type(value).__name__


def summarize(state_dict: Mapping[str, Any], title: str = "checkpoint") -> str:
  """The grouped listing printed by `videomar torch keys`."""
  by_group: dict[str, list[str]] = collections.defaultdict(list)
  for key in state_dict:
    by_group[key.split(".")[0]].append(key)
  total = sum(int(np.prod(state_dict[k].shape, dtype=np.int64)) for k in state_dict)
  dtypes = collections.Counter(_dtype_name(v) for v in state_dict.values())
  lines = [f"{title}: {len(state_dict)} tensors, {total:,} parameters ("
           + ", ".join(f"{d}: {n}" for d, n in sorted(dtypes.items())) + ")"]
  for group in sorted(by_group, key=_natural):
    keys = by_group[group]
    count = sum(int(np.prod(state_dict[k].shape, dtype=np.int64)) for k in keys)
    kinds = sorted({_dtype_name(state_dict[k]) for k in keys})
    lines.append(f"{group}: {len(keys)} tensors, {count:,} parameters, {'/'.join(kinds)}")
    lines += ["  " + line for line in collapse({k: tuple(state_dict[k].shape) for k in keys})]
  return "\n".join(lines)


# ---- Architecture from the authors' layout.
def _shape(state_dict, key):
  value = state_dict.get(key)
  return tuple(value.shape) if value is not None else None


def infer_sizes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Sizes the authors' key layout implies; a size whose tensor is absent is left out."""
  sizes: dict[str, Any] = {}
  if shape := _shape(state_dict, "z_proj.weight"):
    sizes["width"], sizes["token_dim"] = shape
  blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"decoder_blocks\.(\d+)\.", k))}
  if blocks:
    sizes["depth"] = max(blocks) + 1
    first = f"decoder_blocks.{min(blocks)}"
    norm = _shape(state_dict, f"{first}.attn1.q_norm.weight")
    if norm and "width" in sizes:
      sizes["head_dim"] = norm[0]
      sizes["num_heads"] = sizes["width"] // norm[0]
    ff = _shape(state_dict, f"{first}.ff.net.0.proj.weight")
    if ff and "width" in sizes:
      sizes["mlp_ratio"] = ff[0] / sizes["width"]
  if shape := _shape(state_dict, "pos_embed_learned"):
    sizes["pos_embed_size"] = shape[0]
  if shape := _shape(state_dict, "context_embed.weight"):
    sizes["context"] = {"kind": "text", "dim": shape[1]}
    if null := _shape(state_dict, "fake_latent"):
      sizes["context"]["length"] = null[1]
  elif shape := _shape(state_dict, "class_emb.weight"):
    sizes["context"] = {"kind": "class", "num_classes": shape[0]}
  elif any(k.startswith("decoder_blocks.") for k in state_dict):
    sizes["context"] = {"kind": "none"}
  if shape := _shape(state_dict, "diffloss.net.input_proj.weight"):
    sizes["head_width"] = shape[0]
    sizes.setdefault("token_dim", shape[1])
  head_blocks = {int(m.group(1)) for k in state_dict
                 if (m := re.match(r"diffloss\.net\.res_blocks\.(\d+)\.", k))}
  if head_blocks:
    sizes["head_depth"] = max(head_blocks) + 1
  return sizes


def config_overrides(sizes: Mapping[str, Any]) -> list[str]:
  """`--config.*` flags giving a config these sizes (start from any preset)."""
  flags = []
  for size, key in (("width", "model.width"), ("depth", "model.depth"),
                    ("num_heads", "model.num_heads"), ("head_width", "head.width"),
                    ("head_depth", "head.depth"), ("pos_embed_size", "model.pos_embed_size")):
    if size in sizes:
      flags.append(f"--config.{key}={sizes[size]}")
  if "mlp_ratio" in sizes:
    ratio = sizes["mlp_ratio"]
    flags.append(f"--config.model.mlp_ratio={int(ratio) if float(ratio).is_integer() else ratio}")
  if "depth" in sizes and "pos_embed_size" not in sizes:
    flags.append("--config.model.pos_embed_size=0")
  context = sizes.get("context")
  if context:
    flags.append(f"--config.model.context.kind={context['kind']}")
    for name in ("dim", "length", "num_classes"):
      if name in context:
        flags.append(f"--config.model.context.{name}={context[name]}")
  if "token_dim" in sizes:  # token dim = tokenizer channels x model.patch_size ** 2
    dim, side = sizes["token_dim"], round((sizes["token_dim"] / 3) ** 0.5)
    if dim % 3 == 0 and 3 * side * side == dim:
      flags += ["--config.tokenizer.name=patch", f"--config.tokenizer.patch_size={side}",
                "--config.model.patch_size=1"]
    else:
      # The variant sets the strides, which no tensor shape shows: CV8x8x8 is the paper's.
      flags += ["--config.tokenizer.name=cosmos", "--config.tokenizer.variant=CV8x8x8",
                f"--config.tokenizer.latent_channels={dim}", "--config.model.patch_size=1"]
  return flags


def diff_report(state_dict: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> str:
  """Missing / unexpected / mis-shaped keys, grouped; '' when the layouts agree."""
  given = {k: tuple(v.shape) for k, v in state_dict.items()}
  missing = {k: expected[k] for k in expected if k not in given}
  unexpected = {k: given[k] for k in given if k not in expected}
  misshaped = {k: (given[k], tuple(expected[k])) for k in given
               if k in expected and given[k] != tuple(expected[k])}
  if not (missing or unexpected or misshaped):
    return ""
  lines = [f"{len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} "
           "mis-shaped:"]
  if missing:
    lines.append(f"missing ({len(missing)}; shape the config expects):")
    lines += ["  " + line for line in collapse(missing)]
  if unexpected:
    lines.append(f"unexpected ({len(unexpected)}; shape in the checkpoint):")
    lines += ["  " + line for line in collapse(unexpected)]
  if misshaped:
    lines.append(f"mis-shaped ({len(misshaped)}; checkpoint -> config):")
    for name, pair, count in _rows(misshaped):
      change = (f"{list(pair[0])} -> {list(pair[1])}" if pair is not None
                else "shapes vary")
      lines.append(f"  {name} {change}" + (f" x{count}" if count > 1 else ""))
  return "\n".join(lines)
