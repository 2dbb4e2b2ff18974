"""Tests for videomar_jax.diffusion.gaussian against independent float64 NumPy formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videomar_jax.diffusion import gaussian as g

T = 1000


def _cosine_alpha_bar(t):
  return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


@pytest.fixture(scope="module")
def cosine():
  return g.make_schedule(T, "cosine")


@pytest.fixture(scope="module")
def cosine_ref():
  """Float64 reference quantities of the 1000-step cosine schedule, from first principles."""
  betas = np.array([
      min(1.0 - _cosine_alpha_bar((i + 1) / T) / _cosine_alpha_bar(i / T), 0.999) for i in range(T)
  ])
  alphas_cumprod = np.cumprod(1.0 - betas)
  return betas, alphas_cumprod


# ------------------------------------------------------------------------------------ schedules


def test_space_timesteps():
  steps = g.space_timesteps(T, 100)
  assert steps == g.space_timesteps(T, "100") == g.space_timesteps(T, [100])
  assert len(steps) == 100 and steps[0] == 0 and steps[-1] == T - 1
  assert steps == [round(i * (T - 1) / 99) for i in range(100)]
  assert g.space_timesteps(T, "ddim25") == list(range(0, T, 40))
  assert g.space_timesteps(T, T) == list(range(T))
  # IDDPM's docstring example: 300 steps split into sections of 10, 15 and 20 steps.
  multi = g.space_timesteps(300, "10,15,20")
  assert len(multi) == 45
  assert multi[:10] == [round(i * 99 / 9) for i in range(10)]
  assert multi[25:] == [200 + round(i * 99 / 19) for i in range(20)]
  # IDDPM rounds a running sum of the stride, not i * stride: 7 * 99 / 14 is exactly 49.5
  # (which `round` takes to 50) while the running sum is just below it.
  assert multi[10:25] == [100, 107, 114, 121, 128, 135, 142, 149, 157, 164, 171, 178, 185, 192, 199]
  with pytest.raises(ValueError):
    g.space_timesteps(10, 11)


def test_cosine_schedule(cosine, cosine_ref):
  betas_ref, ac_ref = cosine_ref
  betas = np.asarray(cosine.betas)
  assert cosine.num_timesteps == T
  assert betas.dtype == np.float32 and (betas > 0).all() and (betas <= 0.999).all()
  assert betas[-1] == np.float32(0.999)  # the last step is clipped at max_beta
  np.testing.assert_allclose(betas, betas_ref, rtol=1e-6)
  # The product of (1 - beta) telescopes to alpha_bar(t) / alpha_bar(0) (before the clip).
  t = np.arange(1, T) / T
  ac_closed = np.array([_cosine_alpha_bar(u) for u in t]) / _cosine_alpha_bar(0.0)
  np.testing.assert_allclose(np.asarray(cosine.alphas_cumprod)[: T - 1], ac_closed, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(cosine.timestep_map), np.arange(T))


def test_linear_schedule():
  s = g.make_schedule(500, "linear")
  np.testing.assert_allclose(np.asarray(s.betas), np.linspace(2e-4, 0.04, 500), rtol=1e-6)


def test_derived_quantities(cosine, cosine_ref):
  betas, ac = cosine_ref
  ac_prev = np.concatenate([[1.0], ac[:-1]])
  post_var = betas * (1 - ac_prev) / (1 - ac)
  expected = {
      "log_betas": np.log(betas),
      "alphas_cumprod_prev": ac_prev,
      "sqrt_alphas_cumprod": np.sqrt(ac),
      "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac),
      "sqrt_recip_alphas_cumprod": 1 / np.sqrt(ac),
      "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ac - 1),
      "posterior_variance": post_var,
      "posterior_log_variance_clipped": np.log(np.concatenate([[post_var[1]], post_var[1:]])),
  }
  for name, ref in expected.items():
    np.testing.assert_allclose(np.asarray(getattr(cosine, name)), ref, rtol=2e-5, err_msg=name)


def test_respacing_keeps_alphas_cumprod(cosine, cosine_ref):
  s = g.make_schedule(T, "cosine", respacing=100)
  kept = np.asarray(g.space_timesteps(T, 100))
  tmap = np.asarray(s.timestep_map)
  assert s.num_timesteps == 100 and tmap.dtype == np.int32
  np.testing.assert_array_equal(tmap, kept)
  assert tmap[0] == 0 and tmap[-1] == T - 1
  base_ac = cosine_ref[1][kept]
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod), base_ac, rtol=1e-5)
  np.testing.assert_allclose(
      np.asarray(s.alphas_cumprod), np.asarray(cosine.alphas_cumprod)[kept], rtol=1e-5
  )
  prev = np.concatenate([[1.0], base_ac[:-1]])
  np.testing.assert_allclose(np.asarray(s.betas), 1 - base_ac / prev, rtol=1e-5)
  # String respacing and the identity respacing.
  s_str = g.make_schedule(T, "cosine", respacing="100")
  np.testing.assert_array_equal(np.asarray(s_str.betas), np.asarray(s.betas))
  full = g.make_schedule(T, "cosine", respacing="")
  np.testing.assert_array_equal(np.asarray(full.betas), np.asarray(cosine.betas))


# ----------------------------------------------------------------------------------- closed forms


def _rand(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def test_q_sample(cosine, cosine_ref):
  _, ac = cosine_ref
  x0, noise = _rand(0, (6, 5)), _rand(1, (6, 5))
  t = jnp.array([0, 1, 10, 500, 998, 999])
  got = g.q_sample(cosine, x0, t, noise)
  ref = np.sqrt(ac)[t][:, None] * np.asarray(x0) + np.sqrt(1 - ac)[t][:, None] * np.asarray(noise)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
  # Timesteps broadcast over all leading dims: [B, L] tokens with a per-row t of shape [B, 1].
  x3 = _rand(2, (2, 3, 4))
  t3 = jnp.array([[5], [700]])
  got3 = g.q_sample(cosine, x3, t3, x3)
  np.testing.assert_allclose(
      np.asarray(got3[1]), (np.sqrt(ac[700]) + np.sqrt(1 - ac[700])) * np.asarray(x3[1]), rtol=1e-5
  )


def test_posterior_is_gaussian_conditioning(cosine, cosine_ref):
  """q(x_{t-1} | x_t, x_0) by Bayes' rule.

  x_{t-1} | x_0 ~ N(sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}) and
  x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t).
  """
  betas, ac = cosine_ref
  x0, xt = _rand(3, (5, 4)), _rand(4, (5, 4))
  t = np.array([1, 2, 100, 700, 999])
  mean, var, log_var = g.q_posterior_mean_variance(cosine, x0, xt, jnp.asarray(t))
  ac_prev, alpha, beta = ac[t - 1], 1 - betas[t], betas[t]
  precision = 1 / (1 - ac_prev) + alpha / beta
  ref_var = 1 / precision
  ref_mean = ref_var[:, None] * (
      (np.sqrt(ac_prev) / (1 - ac_prev))[:, None] * np.asarray(x0)
      + (np.sqrt(alpha) / beta)[:, None] * np.asarray(xt)
  )
  np.testing.assert_allclose(np.asarray(mean), ref_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(var)[:, 0], ref_var, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(log_var)[:, 0], np.log(ref_var), rtol=1e-5)
  # At t = 0 the posterior is the point mass at x_0; its log-variance is clipped to t = 1's.
  mean0, var0, log_var0 = g.q_posterior_mean_variance(cosine, x0, xt, jnp.zeros(5, jnp.int32))
  np.testing.assert_allclose(np.asarray(mean0), np.asarray(x0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(var0), 0.0)
  np.testing.assert_allclose(np.asarray(log_var0)[:, 0], np.log(ref_var[0]), rtol=1e-5)


def test_predict_xstart_inverts_q_sample(cosine):
  x0, eps = _rand(5, (4, 3)), _rand(6, (4, 3))
  t = jnp.array([0, 50, 400, 800])
  xt = g.q_sample(cosine, x0, t, eps)
  np.testing.assert_allclose(
      np.asarray(g.predict_xstart_from_eps(cosine, xt, t, eps)), np.asarray(x0), atol=1e-4
  )


def test_learned_range_endpoints(cosine, cosine_ref):
  betas = cosine_ref[0]
  t = np.array([0, 1, 500, 999])
  ones = jnp.ones((4, 3))
  lo = g.learned_range_log_variance(cosine, -ones, jnp.asarray(t))
  hi = g.learned_range_log_variance(cosine, ones, jnp.asarray(t))
  mid = g.learned_range_log_variance(cosine, 0 * ones, jnp.asarray(t))
  plv = np.asarray(cosine.posterior_log_variance_clipped)[t]
  np.testing.assert_allclose(lo, np.broadcast_to(plv[:, None], (4, 3)), rtol=1e-6)
  np.testing.assert_allclose(hi, np.broadcast_to(np.log(betas[t])[:, None], (4, 3)), rtol=1e-6)
  np.testing.assert_allclose(mid, (lo + hi) / 2, rtol=1e-6)


def test_p_mean_variance_with_true_eps(cosine):
  x0, eps = _rand(7, (3, 4)), _rand(8, (3, 4))
  t = jnp.array([3, 300, 900])
  xt = g.q_sample(cosine, x0, t, eps)
  v = jnp.full((3, 4), 0.25)
  out = g.p_mean_variance(cosine, jnp.concatenate([eps, v], -1), xt, t)
  np.testing.assert_allclose(out["pred_xstart"], x0, atol=1e-4)
  post_mean, _, _ = g.q_posterior_mean_variance(cosine, x0, xt, t)
  np.testing.assert_allclose(out["mean"], post_mean, atol=1e-4)
  np.testing.assert_allclose(out["log_variance"], g.learned_range_log_variance(cosine, v, t))
  with pytest.raises(ValueError):
    g.p_mean_variance(cosine, eps, xt, t)


# -------------------------------------------------------------------------------- likelihoods


def test_normal_kl():
  means = jnp.array([0.3, -2.0])
  np.testing.assert_allclose(g.normal_kl(means, 0.7, means, 0.7), 0.0, atol=1e-7)
  # KL(N(1, 1) || N(0, 4)) = log(2) + (1 + 1) / 8 - 1/2.
  np.testing.assert_allclose(
      g.normal_kl(1.0, 0.0, 0.0, math.log(4.0)), math.log(2) - 0.25, rtol=1e-6
  )
  # General closed form with sigma's: log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2.
  m1, s1, m2, s2 = 0.4, 0.3, -1.1, 1.7
  ref = math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
  np.testing.assert_allclose(
      g.normal_kl(m1, 2 * math.log(s1), m2, 2 * math.log(s2)), ref, rtol=1e-5
  )


def _phi(x):
  return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_approx_standard_normal_cdf():
  xs = np.linspace(-5, 5, 101)
  got = np.asarray(g.approx_standard_normal_cdf(jnp.asarray(xs, jnp.float32)))
  np.testing.assert_allclose(got, [_phi(x) for x in xs], atol=3e-4)


def test_discretized_gaussian_log_likelihood():
  x = np.array([-0.5, 0.0, 0.2, 0.6, -1.0, 1.0, 0.9], np.float32)
  means = np.array([-0.45, 0.01, 0.1, 0.6, -0.98, 0.97, -0.9], np.float32)
  log_scales = np.log(np.array([0.05, 0.02, 0.1, 0.3, 0.05, 0.05, 0.01], np.float32))
  got = np.asarray(
      g.discretized_gaussian_log_likelihood(
          jnp.asarray(x), jnp.asarray(means), jnp.asarray(log_scales)
      )
  )
  h = 1 / 255
  for k in range(4):  # interior bins: log(Phi(upper) - Phi(lower))
    sd = math.exp(log_scales[k])
    ref = math.log(_phi((x[k] - means[k] + h) / sd) - _phi((x[k] - means[k] - h) / sd))
    assert abs(got[k] - ref) < 5e-3, (k, got[k], ref)
  # Edge bins extend to -inf / +inf.
  sd = math.exp(log_scales[4])
  assert abs(got[4] - math.log(_phi((x[4] - means[4] + h) / sd))) < 5e-3
  sd = math.exp(log_scales[5])
  assert abs(got[5] - math.log(1 - _phi((x[5] - means[5] - h) / sd))) < 5e-3
  # Far outside the Gaussian the probability is clamped at 1e-12.
  np.testing.assert_allclose(got[6], math.log(1e-12), rtol=1e-5)
  # Exactly the IDDPM tanh formula (no approximation slack) on a random batch.
  xr = jnp.clip(0.6 * _rand(9, (64,)), -1.0, 1.0)
  mr = xr + 0.05 * _rand(10, (64,))
  lr = 0.3 * _rand(11, (64,)) - 2.5

  def cdf(v):
    return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))

  xr64, mr64, lr64 = (np.asarray(a, np.float64) for a in (xr, mr, lr))
  inv = np.exp(-lr64)
  ref = np.log(np.maximum(cdf(inv * (xr64 - mr64 + h)) - cdf(inv * (xr64 - mr64 - h)), 1e-12))
  ref = np.where(xr64 < -0.999, np.log(np.maximum(cdf(inv * (xr64 - mr64 + h)), 1e-12)), ref)
  ref = np.where(xr64 > 0.999, np.log(np.maximum(1 - cdf(inv * (xr64 - mr64 - h)), 1e-12)), ref)
  got_r = np.asarray(g.discretized_gaussian_log_likelihood(xr, mr, lr))
  assert (xr < -0.999).any() and (xr > 0.999).any()
  np.testing.assert_allclose(got_r, ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------- training


def _affine_model(weight, var):
  """A toy network: eps = weight * x_t + timestep / 1000, fixed variance values."""

  def model_fn(x, timesteps):
    eps = weight * x + timesteps[..., None].astype(jnp.float32) / 1000.0
    return jnp.concatenate([eps, jnp.broadcast_to(var, x.shape)], axis=-1)

  return model_fn


def test_training_losses_terms(cosine):
  x0 = 0.5 * _rand(12, (4, 3))
  noise = _rand(13, (4, 3))
  t = jnp.array([0, 0, 7, 999])
  var = jnp.array([-0.3, 0.1, 0.8])
  model_fn = _affine_model(0.9, var)
  out = g.training_losses(cosine, model_fn, x0, t, noise)
  assert set(out) == {"loss", "mse", "vb"} and out["loss"].shape == (4,)

  xt = g.q_sample(cosine, x0, t, noise)
  model_out = model_fn(xt, t)
  eps = model_out[:, :3]
  ref_mse = np.mean((np.asarray(noise) - np.asarray(eps)) ** 2, -1)
  np.testing.assert_allclose(out["mse"], ref_mse, rtol=1e-5)
  p = g.p_mean_variance(cosine, model_out, xt, t)
  true_mean, _, true_logvar = g.q_posterior_mean_variance(cosine, x0, xt, t)
  kl = np.mean(g.normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"]), -1) / math.log(2)
  nll = -np.mean(
      g.discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"]), -1
  ) / math.log(2)
  np.testing.assert_allclose(out["vb"][:2], nll[:2], rtol=1e-5)
  np.testing.assert_allclose(out["vb"][2:], kl[2:], rtol=1e-5)
  assert not np.allclose(kl[:2], nll[:2])
  np.testing.assert_allclose(out["loss"], out["mse"] + out["vb"], rtol=1e-6)


def test_training_losses_feeds_original_timesteps():
  s = g.make_schedule(T, "cosine", respacing=10)
  seen = []

  def model_fn(x, timesteps):
    seen.append(np.asarray(timesteps))
    return jnp.zeros(x.shape[:-1] + (2 * x.shape[-1],))

  t = jnp.array([0, 3, 9])
  g.training_losses(s, model_fn, jnp.zeros((3, 2)), t, jnp.ones((3, 2)))
  np.testing.assert_array_equal(seen[0], np.asarray(s.timestep_map)[np.asarray(t)])
  assert seen[0][-1] == T - 1


def test_vb_gradient_stops_at_eps(cosine):
  x0 = 0.5 * _rand(14, (6, 3))
  noise = _rand(15, (6, 3))
  t = jnp.array([0, 1, 20, 300, 600, 950])

  def vb_and_mse(params):
    eps_part, var_part = params

    def model_fn(x, timesteps):
      return jnp.concatenate([eps_part * x, jnp.broadcast_to(var_part, x.shape)], -1)

    out = g.training_losses(cosine, model_fn, x0, t, noise)
    return out["vb"].sum(), out["mse"].sum()

  params = (jnp.float32(0.7), jnp.array([0.1, -0.2, 0.3]))
  grad_vb = jax.grad(lambda p: vb_and_mse(p)[0])(params)
  grad_mse = jax.grad(lambda p: vb_and_mse(p)[1])(params)
  assert grad_vb[0] == 0.0
  assert np.all(np.abs(np.asarray(grad_vb[1])) > 0) and np.all(np.isfinite(grad_vb[1]))
  assert grad_mse[0] != 0.0
  np.testing.assert_array_equal(grad_mse[1], 0.0)


# ----------------------------------------------------------------------------------- sampling


def _delta_model(s_base, target, var=0.0):
  """The exact eps of a point-mass data distribution at `target`, at original timesteps."""

  def model_fn(x, timesteps):
    ac = s_base.alphas_cumprod[timesteps][..., None]
    eps = (x - jnp.sqrt(ac) * target) / jnp.sqrt(1.0 - ac)
    return jnp.concatenate([eps, jnp.full(x.shape, var, x.dtype)], -1)

  return model_fn


def test_p_sample_loop_recovers_delta(cosine):
  s = g.make_schedule(T, "cosine", respacing=50)
  target = jnp.array([0.3, -0.7, 1.2, 0.0])
  noise = _rand(16, (5, 4))
  run = jax.jit(lambda n, r: g.p_sample_loop(s, _delta_model(cosine, target), n, r))
  x0 = run(noise, jax.random.key(1))
  np.testing.assert_allclose(x0, jnp.broadcast_to(target, (5, 4)), atol=2e-3)


_BASE = g.make_schedule(T, "cosine")


def _toy_model(cond, num_channels):
  """A deterministic conditional toy network over the rows of `cond`.

  It predicts the eps of a data point `0.5 * tanh(cond + 0.1 * x @ w)` (so sampling stays
  bounded) and variance values that depend on the conditioning.
  """
  w = _rand(20, (num_channels, num_channels))

  def model_fn(x, timesteps):
    ac = _BASE.alphas_cumprod[timesteps][:, None]
    x0 = 0.5 * jnp.tanh(cond + 0.1 * x @ w)
    eps = (x - jnp.sqrt(ac) * x0) / jnp.sqrt(1.0 - ac)
    return jnp.concatenate([eps, 0.5 * jnp.tanh(cond + x0)], -1)

  return model_fn


def test_temperature_zero_is_deterministic():
  s = g.make_schedule(T, "cosine", respacing=20)
  model_fn = _toy_model(_rand(21, (3, 4)), 4)
  noise = _rand(22, (3, 4))
  run = jax.jit(lambda r, temp: g.p_sample_loop(s, model_fn, noise, r, temp))
  a = run(jax.random.key(0), 0.0)
  b = run(jax.random.key(1), 0.0)
  np.testing.assert_array_equal(a, b)
  c = run(jax.random.key(0), 1.0)
  d = run(jax.random.key(1), 1.0)
  assert not np.allclose(c, d)
  # Per-row temperatures: a row at temperature 0 is rng-independent, the others are not.
  temps = jnp.array([0.0, 1.0, 0.5])
  e, f = run(jax.random.key(0), temps), run(jax.random.key(1), temps)
  np.testing.assert_array_equal(e[0], a[0])
  np.testing.assert_array_equal(e[0], f[0])
  assert not np.allclose(e[1:], f[1:])


def test_guided_model_fn():
  cond = _rand(23, (6, 4))  # rows 0-2 conditional, 3-5 unconditional
  model_fn = _toy_model(cond, 4)
  x = _rand(24, (6, 4))
  tsteps = jnp.full((6,), 500)
  scale = jnp.array([1.0, 2.0, 4.0])
  out = g.guided_model_fn(model_fn, scale, 4)(x, tsteps)
  raw = model_fn(jnp.concatenate([x[:3], x[:3]]), tsteps)
  eps_c, eps_u = raw[:3, :4], raw[3:, :4]
  guided = eps_u + scale[:, None] * (eps_c - eps_u)
  np.testing.assert_allclose(out[:3, :4], guided, rtol=1e-6)
  np.testing.assert_allclose(out[3:, :4], guided, rtol=1e-6)
  np.testing.assert_array_equal(out[:, 4:], raw[:, 4:])
  np.testing.assert_allclose(out[0, :4], raw[0, :4], rtol=1e-6)  # scale 1 = conditional eps


def test_guided_sampling_shares_initial_noise():
  s = g.make_schedule(T, "cosine", respacing=10)
  b, c = 3, 4
  cond = _rand(25, (2 * b, c))
  first_inputs = {}

  def record(x, timesteps):
    if int(timesteps[0]) == T - 1:
      first_inputs["x"] = np.asarray(x)

  def spy_model(x, timesteps):
    jax.debug.callback(record, x, timesteps)
    return _toy_model(cond, c)(x, timesteps)

  noise = _rand(26, (b, c))
  out = g.sample(s, spy_model, noise, jax.random.key(3), temperature=1.0, cfg_scale=2.5)
  jax.effects_barrier()
  assert out.shape == (b, c)
  np.testing.assert_array_equal(first_inputs["x"][:b], np.asarray(noise))
  np.testing.assert_array_equal(first_inputs["x"][b:], np.asarray(noise))
  # `sample` is guided ancestral sampling of [noise; noise], keeping the conditional half.
  guided = g.guided_model_fn(_toy_model(cond, c), 2.5, c)
  ref = g.p_sample_loop(s, guided, jnp.concatenate([noise, noise]), jax.random.key(3))[:b]
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.0, 1.0, "per_row"])
def test_cfg_one_equals_unguided_conditional(temperature):
  # A [2B] batch's step noise extends a [B] batch's only with partitionable threefry (the
  # default of current JAX); pin it so the test runs the same under any global setting.
  with jax.threefry_partitionable(True):
    _check_cfg_one_equals_unguided(temperature)


def _check_cfg_one_equals_unguided(temperature):
  s = g.make_schedule(T, "cosine", respacing=20)
  b, c = 3, 4
  cond = _rand(27, (b, c))
  uncond = _rand(28, (b, c))
  noise = _rand(29, (b, c))
  rng = jax.random.key(4)
  temp = jnp.array([0.0, 1.0, 0.5]) if temperature == "per_row" else temperature
  unguided = g.sample(s, _toy_model(cond, c), noise, rng, temp)
  both_model = _toy_model(jnp.concatenate([cond, uncond]), c)
  guided = jax.jit(
      lambda cfg: g.sample(s, both_model, noise, rng, temp, cfg_scale=cfg)
  )(jnp.float32(1.0))
  np.testing.assert_allclose(guided, unguided, rtol=1e-5, atol=1e-5)
  stronger = g.sample(s, both_model, noise, rng, temp, cfg_scale=3.0)
  assert not np.allclose(stronger, unguided, atol=1e-3)


def test_clipping_the_predicted_x0_keeps_samples_in_range(cosine):
  """clip_x0 (IDDPM's clip_denoised): a network whose x_0 lies outside [-1, 1] samples
  outside the range without clipping and at its clipped value with clip_x0=1; an x_0 inside
  the range samples the same either way."""
  s = g.make_schedule(T, "cosine", respacing=50)
  noise = _rand(16, (5, 4))

  def run(target, clip):
    model = _delta_model(cosine, jnp.asarray(target))
    return jax.jit(lambda n, r: g.p_sample_loop(s, model, n, r, 1.0, clip))(
        noise, jax.random.key(1))

  far = [3.0, -2.5, 0.4, 0.0]
  assert float(jnp.abs(run(far, 0.0)).max()) > 2.0
  np.testing.assert_allclose(run(far, 1.0), np.broadcast_to(np.clip(far, -1, 1), (5, 4)),
                             atol=2e-3)
  inside = [0.3, -0.7, 0.9, 0.0]
  np.testing.assert_allclose(run(inside, 1.0), run(inside, 0.0), atol=1e-5)
