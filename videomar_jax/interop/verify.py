"""Layer-by-layer comparison of this JAX model with the PyTorch reference (`videomar verify`).

Both frameworks get the same weights (a checkpoint in the authors' layout) and the same
inputs: a clip of tokens `[B, T, h, w, C]` in one frame-causal sequence, a token mask
(1 = replaced by `mask_token`), optional context, and per-token diffusion timesteps and noise.
They are compared at every stage of the forward pass: the input projection, each block, the
final norm `z`, the diffusion head's output on `x_t` (noise and variance channels) and the
per-token loss.

Differences are reported as `max_abs` = max |jax - torch| and `max_rel` = max_abs / max
|torch| (relative to the layer's scale: elementwise ratios explode where values cross zero).
A layer diverges when `max_rel` exceeds the tolerance; the first one that does is where a
mismatch starts, since every later layer inherits it.

The JAX side runs per-layer (not `nn.scan`) so that each block's output can be read; the
math is the same.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videomar_jax.diffusion import gaussian
from videomar_jax.errors import UserError
from videomar_jax.models import sequence
from videomar_jax.models.transformer import scanned_to_layers
from videomar_jax.train.setup import make_model

# max |jax - torch| / max |torch| allowed per layer, by the JAX compute dtype (PyTorch always
# runs float32). float32 leaves summation-order noise (measured ~1e-6); bfloat16 matmuls
# (8-bit mantissa, ~4e-3 per rounding) give ~5e-3 per layer.
TOLERANCES = {"float32": 1e-4, "bfloat16": 3e-2}
INPUT_NAMES = ("tokens", "mask", "context", "context_mask", "timesteps", "noise")


class InputError(UserError):
  """Verification inputs whose names, shapes or values do not fit the model."""


@dataclasses.dataclass
class LayerDiff:
  name: str
  shape: tuple
  max_abs: float
  max_rel: float
  ok: bool


@dataclasses.dataclass
class Report:
  layers: list
  tolerance: float
  dtype: str
  first_divergent: str | None
  seconds: dict

  @property
  def passed(self) -> bool:
    return self.first_divergent is None

  def table(self) -> str:
    lines = [f"{'layer':<16} {'shape':<22} {'max_abs':>11} {'max_rel':>11}  status",
             "-" * 70]
    for d in self.layers:
      status = "ok" if d.ok else "DIVERGED"
      if d.name == self.first_divergent:
        status += "  <- first divergence"
      lines.append(f"{d.name:<16} {str(list(d.shape)):<22} {d.max_abs:11.3e} "
                   f"{d.max_rel:11.3e}  {status}")
    verdict = ("PASS" if self.passed else f"FAIL: first divergent layer {self.first_divergent}")
    lines.append(f"{verdict} (tolerance max_rel <= {self.tolerance:g}; JAX dtype "
                 f"{self.dtype}, PyTorch float32)")
    return "\n".join(lines)

  def to_json(self) -> dict:
    return {"passed": self.passed, "first_divergent": self.first_divergent,
            "tolerance": self.tolerance, "dtype": self.dtype, "seconds": self.seconds,
            "layers": [dataclasses.asdict(d) for d in self.layers]}


# ---- Inputs.

def random_inputs(config: ml_collections.ConfigDict, seed: int = 0, batch_size: int = 2,
                  num_frames: int = 3, grid: tuple[int, int] = (4, 6)) -> dict:
  """Random inputs: N(0, 1) tokens and noise, about half of each frame masked, timesteps
  over the whole range with t = 0 present (the decoder-NLL branch of the loss), and a
  context matching the config (text with some padding, or class labels)."""
  rng = np.random.default_rng(seed)
  model = make_model(config)
  b, t, (h, w), c = batch_size, num_frames, grid, model.token_dim
  num_timesteps = model.train_schedule.num_timesteps
  inputs = {
      "tokens": rng.standard_normal((b, t, h, w, c)).astype(np.float32),
      "mask": rng.random((b, t, h, w)) < 0.5,
      "timesteps": rng.integers(0, num_timesteps, (b, t, h, w)).astype(np.int32),
      "noise": rng.standard_normal((b, t, h, w, c)).astype(np.float32),
  }
  inputs["timesteps"].reshape(-1)[::7] = 0
  ctx = config.model.context
  if ctx.kind == "text":
    inputs["context"] = rng.standard_normal((b, ctx.length, ctx.dim)).astype(np.float32)
    inputs["context_mask"] = np.ones((b, ctx.length), bool)
    inputs["context_mask"][1:, ctx.length // 2 + 1:] = False  # padded text in sample 1+
  elif ctx.kind == "class":
    inputs["context"] = rng.integers(0, ctx.num_classes, (b,)).astype(np.int32)
  return inputs


def check_inputs(config: ml_collections.ConfigDict, inputs: dict, seed: int = 0) -> dict:
  """Validates user inputs (from an .npz) and fills the missing optional ones at random."""
  unknown = sorted(set(inputs) - set(INPUT_NAMES))
  if unknown:
    raise InputError(f"unknown input arrays {unknown}; expected some of {INPUT_NAMES}.")
  if "tokens" not in inputs:
    raise InputError("the inputs must contain 'tokens' [B, T, h, w, C].")
  model = make_model(config)
  tokens = np.asarray(inputs["tokens"], np.float32)
  if tokens.ndim != 5 or tokens.shape[-1] != model.token_dim:
    raise InputError(f"tokens must be [B, T, h, w, {model.token_dim}], got {tokens.shape}.")
  b, t, h, w, _ = tokens.shape
  out = random_inputs(config, seed, b, t, (h, w))
  out.update({k: np.asarray(v) for k, v in inputs.items()})
  out["tokens"] = tokens
  expect = {"mask": (b, t, h, w), "timesteps": (b, t, h, w), "noise": tokens.shape}
  ctx = config.model.context
  if ctx.kind == "text":
    expect.update(context=(b, ctx.length, ctx.dim), context_mask=(b, ctx.length))
  elif ctx.kind == "class":
    expect.update(context=(b,))
    if "context_mask" in inputs:
      raise InputError("a class-label model takes no context_mask.")
  elif "context" in inputs:
    raise InputError("the inputs hold a context but model.context.kind is 'none'.")
  for name, shape in expect.items():
    if tuple(out[name].shape) != tuple(shape):
      raise InputError(f"{name} must have shape {list(shape)}, got {list(out[name].shape)}.")
  out["mask"] = out["mask"].astype(bool)
  num_timesteps = model.train_schedule.num_timesteps
  if out["timesteps"].min() < 0 or out["timesteps"].max() >= num_timesteps:
    raise InputError(f"timesteps must lie in [0, {num_timesteps}).")
  out["timesteps"] = out["timesteps"].astype(np.int32)
  out["noise"] = out["noise"].astype(np.float32)
  if "context_mask" in out:
    out["context_mask"] = out["context_mask"].astype(bool)
  for name in ("tokens", "noise", "context"):
    if name in out and out[name].dtype.kind == "f" and not np.isfinite(out[name]).all():
      raise InputError(f"{name} holds non-finite values.")
  return out


# ---- The two forward passes.

def _per_layer_config(config):
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.scan_layers = False
  config.model.remat_policy = "none"
  return config


def jax_forward(config: ml_collections.ConfigDict, params: dict, inputs: dict) -> dict:
  """This project's forward pass with every compared intermediate, as float32 NumPy."""
  config = _per_layer_config(config)
  model = make_model(config)
  if "blocks" in params["transformer"]:
    params = {**params, "transformer": scanned_to_layers(params["transformer"],
                                                         config.model.depth)}
  b, t, h, w, c = inputs["tokens"].shape
  flat = lambda a: jnp.asarray(a).reshape(b, t * h * w, *a.shape[4:])
  tokens, noise = flat(inputs["tokens"]), flat(inputs["noise"])
  is_masked, timesteps = flat(inputs["mask"]), flat(inputs["timesteps"])
  positions = sequence.frame_positions(np.arange(t), h, w)
  attn_mask = sequence.frame_causal_mask(t, h * w)

  @jax.jit
  def run(params, tokens, is_masked, context, context_mask, timesteps, noise):
    z, state = model.transformer.apply(
        {"params": params["transformer"]}, tokens, is_masked, positions, attn_mask, context,
        context_mask, mutable=["intermediates"])
    out = {k: v[0] for k, v in state["intermediates"].items()}
    out["z"] = z
    head = lambda x, tt: model.head.apply({"params": params["diffusion_head"]},
                                          x.reshape(-1, c), tt.reshape(-1),
                                          z.reshape(-1, z.shape[-1])).reshape(*x.shape[:2], -1)
    x_t = gaussian.q_sample(model.train_schedule, tokens, timesteps, noise)
    out["head_out"] = head(x_t, timesteps)
    out["loss_per_token"] = gaussian.training_losses(model.train_schedule, head, tokens,
                                                     timesteps, noise)["loss"]
    return out

  out = run(params, tokens, is_masked, inputs.get("context"), inputs.get("context_mask"),
            timesteps, noise)
  return {k: np.asarray(v, np.float32).reshape(b, t, h, w, *v.shape[2:])
          for k, v in out.items()}


