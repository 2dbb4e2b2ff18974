"""`videomar verify` and `videomar torch export`: the PyTorch side of the command line.

  videomar verify --torch_checkpoint=PATH --config=configs/videomar.py:small
      [--inputs=in.npz] [--outputs=out.npz] [--json=report.json] [--tolerance=...]
  videomar torch export --checkpoint=RUN_OR_STEP --out=model.safetensors [--use_ema]
  videomar torch keys --torch_checkpoint=PATH [--config=...] [--key_map=renames.json]

Importing needs no command: `videomar sample --torch_checkpoint=PATH --config=...` samples
from authors' weights, and `--config.train.init_from=PATH` starts a training run from them.
"""

import json
import os
import sys

from absl import app, flags

_TORCH_CHECKPOINT = flags.DEFINE_string(
    "torch_checkpoint", None, "verify / sample: a PyTorch checkpoint in the VideoMAR authors' "
    "layout (.safetensors, .pt or .pth).")
_TORCH_ENTRY = flags.DEFINE_enum(
    "torch_entry", "auto", ["auto", "model_ema", "model", "bare"],
    "Which state_dict of a training checkpoint to read (auto: model_ema, else model, else "
    "the bare dict).")
_INPUTS = flags.DEFINE_string("inputs", None, "verify: .npz of inputs (tokens [B,T,h,w,C], "
                              "mask, context, context_mask, timesteps, noise); random if unset.")
_OUTPUTS = flags.DEFINE_string("outputs", None, "verify: write both frameworks' arrays "
                               "(jax/<name>, torch/<name>) to this .npz.")
_TOLERANCE = flags.DEFINE_float("tolerance", None, "verify: max relative difference per "
                                "layer (default: 1e-4 for float32, 3e-2 for bfloat16).")
_VERIFY_SEED = flags.DEFINE_integer("verify_seed", 0, "verify: seed of the random inputs.")
_VERIFY_SHAPE = flags.DEFINE_string(
    "verify_shape", "2,3,4,6", "verify: random inputs' batch, frames, token rows, token "
    "columns (B,T,h,w; non-square by default so rows and columns cannot be confused).")
_KEY_MAP = flags.DEFINE_string(
    "key_map", None, "verify / sample / torch keys: a JSON or YAML file of regex key renames "
    "({pattern: replacement}, applied in order to every key) for checkpoints whose names "
    "differ slightly from the authors' layout; training takes config.train.init_key_map.")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "torch export: export the EMA weights.")


def cmd_verify(_):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from videomar_jax.interop import torch_checkpoint as checkpoints, verify  # pylint: disable=import-outside-toplevel
  config = flags.FLAGS["config"].value
  if config is None or _TORCH_CHECKPOINT.value is None:
    raise app.UsageError("verify needs --config and --torch_checkpoint.")
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise app.UsageError("verify needs PyTorch: pip install torch --index-url "
                         "https://download.pytorch.org/whl/cpu (the CPU build)") from None
  state_dict, entry = checkpoints.read_state_dict(_TORCH_CHECKPOINT.value, _TORCH_ENTRY.value,
                                                  _KEY_MAP.value or "")
  if _INPUTS.value:
    with np.load(_INPUTS.value) as data:
      raw = dict(data)
    try:
      inputs = verify.check_inputs(config, raw, _VERIFY_SEED.value)
    except verify.InputError as e:
      raise app.UsageError(f"{_INPUTS.value}: {e}") from None
  else:
    try:
      b, t, h, w = (int(v) for v in _VERIFY_SHAPE.value.split(","))
    except ValueError:
      raise app.UsageError(f"--verify_shape={_VERIFY_SHAPE.value!r} must be B,T,h,w.") from None
    inputs = verify.random_inputs(config, _VERIFY_SEED.value, b, t, (h, w))
  print(f"Verifying {_TORCH_CHECKPOINT.value} ({entry}) on inputs "
        f"tokens{list(inputs['tokens'].shape)}...", flush=True)
  report, outputs = verify.verify(config, state_dict, inputs, _TOLERANCE.value)
  print(report.table())
  print(f"JAX {report.seconds['jax']:.1f} s (compilation included), PyTorch "
        f"{report.seconds['torch']:.1f} s", flush=True)
  if _OUTPUTS.value:
    np.savez(_OUTPUTS.value, **outputs)
  if flags.FLAGS["json"].value:
    with open(flags.FLAGS["json"].value, "w") as f:
      json.dump(report.to_json(), f, indent=2)
  if not report.passed:
    sys.exit(1)


def cmd_torch_export(_):
  from videomar_jax.interop import torch_checkpoint as checkpoints  # pylint: disable=import-outside-toplevel
  from videomar_jax.train.setup import restore_weights  # pylint: disable=import-outside-toplevel
  source = flags.FLAGS["checkpoint"].value or flags.FLAGS["workdir"].value
  out = flags.FLAGS["out"].value
  if source is None or out is None:
    raise app.UsageError("torch export needs --checkpoint (or --workdir) and --out.")
  config, params, step = restore_weights(source, use_ema=_USE_EMA.value)
  state_dict = checkpoints.export_params(params, config, out)
  with open(os.path.splitext(out)[0] + ".config.json", "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  print(f"Exported step {step} ({'EMA' if _USE_EMA.value else 'raw'} weights, "
        f"{len(state_dict)} tensors) to {out}", flush=True)


def cmd_torch_keys(_):
  # pylint: disable=import-outside-toplevel
  from videomar_jax.interop import torch_checkpoint as checkpoints, keys, layout
  from videomar_jax.train.setup import make_model
  # pylint: enable=import-outside-toplevel
  path = _TORCH_CHECKPOINT.value
  if path is None:
    raise app.UsageError("torch keys needs --torch_checkpoint=PATH [--config=...].")
  state_dict, entry = checkpoints.read_state_dict(path, _TORCH_ENTRY.value, _KEY_MAP.value or "")
  print(keys.summarize(state_dict, f"{path} ({entry})"))
  sizes = keys.infer_sizes(state_dict)
  print("\nSizes implied by the authors' layout: "
        + (", ".join(f"{k}={v}" for k, v in sizes.items()) or "none (not that layout?)"))
  overrides = keys.config_overrides(sizes)
  if overrides:
    print("Matching config overrides:\n  " + " \\\n  ".join(overrides))
  config = flags.FLAGS["config"].value
  if config is None:
    return
  expected = layout.expected_torch_shapes(make_model(config).abstract_params(), config.model.depth)
  report = keys.diff_report(state_dict, expected)
  if not report:
    print(f"\nThe checkpoint matches the config ({len(expected)} tensors).", flush=True)
    return
  print(f"\nAgainst the config: {report}", flush=True)
  sys.exit(1)


HANDLERS = {"verify": cmd_verify, "torch export": cmd_torch_export,
            "torch keys": cmd_torch_keys}
