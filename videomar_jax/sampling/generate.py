"""`generate`: the whole video as one compiled program.

1. Prefill: the given (clean) frames run once; every layer's keys and values go into a
   preallocated cache of `num_frames * N` slots per layer.
2. A `lax.scan` over the frames to generate. For frame f: start fully masked with a random
   per-sample order of the N positions; a `lax.scan` over the S unmasking steps runs the
   transformer on this frame's N tokens only (attending to the cache of frames < f and to
   the frame itself), and the diffusion head samples the tokens this step reveals; then the
   finished clean frame runs once more and its keys and values are written into the cache
   in place (`dynamic_update_slice`). Unwritten cache slots are masked out.
3. The per-step counts depend only on N and S (`schedules.py`), so every shape is static.
   The head runs only on the tokens revealed at a step, padded to the largest step's count;
   never on all N tokens.

Modes: `kv_cache` (default); `no_cache` re-runs all frames at every step (the same result,
the paper's speed baseline); `next_token` reveals one token per step (the paper's NTP
baseline). Classifier-free guidance doubles the transformer batch (context / null context)
and guides epsilon at scale `1 + (cfg - 1) * (N - still_masked) / N` (MAR's linear schedule).
Frame positions are plain integers fed to 3D RoPE, so generating more frames, or larger
frames, than the model was trained on needs nothing special (extrapolation).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from videomar_jax.diffusion import gaussian
from videomar_jax.models import sequence
from videomar_jax.sampling import schedules

SAMPLER_MODES = ("kv_cache", "no_cache", "next_token")


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """Static sampling settings (hashable: a change recompiles, a new seed does not)."""
  num_frames: int  # latent frames of the output, given ones included
  num_steps: int = 64  # unmasking steps per frame (next_token: N)
  mode: str = "kv_cache"
  cfg: float = 1.0  # guidance scale; used only when a context is given
  temperature: str = "linear"  # constant | linear | list
  temperature_start: float = 0.95
  temperature_end: float = 0.90
  temperatures: tuple[float, ...] = ()  # for temperature="list", one per generated frame
  clip_latents: float = 0.0  # > 0: clip generated tokens to [-clip, clip]
  # > 0: std of Gaussian noise added to each generated frame as later frames see it (the
  # returned tokens stay clean): for models trained with loss.context_noise, so that their
  # own frames look like the noisy context they learned from.
  context_noise: float = 0.0
  # Clip the diffusion head's predicted x_0 to [-c, c] at every denoising step (IDDPM's
  # clip_denoised); None = the model's `head.clip_denoised` (0 = MAR: no clipping).
  clip_denoised: float | None = None

  def __post_init__(self):
    if self.mode not in SAMPLER_MODES:
      raise ValueError(f"sampler mode {self.mode!r} not in {SAMPLER_MODES}.")
    if self.context_noise < 0:
      raise ValueError(f"context_noise={self.context_noise} must be >= 0.")


def as_context(tokens: jax.Array, settings: SamplerSettings, rng_f: jax.Array) -> jax.Array:
  """A finished generated frame [B, N, C] as the later frames see it (see context_noise)."""
  if settings.context_noise <= 0:
    return tokens
  noise = jax.random.normal(jax.random.fold_in(rng_f, (1 << 20) + 1), tokens.shape)
  return tokens + settings.context_noise * noise.astype(tokens.dtype)


def unmask_schedule(settings: SamplerSettings, num_tokens: int) -> schedules.UnmaskSchedule:
  if settings.mode == "next_token":
    return schedules.next_token_schedule(num_tokens)
  return schedules.cosine_schedule(num_tokens, settings.num_steps)


class _Transformer:
  """The transformer on the sampler's (possibly guidance-doubled) batch."""

  def __init__(self, model, params, batch_size, guided, context, context_mask):
    self.model, self.params, self.guided = model, params, guided
    self.context, self.context_mask, self.drop = context, context_mask, None
    if guided:
      self.context = jnp.concatenate([context, context])
      if context_mask is not None:
        self.context_mask = jnp.concatenate([context_mask, context_mask])
      self.drop = jnp.arange(2 * batch_size) >= batch_size  # second half: null context

  def double(self, a):
    return jnp.concatenate([a, a]) if self.guided else a

  def __call__(self, tokens, is_masked, positions, attn_mask, kv_cache=None, return_kv=False):
    args = (self.params, self.double(tokens), self.double(is_masked), positions, attn_mask,
            self.context, self.context_mask, self.drop)
    encode = self.model.encode_with_kv if return_kv else self.model.encode
    return encode(*args, kv_cache=kv_cache)