def torch_model(config: ml_collections.ConfigDict, state_dict: dict | None = None):
  """The PyTorch reference network for `config`, loaded strictly from `state_dict`."""
  import torch  # pylint: disable=import-outside-toplevel
  from videomar_jax.interop import torch_reference  # pylint: disable=import-outside-toplevel
  model = make_model(config)
  tc, ctx = model.transformer_config, config.model.context
  net = torch_reference.TorchVideoMAR(
      token_dim=model.token_dim, width=tc.width, depth=tc.depth, num_heads=tc.num_heads,
      mlp_ratio=tc.mlp_ratio, rope_split=tuple(tc.rope_split), rope_base=tc.rope_base,
      context_kind=ctx.kind, num_classes=ctx.num_classes, context_dim=ctx.dim,
      context_length=ctx.length, head_width=config.head.width, head_depth=config.head.depth,
      pos_embed_size=tc.pos_embed_size)
  if state_dict is not None:
    net.load_state_dict({k: torch.from_numpy(np.array(v, np.float32))
                         for k, v in state_dict.items()}, strict=True)
  return net.eval()


def torch_forward(config: ml_collections.ConfigDict, net, inputs: dict) -> dict:
  from videomar_jax.interop import torch_reference  # pylint: disable=import-outside-toplevel
  diffusion = torch_reference.TorchGaussianDiffusion(config.head.num_timesteps,
                                                     config.head.noise_schedule)
  return torch_reference.reference_forward(
      net, diffusion, inputs["tokens"], inputs["mask"], inputs["timesteps"], inputs["noise"],
      inputs.get("context"), inputs.get("context_mask"))


