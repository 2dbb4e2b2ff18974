"""The sampler: cache == no cache, given frames kept, each token written once, one compile,
extrapolation, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import perturb, small_config
from videomar_jax.sampling import generate as generate_module, schedules
from videomar_jax.train.setup import make_model
from videomar_jax.sampling.generate import SamplerSettings, generate, generate_teacher_forced

B, H, W = 2, 2, 3
N = H * W


def _model(context_kind="none"):
  config = small_config()
  config.model.context.kind = context_kind
  config.model.context.num_classes = 3
  model = make_model(config)
  return model, perturb(model.init(jax.random.key(0)), jax.random.key(1), scale=0.02)


def _given(model, n=1):
  return jax.random.normal(jax.random.key(2), (B, n, N, model.token_dim))


def _assert_same_video(a, b):
  # fp32: the two modes sum attention over differently laid-out keys, so results agree to
  # float rounding, which the 10-step ancestral sampler of an untrained head amplifies in
  # proportion to the (large) token values it produces.
  scale = float(np.abs(a).max())
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("context_kind,n_given", [("none", 1), ("class", 2)])
def test_kv_cache_and_no_cache_give_the_same_video(context_kind, n_given):
  model, params = _model(context_kind)
  given = _given(model, n_given)
  kwargs = {}
  if context_kind == "class":
    kwargs = dict(context=jnp.array([0, 2]))
  out = {}
  for mode in ("kv_cache", "no_cache"):
    settings = SamplerSettings(num_frames=n_given + 3, num_steps=3, mode=mode, cfg=3.0)
    out[mode] = generate(model, params, given, jax.random.key(3), settings, (H, W), **kwargs)
  _assert_same_video(out["kv_cache"]["tokens"], out["no_cache"]["tokens"])
  for o in out.values():
    np.testing.assert_array_equal(o["tokens"][:, :n_given], given)  # given frames unchanged


@pytest.mark.parametrize("mode,steps", [("kv_cache", 4), ("no_cache", 4), ("next_token", 0)])
def test_each_generated_token_is_written_exactly_once(mode, steps):
  model, params = _model()
  settings = SamplerSettings(num_frames=3, num_steps=steps or 1, mode=mode)
  out = generate(model, params, _given(model), jax.random.key(4), settings, (H, W))
  np.testing.assert_array_equal(out["write_counts"], np.ones((B, 2, N)))
  assert np.all(np.isfinite(out["tokens"]))


def test_guidance_changes_the_video_and_seeds_matter():
  model, params = _model("class")
  given, labels = _given(model), jnp.array([0, 1])
  run = lambda cfg, seed: generate(model, params, given, jax.random.key(seed),
                                   SamplerSettings(num_frames=2, num_steps=2, cfg=cfg),
                                   (H, W), context=labels)["tokens"]
  assert not np.allclose(run(1.0, 0), run(4.0, 0))
  assert not np.allclose(run(1.0, 0), run(1.0, 1))
  np.testing.assert_array_equal(run(1.0, 0), run(1.0, 0))


def test_a_whole_video_compiles_once():
  model, params = _model()
  settings = SamplerSettings(num_frames=5, num_steps=3)
  before = generate._cache_size()  # pylint: disable=protected-access
  for seed in range(3):  # new seeds and inputs reuse the one program; frames and steps are scans
    generate(model, params, _given(model) + seed, jax.random.key(seed), settings, (H, W))
  assert generate._cache_size() - before == 1  # pylint: disable=protected-access


def test_extrapolates_to_twice_the_frames_and_resolution():
  model, params = _model()
  # The test model trains on clips of 3-4 frames of 4x4 tokens (16x16 pixels, patch 4).
  given = jax.random.normal(jax.random.key(5), (1, 1, 8 * 8, model.token_dim))
  out = generate(model, params, given, jax.random.key(6),
                 SamplerSettings(num_frames=8, num_steps=4), (8, 8))
  assert out["tokens"].shape == (1, 8, 64, model.token_dim)
  assert np.all(np.isfinite(out["tokens"]))


def test_bad_inputs_are_clear_errors():
  model, params = _model()
  with pytest.raises(ValueError, match="grid"):
    generate(model, params, _given(model), jax.random.key(0), SamplerSettings(num_frames=3),
             (3, 3))
  with pytest.raises(ValueError, match="num_steps"):
    generate(model, params, _given(model), jax.random.key(0),
             SamplerSettings(num_frames=3, num_steps=N + 1), (H, W))
  with pytest.raises(ValueError, match="mode"):
    SamplerSettings(num_frames=3, mode="beam")


def test_cosine_unmask_schedule():
  plan = schedules.cosine_schedule(1024, 64)
  assert plan.num_revealed.sum() == 1024 and plan.num_revealed.min() >= 1
  assert plan.next_masked[0] == 1023 and plan.next_masked[-1] == 0
  assert plan.max_revealed < 1024 / 16  # the head never sees a whole frame at once
  np.testing.assert_array_equal(schedules.cosine_schedule(4, 4).num_revealed, [1, 1, 1, 1])
  ntp = schedules.next_token_schedule(5)
  np.testing.assert_array_equal(ntp.num_revealed, np.ones(5))
  np.testing.assert_array_equal(ntp.next_masked, [4, 3, 2, 1, 0])


def test_frame_temperatures():
  np.testing.assert_allclose(schedules.frame_temperatures("linear", 6), np.linspace(.95, .9, 6))
  np.testing.assert_allclose(schedules.frame_temperatures("constant", 3, start=1.0), [1, 1, 1])
  np.testing.assert_allclose(schedules.frame_temperatures("list", 2, values=(1.0, .98)),
                             [1.0, .98])
  with pytest.raises(ValueError, match="temperatures given"):
    schedules.frame_temperatures("list", 3, values=(1.0,))


def _dot_input_shapes(jaxpr):
  """Shapes of the left operand of every matmul in a jaxpr, sub-jaxprs (scans) included."""
  shapes = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      shapes.append(tuple(eqn.invars[0].aval.shape))
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          shapes += _dot_input_shapes(inner)
  return shapes


def test_the_diffusion_head_only_sees_the_tokens_being_revealed():
  model, params = _model()
  h = w = 4  # N = 16 tokens, 4 steps -> at most 6 tokens revealed per step
  settings = SamplerSettings(num_frames=3, num_steps=4)
  width = schedules.cosine_schedule(h * w, 4).max_revealed
  assert width < h * w
  jaxpr = jax.make_jaxpr(lambda p, g: generate(model, p, g, jax.random.key(0), settings,
                                                (h, w)))(
      params, jax.random.normal(jax.random.key(1), (B, 1, h * w, model.token_dim)))
  # The head's input projection is the only 2-D matmul on token-sized vectors.
  head_rows = {s[0] for s in _dot_input_shapes(jaxpr.jaxpr)
               if len(s) == 2 and s[1] == model.token_dim}
  assert head_rows == {B * width}, head_rows


def test_teacher_forced_frames_come_from_the_true_frames_and_free_running_from_its_own():
  """Teacher forcing: frame f is exactly what `generate` makes after the true frames < f
  (same rng), and changing a true frame changes only the frames generated after it.
  Free-running: the true frames after the given ones are not even an input, so frame f
  depends on the generated frames before it."""
  model, params = _model()
  true = jax.random.normal(jax.random.key(5), (B, 4, N, model.token_dim))
  settings = SamplerSettings(num_frames=4, num_steps=3, temperature="constant")
  rng = jax.random.key(6)
  forced = generate_teacher_forced(model, params, true, rng, settings, (H, W))["tokens"]
  np.testing.assert_array_equal(forced[:, :1], true[:, :1])
  for f in (1, 2, 3):
    ahead = generate(model, params, true[:, :f], rng,
                     SamplerSettings(num_frames=f + 1, num_steps=3, temperature="constant"),
                     (H, W))["tokens"]
    _assert_same_video(forced[:, f], ahead[:, f])
  # Changing true frame 2 leaves generated frames 1 and 2 alone and changes frame 3.
  changed = true.at[:, 2].add(1.0)
  forced2 = generate_teacher_forced(model, params, changed, rng, settings, (H, W))["tokens"]
  np.testing.assert_array_equal(forced2[:, 1:3], forced[:, 1:3])
  assert np.abs(forced2[:, 3] - forced[:, 3]).max() > 1e-3
  # Free-running frame 2 is conditioned on the generated frame 1, not the true one.
  free = generate(model, params, true[:, :1], rng, settings, (H, W))["tokens"]
  _assert_same_video(free[:, 1], forced[:, 1])  # same context (frame 0) -> same frame 1
  assert np.abs(free[:, 2] - forced[:, 2]).max() > 1e-3
  on_own = generate(model, params, free[:, :2], rng,
                    SamplerSettings(num_frames=3, num_steps=3, temperature="constant"),
                    (H, W))["tokens"]
  _assert_same_video(free[:, 2], on_own[:, 2])
  with pytest.raises(ValueError, match="num_frames"):
    generate_teacher_forced(model, params, true, rng, SamplerSettings(num_frames=5), (H, W))


def test_teacher_forcing_without_cache_and_bidirectional_models():
  """Teacher-forced kv_cache == no_cache for causal models; a bidirectional model samples
  (free-running and teacher-forced) without a cache and refuses the cache."""
  model, params = _model()
  true = jax.random.normal(jax.random.key(5), (B, 3, N, model.token_dim))
  out = {mode: generate_teacher_forced(model, params, true, jax.random.key(6),
                                       SamplerSettings(num_frames=3, num_steps=2, mode=mode),
                                       (H, W))["tokens"] for mode in ("kv_cache", "no_cache")}
  _assert_same_video(out["kv_cache"], out["no_cache"])
  for loss_mode in ("paper", "mar"):
    config = model.config.copy_and_resolve_references()
    config.model.temporal_attention = "bidirectional"
    config.loss.mode = loss_mode
    bidirectional = make_model(config)
    settings = SamplerSettings(num_frames=3, num_steps=2, mode="no_cache")
    free = generate(bidirectional, params, true[:, :1], jax.random.key(6), settings, (H, W))
    forced = generate_teacher_forced(bidirectional, params, true, jax.random.key(6), settings,
                                     (H, W))
    assert np.all(np.isfinite(free["tokens"])) and np.all(np.isfinite(forced["tokens"]))
    with pytest.raises(ValueError, match="no KV cache"):
      generate(bidirectional, params, true[:, :1], jax.random.key(6),
               SamplerSettings(num_frames=3, num_steps=2), (H, W))


def test_context_noise_reaches_later_frames_only_and_cache_equals_no_cache():
  model, params = _model()
  given = _given(model)
  out = {}
  for noise in (0.0, 0.5):
    for mode in ("kv_cache", "no_cache"):
      settings = SamplerSettings(num_frames=4, num_steps=2, mode=mode, context_noise=noise)
      out[noise, mode] = generate(model, params, given, jax.random.key(8), settings,
                                  (H, W))["tokens"]
  _assert_same_video(out[0.5, "kv_cache"], out[0.5, "no_cache"])
  # Frame 1 sees only the given frame; frames 2 and 3 see noisy versions of earlier ones.
  np.testing.assert_array_equal(out[0.5, "kv_cache"][:, 1], out[0.0, "kv_cache"][:, 1])
  assert np.abs(out[0.5, "kv_cache"][:, 2:] - out[0.0, "kv_cache"][:, 2:]).max() > 1e-3
  with pytest.raises(ValueError, match="context_noise"):
    SamplerSettings(num_frames=3, context_noise=-1.0)


@pytest.mark.parametrize("teacher_forced", [False, True])
def test_cache_slicing_changes_nothing_but_speed(teacher_forced):
  # Frames read static slices of the KV cache (per power of two, per frame, or the whole
  # preallocated cache): the slots left out are exactly the ones the mask hides.
  model, params = _model()
  clip = jax.random.normal(jax.random.key(7), (B, 6, N, model.token_dim))
  out = {}
  for slicing in ("pow2", "frame", "none"):
    settings = SamplerSettings(num_frames=6, num_steps=2, cache_slicing=slicing)
    if teacher_forced:
      out[slicing] = generate_teacher_forced(model, params, clip, jax.random.key(8), settings,
                                             (H, W))["tokens"]
    else:
      out[slicing] = generate(model, params, clip[:, :1], jax.random.key(8), settings,
                              (H, W))["tokens"]
  _assert_same_video(out["pow2"], out["none"])
  _assert_same_video(out["frame"], out["none"])


def test_cache_groups_cover_every_frame_with_enough_of_the_cache():
  frames = np.arange(1, 16)
  for slicing in ("pow2", "frame", "none"):
    groups = generate_module.cache_groups(frames, 16, slicing)
    np.testing.assert_array_equal(np.concatenate([g for _, g in groups]), frames)
    for visible, group in groups:
      assert np.all(group <= visible) and visible <= 16
  pow2 = generate_module.cache_groups(frames, 16, "pow2")
  assert [v for v, _ in pow2] == [1, 2, 4, 8, 15]  # log2(T) programs, capped at T - 1
  with pytest.raises(ValueError, match="cache_slicing"):
    SamplerSettings(num_frames=3, cache_slicing="exact")