@functools.partial(jax.jit, static_argnames=("model", "settings", "grid"))
def generate(model, params, given_tokens: jax.Array, rng: jax.Array, settings: SamplerSettings,
             grid: tuple[int, int], context=None, context_mask=None) -> dict:
  """Generates a video's tokens after the given frames (free-running: each generated frame
  is the context of the next).

  Args:
    model: a `VideoMAR`.
    params: its parameters (use the EMA weights).
    given_tokens: [B, n, N, C] clean tokens of the n >= 1 given frames (I2V: n = 1).
    rng: a PRNG key; everything random is `fold_in`-derived from it.
    settings: `SamplerSettings`; `num_frames` > n.
    grid: (h, w) token grid of a frame, h * w = N.
    context, context_mask: optional class labels [B] / text features [B, L, Dc] (+ mask).
  Returns:
    {"tokens": [B, num_frames, N, C] (the given frames unchanged, then the generated ones),
     "write_counts": [B, num_frames - n, N] how often each generated token was written}.
  """
  return _generate(model, params, given_tokens, rng, settings, grid, context, context_mask,
                   teacher_forced=False)


@functools.partial(jax.jit, static_argnames=("model", "settings", "grid", "num_given"))
def generate_teacher_forced(model, params, true_tokens: jax.Array, rng: jax.Array,
                            settings: SamplerSettings, grid: tuple[int, int],
                            num_given: int = 1, context=None, context_mask=None) -> dict:
  """Generates every frame f >= num_given of a true clip from the TRUE frames < f.

  The one-frame-ahead view of the model (no error accumulation): frame f is sampled exactly
  as `generate` samples it after the given frames true_tokens[:, :f] (same unmasking order,
  noise and temperature for the same rng), but all frames come out of one program: the
  whole true clip is prefilled into the KV cache once (frame-causal attention makes frame
  i's keys and values depend on frames <= i only) and generated frames are never written
  back. In mode no_cache (and for bidirectional models, which have no cache) the true clip
  is the sequence every step runs on. `settings.num_frames` must equal the clip's frame
  count.

  Returns {"tokens": [B, T, N, C] (true frames < num_given, then the generated ones),
           "write_counts": [B, T - num_given, N]}.
  """
  if settings.mode == "next_token":
    raise ValueError("teacher-forced generation runs in mode kv_cache or no_cache.")
  if true_tokens.shape[1] != settings.num_frames:
    raise ValueError(f"settings.num_frames={settings.num_frames} but the true clip has "
                     f"{true_tokens.shape[1]} frames.")
  return _generate(model, params, true_tokens, rng, settings, grid, context, context_mask,
                   teacher_forced=True, num_given=num_given)


