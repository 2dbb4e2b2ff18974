"""`generate`: the whole video as one compiled program.

1. Prefill: the given (clean) frames run once; every layer's keys and values go into a
   preallocated cache of `num_frames * N` slots per layer.
2. A `lax.scan` over the frames to generate. For frame f: start fully masked with a random
   per-sample order of the N positions; a `lax.scan` over the S unmasking steps runs the
   transformer on this frame's N tokens only (attending to the cache of frames < f and to
   the frame itself), and the diffusion head samples the tokens this step reveals; then the
   finished clean frame runs once more and its keys and values are written into the cache
   in place (`dynamic_update_slice`). Unwritten cache slots are masked out.
   Frame f can see only the f frames before it, so it attends to a static slice of the
   cache, not to all of it: frames are grouped by how much of the cache they can see
   (`cache_slicing`, below), one scan per group, so early frames do not pay for slots that
   are still empty.
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

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from videomar_jax.diffusion import gaussian
from videomar_jax.models import sequence
from videomar_jax.models.layers import KV_CACHE_AXES, constrain
from videomar_jax.sampling import schedules

SAMPLER_MODES = ("kv_cache", "no_cache", "next_token")
# How much of the KV cache frame f attends to (it can see frames < f): `pow2` slices it to
# the next power of two of f frames (one scan per power: log2(T) compiled frame programs,
# at most 2x the visible slots), `frame` to exactly f frames (one program per frame:
# the fastest run, the longest compile), `none` never (one program, every slot).
CACHE_SLICING = ("pow2", "frame", "none")


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
  cache_slicing: str = "pow2"  # see CACHE_SLICING (mode kv_cache / next_token)

  def __post_init__(self):
    if self.mode not in SAMPLER_MODES:
      raise ValueError(f"sampler mode {self.mode!r} not in {SAMPLER_MODES}.")
    if self.cache_slicing not in CACHE_SLICING:
      raise ValueError(f"cache_slicing {self.cache_slicing!r} not in {CACHE_SLICING}.")
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
  decoder = _Decoder(model, params, given_tokens, settings, grid, context, context_mask)
  frames = np.arange(decoder.num_given, decoder.num_frames)
  temperatures = np.asarray(decoder.temperatures)
  prefill = true_clip if teacher_forced else given_tokens
  if settings.mode == "no_cache":
    state = decoder.prefill_without_cache(prefill)
    step = functools.partial(decoder.frame_without_cache, rng=rng, write_back=not teacher_forced)
    _, (generated, counts) = jax.lax.scan(step, state, (frames, temperatures))
  else:
    state, outputs = decoder.prefill_with_cache(prefill), []
    for visible_frames, group in cache_groups(frames, decoder.num_frames,
                                              settings.cache_slicing):
      step = functools.partial(decoder.frame_with_cache, rng=rng,
                               write_back=not teacher_forced, visible_frames=visible_frames)
      index = group - decoder.num_given
      state, out = jax.lax.scan(step, state, (group, temperatures[index]))
      outputs.append(out)
    generated, counts = (jnp.concatenate(parts) for parts in zip(*outputs))
  tokens = jnp.concatenate([given_tokens, jnp.moveaxis(generated, 0, 1)], axis=1)
  return {"tokens": tokens, "write_counts": jnp.moveaxis(counts, 0, 1)}


@flax.struct.dataclass
class DecodeState:
  """What the scan over frames carries from one generated frame to the next.

  kv_cache (mode kv_cache): {"k", "v"} of every layer, [layers, batch, num_frames * N,
    heads, head_dim] (batch doubled under guidance), laid out by `KV_CACHE_AXES`. Slots of
    frames not yet written are never visible (the attention mask reads `slot_frame`).
  video (mode no_cache): [B, num_frames, N, C], the given frames then the generated ones
    (later frames zero and masked), the sequence every step runs on.
  """
  kv_cache: dict | None = None
  video: jax.Array | None = None


class _Decoder:
  """The static facts of one generation (shapes, unmasking plan, temperatures, guidance)
  and the per-frame programs over a `DecodeState`. Built while tracing; holds no arrays
  that change between frames."""

  def __init__(self, model, params, given_tokens, settings, grid, context, context_mask):
    b, n, num_tokens, c = given_tokens.shape
    t_total, (h, w) = settings.num_frames, grid
    if h * w != num_tokens or not 1 <= n < t_total:
      raise ValueError(f"given tokens {given_tokens.shape} do not fit grid {grid} and "
                       f"num_frames={t_total} (need 1 <= given frames < num_frames).")
    self.temporal = model.config.model.get("temporal_attention", "causal")
    if self.temporal != "causal" and settings.mode != "no_cache":
      raise ValueError(f"a model with {self.temporal} temporal attention has no KV cache: "
                       "sample it in mode no_cache.")
    self.model, self.params, self.settings = model, params, settings
    self.batch, self.num_given, self.num_tokens, self.channels = b, n, num_tokens, c
    self.num_frames, self.h, self.w = t_total, h, w
    self.dtype = given_tokens.dtype
    self.guided = context is not None and settings.cfg != 1.0
    self.run = _Transformer(model, params, b, self.guided, context, context_mask)
    self.plan = unmask_schedule(settings, num_tokens)
    self.temperatures = schedules.frame_temperatures(
        settings.temperature, t_total - n, settings.temperature_start,
        settings.temperature_end, settings.temperatures)
    self.cfg_per_step = (1.0 + (settings.cfg - 1.0)
                         * (num_tokens - self.plan.next_masked) / num_tokens)
    self.clip_x0 = (settings.clip_denoised if settings.clip_denoised is not None
                    else model.config.head.get("clip_denoised", 0.0))
    self.loss_mode = model.config.loss.mode

  # ---- One frame's unmasking steps.
  def sample_frame(self, rng_f, temperature, transformer_fn):
    """The S unmasking steps of one frame; transformer_fn(tokens, is_masked) -> z. Returns
    the frame's tokens [B, N, C] and how often each was written [B, N]."""
    b, num_tokens, c, width = self.batch, self.num_tokens, self.channels, self.plan.max_revealed
    model, params, settings, run = self.model, self.params, self.settings, self.run
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
                          cfg_scale=cfg if self.guided else None,
                          clip_x0=self.clip_x0).reshape(b, width, c)
      if settings.clip_latents > 0:
        x = jnp.clip(x, -settings.clip_latents, settings.clip_latents)
      write = jnp.where(slot[None, :] < revealed, index, num_tokens)  # padding -> dropped
      rows = jnp.arange(b)[:, None]
      tokens = tokens.at[rows, write].set(x.astype(tokens.dtype), mode="drop")
      known = known.at[rows, write].set(True, mode="drop")
      counts = counts.at[rows, write].add(1, mode="drop")
      return (tokens, known, counts), None

    init = (jnp.zeros((b, num_tokens, c), self.dtype), jnp.zeros((b, num_tokens), bool),
            jnp.zeros((b, num_tokens), jnp.int32))
    xs = (jnp.arange(self.plan.num_steps), jnp.asarray(self.plan.next_masked),
          jnp.asarray(self.plan.num_revealed), jnp.asarray(self.cfg_per_step, jnp.float32))
    (tokens, _, counts), _ = jax.lax.scan(step, init, xs)
    return tokens, counts

  # ---- Mode kv_cache.
  def prefill_with_cache(self, given) -> DecodeState:
    """`given` [B, n, N, C] (the given frames, or the whole true clip when teacher-forced)
    runs once under its own frame-causal mask; its keys and values fill the cache's first
    n * N slots."""
    b, n, num_tokens, c = given.shape
    tc = self.model.transformer_config
    batch = 2 * b if self.guided else b
    shape = (tc.depth, batch, self.num_frames * self.num_tokens, tc.num_heads,
             tc.width // tc.num_heads)
    cache = {"k": jnp.zeros(shape, tc.dtype), "v": jnp.zeros(shape, tc.dtype)}
    _, kv = self.run(given.reshape(b, n * num_tokens, c), jnp.zeros((b, n * num_tokens), bool),
                     sequence.frame_positions(range(n), self.h, self.w),
                     sequence.frame_causal_mask(n, num_tokens), return_kv=True)
    return DecodeState(kv_cache=_write_kv(cache, kv, 0))

  def frame_with_cache(self, state: DecodeState, xs, *, rng, write_back: bool,
                       visible_frames: int):
    """Frame f from the cache of frames < f (f <= `visible_frames`: the cache is read
    through a static slice of that many frames); written back when free-running."""
    f, temperature = xs
    b, num_tokens = self.batch, self.num_tokens
    positions = (jnp.asarray(sequence.frame_positions([0], self.h, self.w))
                 + jnp.array([1, 0, 0]) * f)
    slots = visible_frames * num_tokens
    cache = {name: a[:, :, :slots] for name, a in state.kv_cache.items()}
    slot_frame = jnp.repeat(jnp.arange(visible_frames), num_tokens)  # frame of every slot
    # Keys: the cache slots (visible iff written, i.e. of a frame < f), then the frame itself.
    attn_mask = jnp.concatenate([
        jnp.broadcast_to(slot_frame < f, (num_tokens, slots)),
        jnp.ones((num_tokens, num_tokens), bool)], axis=1)
    transformer_fn = lambda tokens, is_masked: self.run(
        tokens, is_masked, positions, attn_mask, kv_cache=cache)
    tokens, counts = self.sample_frame(jax.random.fold_in(rng, f), temperature, transformer_fn)
    if not write_back:
      return state, (tokens, counts)
    context = as_context(tokens, self.settings, jax.random.fold_in(rng, f))
    _, kv = self.run(context, jnp.zeros((b, num_tokens), bool), positions, attn_mask,
                     kv_cache=cache, return_kv=True)  # the finished frame once more
    return state.replace(kv_cache=_write_kv(state.kv_cache, kv, f * num_tokens)), (tokens,
                                                                                    counts)

  # ---- Mode no_cache.
  def prefill_without_cache(self, given) -> DecodeState:
    """The clip every step runs on: `given` [B, n, N, C] then zero (masked) frames, or the
    whole true clip when teacher-forced (never overwritten)."""
    b, n, num_tokens, c = given.shape
    return DecodeState(video=jnp.concatenate(
        [given, jnp.zeros((b, self.num_frames - n, num_tokens, c), given.dtype)], 1))

  def frame_without_cache(self, state: DecodeState, xs, *, rng, write_back: bool):
    f, temperature = xs
    b, num_tokens, t_total, c = self.batch, self.num_tokens, self.num_frames, self.channels
    video = state.video
    positions = sequence.frame_positions(range(t_total), self.h, self.w)
    causal_mask = sequence.frame_causal_mask(t_total, num_tokens)
    key_frame = jnp.repeat(jnp.arange(t_total), num_tokens)
    later = (jnp.arange(t_total) > f)[None, :, None]  # unseen by frame f (causality)
    keys = _no_cache_keys(self.temporal, self.loss_mode)
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
      z = self.run(seq.reshape(b, -1, c), masked.reshape(b, -1), positions, attn_mask)
      z = z.reshape(z.shape[0], t_total, num_tokens, -1)
      return jax.lax.dynamic_index_in_dim(z, f, axis=1, keepdims=False)

    tokens, counts = self.sample_frame(jax.random.fold_in(rng, f), temperature, transformer_fn)
    if write_back:
      context = as_context(tokens, self.settings, jax.random.fold_in(rng, f))
      video = jax.lax.dynamic_update_slice(video, context[:, None], (0, f, 0, 0))
    return state.replace(video=video), (tokens, counts)


def cache_groups(frames: np.ndarray, num_frames: int, slicing: str):
  """[(visible_frames, frames)]: the frames to generate (ascending) grouped by the static
  cache slice they read (see CACHE_SLICING); frame f needs at least f frames of it."""
  if slicing == "none":
    return [(num_frames, frames)]
  if slicing == "frame":
    bounds = frames
  else:
    bounds = np.minimum(2 ** np.ceil(np.log2(frames)).astype(int), num_frames - 1)
  return [(int(bound), frames[bounds == bound]) for bound in np.unique(bounds)]


def _write_kv(cache: dict, kv: dict, slot) -> dict:
  """`kv` ({"k", "v"} [layers, batch, S, heads, head_dim]) written into `cache` from
  sequence slot `slot` on, in place, the result laid out by `KV_CACHE_AXES`."""
  return {name: constrain(jax.lax.dynamic_update_slice(
      cache[name], kv[name].astype(cache[name].dtype), (0, 0, slot, 0, 0)), KV_CACHE_AXES)
          for name in cache}


def _no_cache_keys(temporal_attention: str, loss_mode: str) -> str:
  """Which frames the no-cache pass at frame f attends to, as the model was trained:
  'causal' (frame-causal mask), 'up_to_current' (bidirectional, frames <= f: the paper
  loss never shows later frames) or 'all' (bidirectional over the whole clip, later frames
  fully masked: the `mar` loss)."""
  if temporal_attention == "causal":
    return "causal"
  return "all" if loss_mode == "mar" else "up_to_current"