# ---- Comparison.

def layer_order(depth: int) -> list[str]:
  return (["input_proj"] + [f"block_{i}" for i in range(depth)] +
          ["z", "head_eps", "head_var", "loss_per_token"])


def _split_head(outputs: dict) -> dict:
  outputs = dict(outputs)
  head = outputs["head_out"]
  c = head.shape[-1] // 2
  outputs["head_eps"], outputs["head_var"] = head[..., :c], head[..., c:]
  return outputs


def compare(jax_out: dict, torch_out: dict, depth: int, tolerance: float) -> list[LayerDiff]:
  jax_out, torch_out = _split_head(jax_out), _split_head(torch_out)
  diffs = []
  for name in layer_order(depth):
    a, b = np.asarray(jax_out[name], np.float64), np.asarray(torch_out[name], np.float64)
    if a.shape != b.shape:
      raise ValueError(f"{name}: JAX shape {a.shape} != PyTorch shape {b.shape}.")
    max_abs = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    max_rel = max_abs / max(scale, 1e-30)
    ok = bool(np.isfinite(a).all() and np.isfinite(b).all() and max_rel <= tolerance)
    diffs.append(LayerDiff(name, a.shape, max_abs, max_rel, ok))
  return diffs


def verify(config: ml_collections.ConfigDict, state_dict: dict, inputs: dict,
           tolerance: float | None = None):
  """Runs both frameworks from one authors'-layout state_dict; returns (Report, outputs)
  with outputs {"jax/<name>": ..., "torch/<name>": ...}."""
  from videomar_jax.interop import layout  # pylint: disable=import-outside-toplevel
  dtype = config.model.dtype
  if dtype not in TOLERANCES:
    raise InputError(f"model.dtype {dtype!r}: verify knows {sorted(TOLERANCES)}.")
  tolerance = TOLERANCES[dtype] if tolerance is None else tolerance
  seconds = {}
  start = time.perf_counter()
  params = layout.torch_to_flax(state_dict, make_model(config).abstract_params(),
                                config.model.depth)
  jax_out = jax_forward(config, params, inputs)
  seconds["jax"] = time.perf_counter() - start
  start = time.perf_counter()
  torch_out = torch_forward(config, torch_model(config, state_dict), inputs)
  seconds["torch"] = time.perf_counter() - start
  diffs = compare(jax_out, torch_out, config.model.depth, tolerance)
  first = next((d.name for d in diffs if not d.ok), None)
  outputs = {f"jax/{k}": v for k, v in jax_out.items()}
  outputs.update({f"torch/{k}": np.asarray(v, np.float32) for k, v in torch_out.items()})
  return Report(diffs, tolerance, dtype, first, seconds), outputs