def _generate(model, params, given_tokens, rng, settings, grid, context, context_mask, *,
              teacher_forced: bool, num_given: int = 0) -> dict:
  """`generate` (given_tokens = the given frames) or `generate_teacher_forced`
  (given_tokens = the whole true clip, num_given of them kept)."""
  true_clip = given_tokens
  if teacher_forced:
    given_tokens = true_clip[:, :num_given]
  b, n, num_tokens, c = given_tokens.shape
  t_total, (h, w) = settings.num_frames, grid
  if h * w != num_tokens or not 1 <= n < t_total:
    raise ValueError(f"given tokens {given_tokens.shape} do not fit grid {grid} and "
                     f"num_frames={t_total} (need 1 <= given frames < num_frames).")
  temporal = model.config.model.get("temporal_attention", "causal")
  if temporal != "causal" and settings.mode != "no_cache":
    raise ValueError(f"a model with {temporal} temporal attention has no KV cache: sample "
                     "it in mode no_cache.")
  guided = context is not None and settings.cfg != 1.0
  run = _Transformer(model, params, b, guided, context, context_mask)
  plan = unmask_schedule(settings, num_tokens)
  num_gen = t_total - n
  temperatures = schedules.frame_temperatures(
      settings.temperature, num_gen, settings.temperature_start, settings.temperature_end,
      settings.temperatures)
  cfg_per_step = 1.0 + (settings.cfg - 1.0) * (num_tokens - plan.next_masked) / num_tokens
  width = plan.max_revealed
  clip_x0 = (settings.clip_denoised if settings.clip_denoised is not None
             else model.config.head.get("clip_denoised", 0.0))
  frame_grid = jnp.asarray(sequence.frame_positions([0], h, w))  # [N, 3] at frame 0

  def sample_frame(rng_f, temperature, transformer_fn):
    """The S unmasking steps of one frame; transformer_fn(tokens, is_masked) -> z."""
    scores = jax.random.uniform(jax.random.fold_in(rng_f, 1 << 20), (b, num_tokens))
    order = jnp.argsort(scores, axis=-1)  # order[:, r] = the token revealed at rank r

    def step(carry, xs):
      tokens, known, counts = carry
      s, next_masked, revealed, cfg = xs
      z = transformer_fn(tokens, ~known)  # [B (x2), N, D]
      slot = jnp.arange(width)
      ranks = jnp.clip(next_masked + slot, 0, num_tokens - 1)
      index = jnp.take(order, ranks, axis=1)  # [B, width] token positions revealed now
      z_sel = jnp.take_along_axis(z, run.double(index)[..., None], axis=1)
      rng_s = jax.random.fold_in(rng_f, s)
      noise = jax.random.normal(jax.random.fold_in(rng_s, 0), (b * width, c))
      x = gaussian.sample(model.sample_schedule, model.head_fn(params, z_sel.reshape(
          -1, z_sel.shape[-1])), noise, jax.random.fold_in(rng_s, 1), temperature=temperature,
                          cfg_scale=cfg if guided else None,
                          clip_x0=clip_x0).reshape(b, width, c)
      if settings.clip_latents > 0:
        x = jnp.clip(x, -settings.clip_latents, settings.clip_latents)
      write = jnp.where(slot[None, :] < revealed, index, num_tokens)  # padding -> dropped
      rows = jnp.arange(b)[:, None]
      tokens = tokens.at[rows, write].set(x.astype(tokens.dtype), mode="drop")
      known = known.at[rows, write].set(True, mode="drop")
      counts = counts.at[rows, write].add(1, mode="drop")
      return (tokens, known, counts), None

    init = (jnp.zeros((b, num_tokens, c), given_tokens.dtype),
            jnp.zeros((b, num_tokens), bool), jnp.zeros((b, num_tokens), jnp.int32))
    xs = (jnp.arange(plan.num_steps), jnp.asarray(plan.next_masked),
          jnp.asarray(plan.num_revealed), jnp.asarray(cfg_per_step, jnp.float32))
    (tokens, _, counts), _ = jax.lax.scan(step, init, xs)
    return tokens, counts

  frames_to_make = (jnp.arange(n, t_total), jnp.asarray(temperatures))
  if settings.mode == "no_cache":
    prefill = true_clip if teacher_forced else given_tokens
    generated, counts = _generate_without_cache(
        run, prefill, t_total, h, w, rng, sample_frame, frames_to_make, settings,
        _no_cache_keys(temporal, model.config.loss.mode), write_back=not teacher_forced)
  else:
    prefill = true_clip if teacher_forced else given_tokens
    generated, counts = _generate_with_cache(model, run, prefill, t_total, h, w, rng,
                                             sample_frame, frames_to_make, frame_grid,
                                             settings, write_back=not teacher_forced)
  tokens = jnp.concatenate([given_tokens, jnp.moveaxis(generated, 0, 1)], axis=1)
  return {"tokens": tokens, "write_counts": jnp.moveaxis(counts, 0, 1)}


