"""Gaussian diffusion for MAR's per-token diffusion loss, as pure JAX functions.

This module reproduces the math of the IDDPM code that MAR (github.com/LTH14/mar) ships in
`diffusion/gaussian_diffusion.py`, `diffusion/respace.py` and `diffusion/diffusion_utils.py`,
restricted to the configuration MAR's `DiffLoss` uses (`create_diffusion` defaults):

* model mean type EPSILON (the network predicts the noise),
* model variance type LEARNED_RANGE (the network also predicts `v` in [-1, 1] that
  interpolates the log-variance between the posterior variance and beta),
* loss type MSE: `loss = mse(eps) + vb`, where the variational-bound term trains only the
  variance (a stop-gradient is put on the predicted noise), not rescaled,
* no clipping of the predicted x_0 (`clip_denoised=False`), ancestral (DDPM) sampling with a
  temperature that scales the per-step noise.

Everything here is stateless and jit-friendly. The schedule is a `DiffusionSchedule` pytree of
float32 arrays (computed once in float64 NumPy, exactly as `GaussianDiffusion.__init__`), and
all functions take it as their first argument.

Shapes: data arrays are `[..., C]` (channels last; MAR's tokens are `[M, C]`); timestep arrays
are integer arrays whose shape broadcasts (NumPy rules) against the leading dims
`x.shape[:-1]`, e.g. `[M]` for `[M, C]`. All per-token reductions (IDDPM's `mean_flat`) are
means over the last (channel) axis.

Timesteps come in two flavours when the schedule is respaced (as MAR's `gen_diffusion` with
`num_sampling_steps`): *spaced indices* `i in [0, T')` index the schedule arrays, while the
network is always fed the *original* timestep `s.timestep_map[i]` in `[0, T)`, as IDDPM's
`_WrappedModel` does. Without respacing `timestep_map` is the identity.

The network is passed around as `model_fn(x [M, C], timesteps [M] int32) -> [M, 2C]`, with any
conditioning closed over; the first C output channels are the predicted noise and the last C
the variance interpolation values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]

__all__ = [
    "DiffusionSchedule",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "guided_model_fn",
    "learned_range_log_variance",
    "make_schedule",
    "normal_kl",
    "p_mean_variance",
    "p_sample",
    "p_sample_loop",
    "predict_xstart_from_eps",
    "q_posterior_mean_variance",
    "q_sample",
    "sample",
    "space_timesteps",
    "training_losses",
]


# --------------------------------------------------------------------------------------------
# Schedules (float64 NumPy, build time).
# --------------------------------------------------------------------------------------------


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
  """Original timesteps kept when respacing a `num_timesteps`-step process (IDDPM respace.py).

  The process is cut into `len(section_counts)` equal sections (the first
  `num_timesteps % len(section_counts)` sections get one extra step) and section `k` keeps
  `section_counts[k]` evenly strided steps: with `size` steps in the section and `n` kept,
  the stride is `(size - 1) / (n - 1)` (1 when `n <= 1`) and the kept offsets are the Python
  `round` of the running sum of the stride, as in IDDPM.

  Args:
    num_timesteps: the number T of steps of the original process.
    section_counts: an int (one section; e.g. 100 keeps steps 0, 10, 20, ..., 999 of 1000),
      a sequence of per-section counts, or a string: comma-separated counts (e.g. "100" or
      "10,15,20"), or "ddimN" for the DDIM striding `range(0, T, stride)` with exactly N steps.

  Returns:
    The sorted list of kept original timesteps.
  """
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired_count = int(section_counts[len("ddim"):])
      for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired_count:
          return list(range(0, num_timesteps, stride))
      raise ValueError(f"cannot create exactly {desired_count} steps with an integer stride")
    section_counts = [int(x) for x in section_counts.split(",")]
  elif isinstance(section_counts, (int, np.integer)):
    section_counts = [int(section_counts)]
  section_counts = list(section_counts)

  size_per, extra = divmod(num_timesteps, len(section_counts))
  start_idx = 0
  kept: set[int] = set()
  for k, count in enumerate(section_counts):
    size = size_per + (1 if k < extra else 0)
    if size < count:
      raise ValueError(f"cannot divide a section of {size} steps into {count}")
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    offset = 0.0
    for _ in range(count):
      kept.add(start_idx + round(offset))
      offset += stride
    start_idx += size
  return sorted(kept)


def _betas_for_alpha_bar(
    num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
  """IDDPM `betas_for_alpha_bar`: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)."""
  betas = [
      min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
      for i in range(num_timesteps)
  ]
  return np.asarray(betas, dtype=np.float64)


def _named_betas(noise_schedule: str, num_timesteps: int) -> np.ndarray:
  """IDDPM `get_named_beta_schedule` for "cosine" and "linear", in float64."""
  if noise_schedule == "cosine":
    return _betas_for_alpha_bar(
        num_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    )
  if noise_schedule == "linear":
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
  raise ValueError(f"unknown noise schedule {noise_schedule!r}; use 'cosine' or 'linear'")


@flax.struct.dataclass
class DiffusionSchedule:
  """Precomputed per-step quantities of a (possibly respaced) Gaussian diffusion.

  Mirrors the arrays IDDPM's `GaussianDiffusion.__init__` derives from the betas; every field
  is a float32 array of length T' (the number of steps actually used), except `timestep_map`
  (int32 [T']) that maps a spaced index to the original timestep fed to the network
  (respace.py's `timestep_map`). Being a pytree, it can be passed through `jit` or closed over.
  """

  betas: Array
  log_betas: Array
  alphas_cumprod: Array
  alphas_cumprod_prev: Array
  sqrt_alphas_cumprod: Array
  sqrt_one_minus_alphas_cumprod: Array
  sqrt_recip_alphas_cumprod: Array
  sqrt_recipm1_alphas_cumprod: Array
  posterior_variance: Array
  posterior_log_variance_clipped: Array
  posterior_mean_coef1: Array
  posterior_mean_coef2: Array
  timestep_map: Array

  @property
  def num_timesteps(self) -> int:
    """Number T' of diffusion steps in this schedule (static: read from the array shape)."""
    return self.betas.shape[0]


def _schedule_from_betas(betas: np.ndarray, timestep_map: Sequence[int]) -> DiffusionSchedule:
  """Derives all schedule arrays from float64 betas as `GaussianDiffusion.__init__` does."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.shape[0] < 2:
    raise ValueError(f"need a 1-D schedule of at least 2 steps, got shape {betas.shape}")
  if not ((betas > 0).all() and (betas <= 1).all()):
    raise ValueError("betas must lie in (0, 1]")
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  # The posterior variance is 0 at t = 0; its log is clipped by reusing the t = 1 value.
  posterior_log_variance_clipped = np.log(
      np.append(posterior_variance[1], posterior_variance[1:])
  )
  arrays = dict(
      betas=betas,
      log_betas=np.log(betas),
      alphas_cumprod=alphas_cumprod,
      alphas_cumprod_prev=alphas_cumprod_prev,
      sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
      posterior_variance=posterior_variance,
      posterior_log_variance_clipped=posterior_log_variance_clipped,
      posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
      posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
  )
  return DiffusionSchedule(
      **{k: jnp.asarray(v, dtype=jnp.float32) for k, v in arrays.items()},
      timestep_map=jnp.asarray(np.asarray(timestep_map), dtype=jnp.int32),
  )


def make_schedule(
    num_timesteps: int = 1000,
    noise_schedule: str = "cosine",
    respacing: int | str | Sequence[int] | None = None,
) -> DiffusionSchedule:
  """Builds the schedule of MAR's `create_diffusion(timestep_respacing, noise_schedule)`.

  Args:
    num_timesteps: T, the number of steps of the base process (MAR: 1000).
    noise_schedule: "cosine" (MAR's choice) or "linear" (IDDPM's scaled DDPM schedule).
    respacing: None or "" for the full process (MAR's `train_diffusion`); otherwise anything
      `space_timesteps` accepts (MAR's `gen_diffusion` uses `num_sampling_steps`, e.g. "100").
      As IDDPM's `SpacedDiffusion`, the kept steps t_0 < t_1 < ... get new betas
      `1 - abar[t_i] / abar[t_{i-1}]` (with abar[t_{-1}] = 1), so that the respaced process
      has the same cumulative alphas at the kept steps.

  Returns:
    A `DiffusionSchedule` with float32 arrays computed in float64.
  """
  base_betas = _named_betas(noise_schedule, num_timesteps)
  if respacing is None or respacing == "":
    return _schedule_from_betas(base_betas, np.arange(num_timesteps))
  kept = set(space_timesteps(num_timesteps, respacing))
  base_alphas_cumprod = np.cumprod(1.0 - base_betas)
  last_alpha_cumprod = 1.0
  new_betas, timestep_map = [], []
  for t, alpha_cumprod in enumerate(base_alphas_cumprod):
    if t in kept:
      new_betas.append(1.0 - alpha_cumprod / last_alpha_cumprod)
      last_alpha_cumprod = alpha_cumprod
      timestep_map.append(t)
  return _schedule_from_betas(np.asarray(new_betas), timestep_map)


# --------------------------------------------------------------------------------------------
# Closed forms.
# --------------------------------------------------------------------------------------------


def _at(values: Array, t: Array) -> Array:
  """Gathers `values[t]` and appends a channel axis (IDDPM `_extract_into_tensor`)."""
  return values[jnp.asarray(t)][..., None]


def q_sample(s: DiffusionSchedule, x_start: Array, t: Array, noise: Array) -> Array:
  """Samples q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with the given noise."""
  return _at(s.sqrt_alphas_cumprod, t) * x_start + _at(s.sqrt_one_minus_alphas_cumprod, t) * noise


def q_posterior_mean_variance(
    s: DiffusionSchedule, x_start: Array, x_t: Array, t: Array
) -> tuple[Array, Array, Array]:
  """Mean, variance and clipped log-variance of the posterior q(x_{t-1} | x_t, x_0).

  The variance and log-variance are `[..., 1]` (per token, broadcasting over channels).
  """
  mean = _at(s.posterior_mean_coef1, t) * x_start + _at(s.posterior_mean_coef2, t) * x_t
  return mean, _at(s.posterior_variance, t), _at(s.posterior_log_variance_clipped, t)


def predict_xstart_from_eps(s: DiffusionSchedule, x_t: Array, t: Array, eps: Array) -> Array:
  """Inverts `q_sample` for x_0 given the noise (IDDPM `_predict_xstart_from_eps`)."""
  return _at(s.sqrt_recip_alphas_cumprod, t) * x_t - _at(s.sqrt_recipm1_alphas_cumprod, t) * eps


def learned_range_log_variance(s: DiffusionSchedule, var_values: Array, t: Array) -> Array:
  """LEARNED_RANGE log-variance: v = -1 gives the posterior variance, v = +1 gives beta_t.

  `frac = (v + 1) / 2`; `log_var = frac * log(beta_t) + (1 - frac) * log(posterior var_t)`
  (the clipped posterior log-variance), with `v` unconstrained as in IDDPM.
  """
  min_log = _at(s.posterior_log_variance_clipped, t)
  max_log = _at(s.log_betas, t)
  frac = (var_values + 1.0) / 2.0
  return frac * max_log + (1.0 - frac) * min_log


def p_mean_variance(
    s: DiffusionSchedule, model_output: Array, x_t: Array, t: Array, clip_x0: float = 0.0
) -> dict[str, Array]:
  """The model's reverse step p(x_{t-1} | x_t) from its raw output (IDDPM `p_mean_variance`).

  For EPSILON prediction with LEARNED_RANGE variance. `clip_x0` > 0 clips the predicted x_0
  to [-clip_x0, clip_x0] before the posterior mean (IDDPM's `clip_denoised`, for data known
  to lie in a range such as pixels in [-1, 1]); 0 (MAR, unbounded latents) does not clip.

  Args:
    s: the schedule.
    model_output: `[..., 2C]`: predicted noise (first C) and variance values (last C).
    x_t: `[..., C]` the current noisy sample.
    t: spaced timestep indices broadcasting against `x_t.shape[:-1]`.

  Returns:
    dict with "mean" and "log_variance" of p (both `[..., C]`) and "pred_xstart", the implied
    prediction of x_0.
  """
  num_channels = x_t.shape[-1]
  if model_output.shape[-1] != 2 * num_channels:
    raise ValueError(
        f"model output has {model_output.shape[-1]} channels, expected 2 * {num_channels}"
    )
  eps, var_values = model_output[..., :num_channels], model_output[..., num_channels:]
  log_variance = learned_range_log_variance(s, var_values, t)
  pred_xstart = predict_xstart_from_eps(s, x_t, t, eps)
  if clip_x0:
    pred_xstart = jnp.clip(pred_xstart, -clip_x0, clip_x0)
  mean, _, _ = q_posterior_mean_variance(s, pred_xstart, x_t, t)
  return {"mean": mean, "log_variance": log_variance, "pred_xstart": pred_xstart}


# --------------------------------------------------------------------------------------------
# Likelihood utilities (IDDPM diffusion_utils.py).
# --------------------------------------------------------------------------------------------


def normal_kl(mean1: Any, logvar1: Any, mean2: Any, logvar2: Any) -> Array:
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
  mean1, logvar1, mean2, logvar2 = (jnp.asarray(a) for a in (mean1, logvar1, mean2, logvar2))
  return 0.5 * (
      -1.0
      + logvar2
      - logvar1
      + jnp.exp(logvar1 - logvar2)
      + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
  )


def approx_standard_normal_cdf(x: Array) -> Array:
  """IDDPM's tanh approximation of the standard normal CDF, 0.5 * (1 + tanh(g(x))) with
  g(x) = sqrt(2/pi) (x + 0.044715 x^3), evaluated as the identical sigmoid(2 g(x)): in float32
  1 + tanh(g) cancels to zero far in the lower tail, the sigmoid keeps full precision."""
  return jax.nn.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3)))


def discretized_gaussian_log_likelihood(x: Array, means: Array, log_scales: Array) -> Array:
  """Log-probability (nats) of `x` under a Gaussian discretized into bins of width 2/255.

  As IDDPM: the bin is [x - 1/255, x + 1/255]; below -0.999 the bin extends to -inf and
  above 0.999 to +inf; probabilities are clamped at 1e-12 before the log. `x`, `means` and
  `log_scales` (log standard deviations) broadcast elementwise.

  The values are IDDPM's, but the float32 evaluation avoids its cancellations: an upper
  tail 1 - cdf(y) is computed as cdf(-y), and a bin above the mean as a difference of upper
  tails. With IDDPM's literal formula, bins a few standard deviations from the mean (common
  at t = 0, where the variance is ~1e-5) lose all precision, and the loss of such a token
  depends on rounding noise.
  """
  centered_x = x - means
  inv_stdv = jnp.exp(-log_scales)
  plus = inv_stdv * (centered_x + 1.0 / 255.0)
  minus = inv_stdv * (centered_x - 1.0 / 255.0)
  cdf = approx_standard_normal_cdf
  log_cdf_plus = jnp.log(jnp.maximum(cdf(plus), 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(cdf(-minus), 1e-12))
  cdf_delta = jnp.where(minus > 0, cdf(-minus) - cdf(-plus), cdf(plus) - cdf(minus))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_delta, 1e-12))
  return jnp.where(
      x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta)
  )


# --------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------


def training_losses(
    s: DiffusionSchedule, model_fn: ModelFn, x_start: Array, t: Array, noise: Array
) -> dict[str, Array]:
  """Per-token diffusion loss of MAR's `DiffLoss` (IDDPM `training_losses`, MSE loss type).

  Args:
    s: the schedule (MAR trains on the full 1000-step cosine schedule).
    model_fn: the network, `model_fn(x_t, timesteps) -> [..., 2C]`, fed the original
      timesteps `s.timestep_map[t]`.
    x_start: `[..., C]` clean targets x_0.
    t: integer spaced timesteps, shape `x_start.shape[:-1]` (or broadcastable to it).
    noise: `[..., C]` standard normal noise.

  Returns:
    dict of per-token values (shape `x_start.shape[:-1]`):
    "mse": mean over channels of (noise - predicted eps)^2;
    "vb": the variational-bound term in bits per channel: the decoder NLL
      -log p(x_0 | x_1) where t == 0, else KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)).
      It is computed from the predicted eps under a stop-gradient, so it only trains the
      variance output;
    "loss": mse + vb.
  """
  num_channels = x_start.shape[-1]
  x_t = q_sample(s, x_start, t, noise)
  timesteps = jnp.broadcast_to(s.timestep_map[jnp.asarray(t)], x_t.shape[:-1])
  model_output = model_fn(x_t, timesteps)
  eps, var_values = model_output[..., :num_channels], model_output[..., num_channels:]
  mse = jnp.mean(jnp.square(noise - eps), axis=-1)

  frozen_output = jnp.concatenate([jax.lax.stop_gradient(eps), var_values], axis=-1)
  p = p_mean_variance(s, frozen_output, x_t, t)
  true_mean, _, true_log_variance = q_posterior_mean_variance(s, x_start, x_t, t)
  kl = normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"])
  kl = jnp.mean(kl, axis=-1) / math.log(2.0)
  decoder_nll = -discretized_gaussian_log_likelihood(
      x_start, means=p["mean"], log_scales=0.5 * p["log_variance"]
  )
  decoder_nll = jnp.mean(decoder_nll, axis=-1) / math.log(2.0)
  vb = jnp.where(jnp.asarray(t) == 0, decoder_nll, kl)
  return {"loss": mse + vb, "mse": mse, "vb": vb}


# --------------------------------------------------------------------------------------------
# Sampling.
# --------------------------------------------------------------------------------------------


def _per_row(value: Any, ndim: int) -> Array:
  """A scalar stays a scalar; an array over the leading dims gets a trailing channel axis."""
  value = jnp.asarray(value, dtype=jnp.float32)
  if value.ndim == 0:
    return value
  return value.reshape(value.shape + (1,) * (ndim - value.ndim))


def p_sample(
    s: DiffusionSchedule,
    model_fn: ModelFn,
    x: Array,
    i: Array,
    key: Array,
    temperature: Any = 1.0,
    clip_x0: float = 0.0,
) -> Array:
  """One ancestral step x_i -> x_{i-1} (IDDPM `p_sample` with MAR's temperature).

  `x_{i-1} = mean + [i != 0] * exp(log_var / 2) * temperature * N(0, I)`, with the network
  fed the original timestep `s.timestep_map[i]` for every row.

  Args:
    s: the schedule.
    model_fn: the network.
    x: `[..., C]` current sample.
    i: scalar int, the spaced index of the current step.
    key: PRNG key of this step's noise.
    temperature: scalar, or array broadcastable to `x.shape[:-1]` (per-row temperatures).

  Returns:
    The next sample, same shape and dtype as `x`.
  """
  i = jnp.asarray(i, dtype=jnp.int32)
  t = jnp.full(x.shape[:-1], i, dtype=jnp.int32)
  timesteps = jnp.full(x.shape[:-1], s.timestep_map[i], dtype=jnp.int32)
  out = p_mean_variance(s, model_fn(x, timesteps), x, t, clip_x0)
  noise = jax.random.normal(key, x.shape, dtype=x.dtype)
  nonzero = (i != 0).astype(x.dtype)
  std = jnp.exp(0.5 * out["log_variance"])
  return (out["mean"] + nonzero * std * noise * _per_row(temperature, x.ndim)).astype(x.dtype)


def p_sample_loop(
    s: DiffusionSchedule,
    model_fn: ModelFn,
    noise: Array,
    rng: Array,
    temperature: Any = 1.0,
    clip_x0: float = 0.0,
) -> Array:
  """Ancestral sampling from x_{T'-1} = `noise` down to x_0 (IDDPM `p_sample_loop`).

  Runs `p_sample` for spaced indices T'-1, ..., 0 under `jax.lax.scan`; step `i` draws its
  noise with `jax.random.fold_in(rng, i)`. The initial noise is used as given (it is not
  scaled by the temperature, as in MAR).

  Args:
    s: the schedule (MAR samples with the cosine schedule respaced to `num_sampling_steps`).
    model_fn: the network, conditioning closed over.
    noise: `[..., C]` initial sample.
    rng: PRNG key for the per-step noise.
    temperature: scalar (Python or traced) or array broadcastable to `noise.shape[:-1]`.

  Returns:
    The sample x_0, same shape as `noise`.
  """

  def step(x, i):
    return p_sample(s, model_fn, x, i, jax.random.fold_in(rng, i), temperature,
                    clip_x0), None

  indices = jnp.arange(s.num_timesteps - 1, -1, -1, dtype=jnp.int32)
  x0, _ = jax.lax.scan(step, noise, indices)
  return x0


def guided_model_fn(model_fn: ModelFn, cfg_scale: Any, num_channels: int) -> ModelFn:
  """Classifier-free guidance around a network (MAR `SimpleMLPAdaLN.forward_with_cfg`).

  The returned function takes a batch `[2B, C]` whose first half is the conditional rows and
  second half the unconditional rows (`model_fn` closes over conditioning `[c_cond; c_uncond]`
  of 2B rows). It evaluates the network on `[x[:B]; x[:B]]` (both halves see the first half's
  samples), forms `eps = eps_uncond + cfg_scale * (eps_cond - eps_uncond)`, and returns
  `[[eps; eps], variance values]` where the variance values are the network's own for each
  half.

  Args:
    model_fn: the network over 2B rows.
    cfg_scale: scalar (Python or traced), or per-conditional-row array `[B]`.
    num_channels: C, the number of token channels.

  Returns:
    A model function with the same signature as `model_fn`.
  """

  def guided(x: Array, timesteps: Array) -> Array:
    half = x[: x.shape[0] // 2]
    out = model_fn(jnp.concatenate([half, half], axis=0), timesteps)
    eps, rest = out[..., :num_channels], out[..., num_channels:]
    eps_cond, eps_uncond = jnp.split(eps, 2, axis=0)
    scale = _per_row(cfg_scale, eps_cond.ndim).astype(eps.dtype)
    half_eps = eps_uncond + scale * (eps_cond - eps_uncond)
    return jnp.concatenate([jnp.concatenate([half_eps, half_eps], axis=0), rest], axis=-1)

  return guided


def sample(
    s: DiffusionSchedule,
    model_fn: ModelFn,
    noise: Array,
    rng: Array,
    temperature: Any = 1.0,
    cfg_scale: Any | None = None,
    clip_x0: float = 0.0,
) -> Array:
  """Samples tokens as MAR's `DiffLoss.sample`, with or without classifier-free guidance.

  Without guidance (`cfg_scale=None`), this is `p_sample_loop(s, model_fn, noise, rng,
  temperature)` and `model_fn` covers the same rows as `noise`.

  With guidance, `noise` is `[B, C]` (one row per conditional token) and `model_fn` covers 2B
  rows: conditioning `[c_cond; c_uncond]` closed over. The initial noise is shared by both
  halves (`[noise; noise]`, as MAR), sampling uses `guided_model_fn`, and the conditional half
  `[B, C]` is returned. `cfg_scale` and `temperature` may be traced scalars or `[B]` arrays.
  Because the guided network only reads the first half, `cfg_scale=1` reproduces unguided
  sampling of the conditional rows (with the same per-step noise when the PRNG is
  partitionable, JAX's default).

  Returns:
    x_0 of shape `noise.shape`.
  """
  if cfg_scale is None:
    return p_sample_loop(s, model_fn, noise, rng, temperature, clip_x0)
  temperature = jnp.asarray(temperature, dtype=jnp.float32)
  if temperature.ndim > 0:
    temperature = jnp.concatenate([temperature, temperature], axis=0)
  guided = guided_model_fn(model_fn, cfg_scale, noise.shape[-1])
  both = p_sample_loop(s, guided, jnp.concatenate([noise, noise], axis=0), rng, temperature,
                       clip_x0)
  return both[: noise.shape[0]]
