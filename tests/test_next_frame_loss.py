"""Next-frame diffusion loss: mode equivalence, causality, bi-directionality, mask hygiene."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import perturb, small_config
from videomar_jax.losses import next_frame
from videomar_jax.models import attention, sequence
from videomar_jax.train.setup import make_model


def _settings(model):
  return next_frame.LossSettings.from_config(model.config)


B, T, H, W = 2, 4, 2, 3
N = H * W
N_COND = 1


@pytest.fixture(scope="module")
def setup():
  model = make_model(small_config())
  params = perturb(model.init(jax.random.key(0)), jax.random.key(1))
  tokens = jax.random.normal(jax.random.key(2), (B, T, N, model.token_dim))
  return model, params, tokens


def _draws(model, mode, rng=3):
  config = model.config.loss.copy_and_resolve_references()
  config.mode = mode
  return next_frame.draw(jax.random.key(rng), config, batch_size=B, num_frames=T,
                         tokens_per_frame=N, token_dim=model.token_dim,
                         diffusion_batch_mul=model.config.head.diffusion_batch_mul,
                         num_timesteps=1000)


def _paper_draws_for_frame(all_draws, k):
  """The paper-mode draws that predict frame k with the all-frames mask and noise of k."""
  j = k - N_COND
  return next_frame.LossDraws(
      target_frame=jnp.full((B,), k, jnp.int32),
      token_mask=all_draws.token_mask[:, j:j + 1],
      timesteps=all_draws.timesteps[:, :, j:j + 1],
      noise=all_draws.noise[:, :, j:j + 1],
      drop_context=all_draws.drop_context)


def _losses(model, params, tokens, draws, mode):
  return next_frame.per_token_losses(model, params, tokens, draws, mode=mode,
                                     num_cond=N_COND, h=H, w=W)


_JITTED_LOSSES = {}


def _jitted_losses(model, mode):
  """`_losses` compiled, one program per (model, mode) for the whole module."""
  key = (id(model), mode)
  if key not in _JITTED_LOSSES:
    _JITTED_LOSSES[key] = jax.jit(functools.partial(_losses, model, mode=mode))
  return _JITTED_LOSSES[key]


def _z(model, params, tokens, draws, mode):
  return next_frame.conditions_and_targets(model, params, tokens, draws, mode=mode,
                                           num_cond=N_COND, h=H, w=W)[0]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_frame_k_loss_is_the_same_in_both_modes(setup, k):
  model, params, tokens = setup
  all_draws = _draws(model, "all_frames")
  # Compiled once for the module (run op by op, the model's many small ops cost minutes).
  all_losses = _jitted_losses(model, "all_frames")(params, tokens, all_draws)
  paper_losses = _jitted_losses(model, "paper")(params, tokens,
                                                _paper_draws_for_frame(all_draws, k))
  np.testing.assert_allclose(paper_losses[:, :, 0], all_losses[:, :, k - N_COND],
                             rtol=1e-4, atol=1e-5)


def test_draws_follow_the_masking_law(setup):
  model, _, _ = setup
  for mode, frames in (("paper", 1), ("all_frames", T - N_COND)):
    draws = _draws(model, mode)
    assert draws.token_mask.shape == (B, frames, N)
    counts = np.asarray(draws.token_mask.sum(-1))
    assert np.all(counts >= np.ceil(0.7 * N)) and np.all(counts <= N)
    assert draws.timesteps.shape == (model.config.head.diffusion_batch_mul, B, frames, N)
  ratios = next_frame.sample_mask_ratio(jax.random.key(0), (20000,), 0.7, 0.25)
  assert 0.7 <= float(ratios.min()) and float(ratios.max()) <= 1.0
  assert 0.83 < float(ratios.mean()) < 0.87  # mean of N(1, .25) truncated to [.7, 1]
  frames = np.asarray(next_frame.draw(
      jax.random.key(1), model.config.loss, batch_size=4000, num_frames=T, tokens_per_frame=N,
      token_dim=1, diffusion_batch_mul=1, num_timesteps=1000).target_frame)
  assert set(np.unique(frames)) == set(range(N_COND, T))


@pytest.mark.parametrize("mode", ["paper", "all_frames"])
def test_later_frames_cannot_change_earlier_outputs(setup, mode):
  model, params, tokens = setup
  draws = _draws(model, mode)
  if mode == "paper":
    draws = draws.replace(target_frame=jnp.full((B,), 2, jnp.int32))
  changed = tokens.at[:, 3].add(5.0)  # the last frame: after frame k=2
  z, z_changed = _z(model, params, tokens, draws, mode), _z(model, params, changed, draws, mode)
  if mode == "paper":
    np.testing.assert_allclose(z, z_changed, atol=1e-5)
  else:  # supervised frames 1, 2 unaffected; frame 3's prediction sees no frame-3 context
    np.testing.assert_allclose(z[:, :2], z_changed[:, :2], atol=1e-5)
  # And an earlier frame does matter.
  assert not np.allclose(z, _z(model, params, tokens.at[:, 0].add(5.0), draws, mode), atol=1e-3)


def test_tokens_within_a_frame_see_each_other(setup):
  model, params, tokens = setup
  draws = _draws(model, "paper").replace(target_frame=jnp.full((B,), 2, jnp.int32),
                                         token_mask=jnp.zeros((B, 1, N), bool).at[:, :, 0].set(True))
  z = _z(model, params, tokens, draws, "paper")
  # Changing the last (visible) token of frame 2 changes the output at its first token.
  z_changed = _z(model, params, tokens.at[:, 2, N - 1].add(5.0), draws, "paper")
  assert not np.allclose(z[:, 0, 0], z_changed[:, 0, 0], atol=1e-3)


@pytest.mark.parametrize("mode", ["paper", "all_frames"])
def test_masked_token_values_never_reach_the_model(setup, mode):
  model, params, tokens = setup
  draws = _draws(model, mode)
  if mode == "paper":
    frame_mask = (jnp.arange(T)[None, :, None] == draws.target_frame[:, None, None]) & \
        draws.token_mask
  else:
    frame_mask = jnp.zeros((B, T, N), bool).at[:, N_COND:].set(draws.token_mask)
  z = _z(model, params, tokens, draws, mode)
  if mode == "paper":
    z_garbage = _z(model, params, jnp.where(frame_mask[..., None], jnp.nan, tokens), draws,
                   mode)
    np.testing.assert_array_equal(z, z_garbage)
  else:
    # The clean copies of frames < T-1 are context, so only the last frame exists solely as
    # a (masked) target copy: NaN at its masked positions must be harmless.
    last = jnp.where(frame_mask[:, -1:, :, None], jnp.nan, tokens[:, -1:])
    z_garbage = _z(model, params, tokens.at[:, -1:].set(last), draws, mode)
    np.testing.assert_array_equal(z, z_garbage)


def test_loss_is_finite_and_differentiable(setup):
  model, params, tokens = setup
  for mode in ("paper", "all_frames"):
    model.config.loss.mode = mode
    try:
      loss_fn = lambda p: next_frame.next_frame_loss(model, p, tokens, jax.random.key(0),
                                                          _settings(model),
                                                     h=H, w=W)[0]
      loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)  # compiled: seconds
    finally:
      model.config.loss.mode = "paper"
    assert np.isfinite(loss)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads)]
    assert all(np.isfinite(norms)) and max(norms) > 0


@pytest.mark.parametrize("mode", ["paper", "all_frames"])
def test_context_corruption_touches_only_context_frames_after_the_given_ones(setup, mode):
  """With loss.context_noise/context_fade the transformer sees degraded context frames
  >= num_cond_frames, while the given frames, the target frame's visible tokens and the
  targets stay clean; with both at 0 nothing changes."""
  model, params, tokens = setup
  config = model.config.loss.copy_and_resolve_references()
  config.mode = mode
  draw = lambda cfg: next_frame.draw(jax.random.key(3), cfg, batch_size=B, num_frames=T,
                                     tokens_per_frame=N, token_dim=model.token_dim,
                                     diffusion_batch_mul=1, num_timesteps=1000)
  clean = draw(config)
  assert clean.noise_std is None
  np.testing.assert_array_equal(next_frame.corrupt_context(tokens, clean, N_COND), tokens)
  config.context_noise, config.context_fade, config.context_token_drop = 0.5, 0.8, 0.5
  noisy = draw(config)
  assert 0 < float(np.mean(noisy.token_drop)) < 0.5
  view = next_frame.corrupt_context(tokens, noisy, N_COND)
  np.testing.assert_array_equal(view[:, :N_COND], tokens[:, :N_COND])
  assert np.all(np.abs(view[:, N_COND:] - tokens[:, N_COND:]).max(axis=(1, 2, 3)) > 0)
  assert np.all((noisy.noise_std >= 0) & (noisy.noise_std <= 0.5))
  assert np.all((noisy.fade >= 0) & (noisy.fade <= 0.8))
  # Masks and diffusion draws do not move, so the frame after the given one (whose only
  # context is the clean given frame) keeps its loss exactly.
  np.testing.assert_array_equal(noisy.token_mask, clean.token_mask)
  z_clean, targets_clean = next_frame.conditions_and_targets(
      model, params, tokens, clean, mode=mode, num_cond=N_COND, h=H, w=W)
  z_noisy, targets_noisy = next_frame.conditions_and_targets(
      model, params, tokens, noisy, mode=mode, num_cond=N_COND, h=H, w=W)
  np.testing.assert_array_equal(targets_noisy, targets_clean)
  if mode == "all_frames":  # supervised frame 1 sees only the clean frame 0
    np.testing.assert_allclose(z_noisy[:, 0], z_clean[:, 0], rtol=1e-5, atol=1e-6)
    assert np.abs(z_noisy[:, -1] - z_clean[:, -1]).max() > 1e-4
  with pytest.raises(ValueError, match="context_fade"):
    config.context_fade = 1.5
    draw(config)


def _loss_draws(model, mode, **overrides):
  config = model.config.loss.copy_and_resolve_references()
  config.mode = mode
  for key, value in overrides.items():
    config[key] = value
  return next_frame.draw(jax.random.key(3), config, batch_size=B, num_frames=T,
                         tokens_per_frame=N, token_dim=model.token_dim,
                         diffusion_batch_mul=1, num_timesteps=1000)


def test_bidirectional_paper_mode_sees_frames_up_to_the_target_only(setup):
  """model.temporal_attention=bidirectional (the paper's ablation): an earlier frame's
  output changes with a later frame <= k, never with a frame after k."""
  model, params, tokens = setup
  draws = _loss_draws(model, "paper").replace(target_frame=jnp.array([2, 2]))
  run = lambda x, temporal: next_frame.conditions_and_targets(
      model, params, x, draws, mode="paper", num_cond=N_COND, h=H, w=W,
      temporal_attention=temporal)[0]
  z = run(tokens, "bidirectional")
  np.testing.assert_allclose(run(tokens.at[:, 3].add(1.0), "bidirectional"), z, rtol=1e-5,
                             atol=1e-6)  # frame 3 > k = 2: invisible
  # Earlier frames now see frame k (and pass it on in the second layer): z differs from
  # the causal model's on the same draws.
  assert np.abs(z - run(tokens, "causal")).max() > 1e-4
  _, mask = next_frame.sequence_layout("paper", T, N_COND, H, W, "bidirectional")
  assert bool(np.all(mask))
  with pytest.raises(ValueError, match="all_frames"):
    next_frame.sequence_layout("all_frames", T, N_COND, H, W, "bidirectional")


def test_mar_mode_masks_every_later_frame_at_one_ratio_and_supervises_them_all(setup):
  """loss.mode=mar (no next-frame loss): the given frames stay visible, frames >= n_cond are
  masked jointly; the count over all of them follows one ratio per sample."""
  model, params, tokens = setup
  draws = _loss_draws(model, "mar", mask_ratio_min=0.5)
  assert draws.token_mask.shape == (B, T - N_COND, N)
  counts = draws.token_mask.reshape(B, -1).sum(-1)
  assert np.all(counts >= np.ceil(0.5 * (T - N_COND) * N)) and np.all(counts <= (T - 1) * N)
  z, targets = next_frame.conditions_and_targets(model, params, tokens, draws, mode="mar",
                                                 num_cond=N_COND, h=H, w=W)
  assert z.shape[:3] == (B, T - N_COND, N)
  np.testing.assert_array_equal(targets, tokens[:, N_COND:])
  loss, _ = next_frame.next_frame_loss(model, params, tokens, jax.random.key(0),
                                       _settings(model), h=H, w=W)
  assert np.isfinite(loss)
  # Causal mar: frame 1's outputs ignore frame 3.
  z_changed, _ = next_frame.conditions_and_targets(
      model, params, tokens.at[:, 3].add(1.0), draws, mode="mar", num_cond=N_COND, h=H, w=W)
  np.testing.assert_allclose(z_changed[:, 0], z[:, 0], rtol=1e-5, atol=1e-6)


def test_own_context_replaces_later_context_frames_with_the_models_predictions(setup):
  """loss.own_context_prob: the selected samples see the model's own (gradient-free)
  predictions as context frames >= num_cond; the others, the first supervised frame (whose
  only context is the given frame) and the targets are unchanged."""
  model, params, tokens = setup
  clean = _loss_draws(model, "all_frames")
  own = _loss_draws(model, "all_frames", own_context_prob=1.0, own_context_steps=3)
  assert own.own_context.shape == (B,) and bool(np.all(own.own_context))
  np.testing.assert_array_equal(own.token_mask, clean.token_mask)
  run = jax.jit(lambda draws: next_frame.conditions_and_targets(
      model, params, tokens, draws, mode="all_frames", num_cond=N_COND, h=H, w=W,
      own_context_steps=3))
  (z_clean, t_clean), (z_own, t_own) = run(clean), run(own)
  np.testing.assert_array_equal(t_own, t_clean)
  np.testing.assert_allclose(z_own[:, 0], z_clean[:, 0], rtol=1e-5, atol=1e-6)
  assert np.abs(z_own[:, 1:] - z_clean[:, 1:]).max() > 1e-4
  # Only the selected samples change.
  half = own.replace(own_context=jnp.array([True, False]))
  z_half = run(half)[0]
  np.testing.assert_allclose(z_half[1], z_clean[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(z_half[0], z_own[0], rtol=1e-5, atol=1e-6)
  # The predictions are what `own_predictions` returns: finite, one per frame 1..T-2.
  positions, mask = next_frame.sequence_layout("all_frames", T, N_COND, H, W)
  guess = jax.jit(lambda draws: next_frame.own_predictions(
      model, params, tokens, draws, num_cond=N_COND, num_steps=3, positions=positions,
      attn_mask=mask))(own)
  assert guess.shape == (B, T - 1 - N_COND, N, model.token_dim)
  assert np.all(np.isfinite(guess))
  # No gradient reaches the parameters through the prediction pass: the loss's gradient
  # with own context equals the gradient with the predictions fed in as a constant.
  def loss_with(draws, fixed_context=None):
    def f(p):
      if fixed_context is None:
        losses = next_frame.per_token_losses(model, p, tokens, draws, mode="all_frames",
                                             num_cond=N_COND, h=H, w=W, own_context_steps=3)
      else:  # the same sequence, its context frames given from outside
        seq = jnp.concatenate([fixed_context, tokens[:, N_COND:]], axis=1)
        is_masked = jnp.concatenate([jnp.zeros((B, T - 1, N), bool), draws.token_mask], 1)
        z = model.encode(p, seq.reshape(B, -1, model.token_dim), is_masked.reshape(B, -1),
                         positions, mask).reshape(B, -1, N, model.config.model.width)
        mul = draws.timesteps.shape[0]
        zz = jnp.broadcast_to(z[:, None, T - 1:], (B, mul, T - N_COND, N, z.shape[-1]))
        tt = jnp.broadcast_to(tokens[:, None, N_COND:], zz.shape[:-1] + (model.token_dim,))
        losses = model.diffusion_losses(
            p, zz.reshape(-1, zz.shape[-1]), tt.reshape(-1, model.token_dim),
            jnp.swapaxes(draws.timesteps, 0, 1).reshape(-1),
            jnp.swapaxes(draws.noise, 0, 1).reshape(-1, model.token_dim))
        losses = jnp.swapaxes(losses.reshape((B, mul, T - N_COND, N)), 0, 1)
      return jnp.sum(losses * draws.token_mask[None])
    return jax.jit(jax.grad(f))(params)
  fixed = jnp.concatenate([tokens[:, :N_COND], guess], axis=1)
  for a, b in zip(jax.tree_util.tree_leaves(loss_with(own)),
                  jax.tree_util.tree_leaves(loss_with(own, fixed))):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (dict(own_context_prob=1.5), "own_context_prob"),
    (dict(own_context_prob=0.5, own_context_steps=0), "own_context_steps"),
])
def test_own_context_settings_are_checked(setup, overrides, message):
  model = setup[0]
  with pytest.raises(ValueError, match=message):
    _loss_draws(model, "all_frames", **overrides)
  with pytest.raises(ValueError, match="all_frames"):
    _loss_draws(model, "paper", own_context_prob=0.5)


def test_block_sparse_all_frames_attention_equals_the_dense_mask(setup, monkeypatch):
  """The all-frames sequence attends block by block (skipping the target-to-target blocks
  and the future); loss and gradients must be those of the dense [S, S] mask."""
  model, params, tokens = setup
  _, mask = next_frame.sequence_layout("all_frames", T, N_COND, H, W)
  assert isinstance(mask, attention.FrameBlockMask)
  draws = _draws(model, "all_frames")
  loss = lambda p: jnp.mean(_losses(model, p, tokens, draws, "all_frames"))
  sparse_loss, sparse_grads = jax.value_and_grad(loss)(params)
  dense_layout = functools.partial(sequence.frame_block_mask, min_saving=2.0)  # never sparse
  monkeypatch.setattr(sequence, "frame_block_mask", dense_layout)
  assert not isinstance(next_frame.sequence_layout("all_frames", T, N_COND, H, W)[1],
                        attention.FrameBlockMask)
  dense_loss, dense_grads = jax.value_and_grad(loss)(params)
  np.testing.assert_allclose(sparse_loss, dense_loss, rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         sparse_grads, dense_grads)