def _generate_with_cache(model, run, given, t_total, h, w, rng, sample_frame, frames_to_make,
                         frame_grid, settings, write_back=True):
  """`given` [B, n, N, C] is prefilled into the cache; each generated frame is written back
  (free-running) or not (teacher-forced: `given` is then the whole true clip)."""
  b, n, num_tokens, c = given.shape
  tc = model.transformer_config
  head_dim = tc.width // tc.num_heads
  batch = 2 * b if run.guided else b
  shape = (tc.depth, batch, t_total * num_tokens, tc.num_heads, head_dim)
  cache = {"k": jnp.zeros(shape, tc.dtype), "v": jnp.zeros(shape, tc.dtype)}
  slot_frame = jnp.repeat(jnp.arange(t_total), num_tokens)  # frame of every cache slot

  # Prefill the given frames (their own causal mask; no cache yet).
  _, kv = run(given.reshape(b, n * num_tokens, c), jnp.zeros((b, n * num_tokens), bool),
              sequence.frame_positions(range(n), h, w), sequence.frame_causal_mask(n, num_tokens),
              return_kv=True)
  cache = jax.tree_util.tree_map(
      lambda buf, new: jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype),
                                                    (0, 0, 0, 0, 0)), cache, kv)

  def frame(cache, xs):
    f, temperature = xs
    positions = frame_grid + jnp.array([1, 0, 0]) * f
    # Keys: all cache slots (visible iff written, i.e. of a frame < f), then the frame itself.
    attn_mask = jnp.concatenate([
        jnp.broadcast_to(slot_frame < f, (num_tokens, t_total * num_tokens)),
        jnp.ones((num_tokens, num_tokens), bool)], axis=1)
    transformer_fn = lambda tokens, is_masked: run(tokens, is_masked, positions, attn_mask,
                                                   kv_cache=cache)
    tokens, counts = sample_frame(jax.random.fold_in(rng, f), temperature, transformer_fn)
    if not write_back:
      return cache, (tokens, counts)
    context = as_context(tokens, settings, jax.random.fold_in(rng, f))
    _, kv = run(context, jnp.zeros((b, num_tokens), bool), positions, attn_mask,
                kv_cache=cache, return_kv=True)  # the finished frame once more
    cache = jax.tree_util.tree_map(
        lambda buf, new: jax.lax.dynamic_update_slice(
            buf, new.astype(buf.dtype), (0, 0, f * num_tokens, 0, 0)), cache, kv)
    return cache, (tokens, counts)

  _, (generated, counts) = jax.lax.scan(frame, cache, frames_to_make)
  return generated, counts


def _no_cache_keys(temporal_attention: str, loss_mode: str) -> str:
  """Which frames the no-cache pass at frame f attends to, as the model was trained:
  'causal' (frame-causal mask), 'up_to_current' (bidirectional, frames <= f: the paper
  loss never shows later frames) or 'all' (bidirectional over the whole clip, later frames
  fully masked: the `mar` loss)."""
  if temporal_attention == "causal":
    return "causal"
  return "all" if loss_mode == "mar" else "up_to_current"


def _generate_without_cache(run, given, t_total, h, w, rng, sample_frame, frames_to_make,
                            settings, keys: str = "causal", write_back: bool = True):
  """Every step runs the whole clip: `given` [B, n, N, C] then masked frames (free-running:
  generated frames are written back), or `given` = the true clip, never overwritten
  (teacher-forced)."""
  b, n, num_tokens, c = given.shape
  positions = sequence.frame_positions(range(t_total), h, w)
  causal_mask = sequence.frame_causal_mask(t_total, num_tokens)
  key_frame = jnp.repeat(jnp.arange(t_total), num_tokens)
  video = jnp.concatenate([given, jnp.zeros((b, t_total - n, num_tokens, c), given.dtype)], 1)

  def frame(video, xs):
    f, temperature = xs
    later = (jnp.arange(t_total) > f)[None, :, None]  # unseen by frame f (causality)
    if keys == "causal":
      attn_mask = causal_mask
    elif keys == "up_to_current":
      attn_mask = jnp.broadcast_to(key_frame[None, :] <= f, causal_mask.shape)
    else:
      attn_mask = jnp.ones_like(causal_mask)

    def transformer_fn(tokens, is_masked):
      seq = jax.lax.dynamic_update_slice(video, tokens[:, None], (0, f, 0, 0))
      masked = jax.lax.dynamic_update_slice(
          jnp.broadcast_to(later, (b, t_total, num_tokens)), is_masked[:, None], (0, f, 0))
      z = run(seq.reshape(b, -1, c), masked.reshape(b, -1), positions, attn_mask)
      z = z.reshape(z.shape[0], t_total, num_tokens, -1)
      return jax.lax.dynamic_index_in_dim(z, f, axis=1, keepdims=False)

    tokens, counts = sample_frame(jax.random.fold_in(rng, f), temperature, transformer_fn)
    if write_back:
      context = as_context(tokens, settings, jax.random.fold_in(rng, f))
      video = jax.lax.dynamic_update_slice(video, context[:, None], (0, f, 0, 0))
    return video, (tokens, counts)

  _, (generated, counts) = jax.lax.scan(frame, video, frames_to_make)
  return generated, counts
