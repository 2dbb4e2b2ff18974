"""Next-frame diffusion loss, in three modes.

`paper`: per sample a target frame k in [n_cond, T-1]; frames before k are clean, frame k is
  masked at ratio r ~ truncated normal on [mask_ratio_min, 1] (mean 1, std 0.25), ceil(N*r)
  tokens in a random per-sample order. Thanks to frame-causal attention the whole clip runs
  at once; frames after k cannot influence frame k, and only frame k's masked tokens carry
  loss.
`mar`: no next-frame loss (the paper's ablation baseline, MAR's masking applied to a whole
  clip): every frame after the n_cond given ones is masked at one ratio r per sample
  (ceil(r * N * (T - n_cond)) tokens of those frames, in a random order), all in one
  sequence; the loss covers every masked token of every frame.
`all_frames`: one sequence holding the clean frames 0..T-2 (context stream) and masked copies
  of frames n_cond..T-1 (target stream, see `models/sequence.py`). The target copy of frame j
  sees clean frames < j and itself, exactly the conditional of the paper's loss for k = j,
  so every frame after the given ones is supervised in one forward pass.

The loss is MAR's: each (z, target) pair is repeated `diffusion_batch_mul` times with
independent diffusion timesteps and noise, and the per-token diffusion loss is averaged over
the masked tokens. As in MAR the head runs on every token of the target frame(s) with the
visible ones weighted 0: the masked count varies per sample and shapes must stay static (at
mask_ratio_min = 0.7 at least 70% of that work is used).

Context corruption (beyond the paper; off by default): at sampling time every context
frame after the given ones is the model's own imperfect output, while training only ever
shows it true frames. With `loss.context_noise` > 0 (and/or `loss.context_fade` > 0) each
sample's context frames after the `num_cond_frames` given ones get Gaussian noise of a std
drawn uniformly from [0, context_noise] (and are blended towards their frame's mean token by
a factor drawn from [0, context_fade], and/or have each token replaced by that mean token
with a probability drawn from [0, context_token_drop]: the missing fragments of an imperfect
frame) before the transformer sees them; targets stay clean, so the model learns to draw a
clean frame from a degraded past.

Own-frame context (beyond the paper; off by default; all_frames mode): corruption by
formula does not look like the model's own mistakes (misplaced fragments, mixed colours,
speckle). With `loss.own_context_prob` > 0 a first, gradient-free pass predicts every
supervised frame from the true frames before it with all of its tokens masked, the head
samples those tokens in `loss.own_context_steps` denoising steps, and for that fraction of
the samples these predictions replace the context frames after the given ones in the pass
that carries the loss (scheduled sampling, one frame deep). Targets stay clean.

Temporal attention (`model.temporal_attention`): `causal` (the paper's: a frame sees itself
and earlier frames) or `bidirectional` (the paper's ablation: frames see each other both
ways; in `paper` mode the frames after the target frame k are still left out, since they
would show the answer; `all_frames` needs causal attention, and so does the KV cache).

All randomness is drawn up front into `LossDraws`, so tests can fix masks and noise.
"""

import dataclasses
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videomar_jax.diffusion import gaussian
from videomar_jax.errors import ConfigError
from videomar_jax.models import sequence

TEMPORAL_ATTENTION = ("causal", "bidirectional")


@flax.struct.dataclass
class LossDraws:
  """The random choices of one loss evaluation. F' = 1 (paper) or T - n_cond (all_frames)."""
  target_frame: jax.Array  # [B] int32, the paper mode's frame k (other modes: n_cond)
  token_mask: jax.Array  # [B, F', N] bool, True = masked (predicted, carries loss)
  # F' = 1 (paper) or T - n_cond (all_frames, mar)
  timesteps: jax.Array  # [mul, B, F', N] int32 diffusion timesteps
  noise: jax.Array  # [mul, B, F', N, C] float32 diffusion noise
  drop_context: jax.Array  # [B] bool, True = use the null context
  context_noise: jax.Array | None = None  # [B, T, N, C] corruption noise of context frames
  noise_std: jax.Array | None = None  # [B] std of that noise (0 = clean context)
  fade: jax.Array | None = None  # [B] blend of context frames towards their mean token
  token_drop: jax.Array | None = None  # [B, T, N] bool: context token -> frame mean token
  own_context: jax.Array | None = None  # [B] bool: context frames = the model's predictions
  own_context_rng: jax.Array | None = None  # PRNG key of that prediction's head sampling


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """Everything the loss reads, taken from a VideoMAR config once (`from_config`), so the
  loss does not reach into the model's config. Hashable: a static argument of the step."""
  mode: str = "paper"
  num_cond_frames: int = 1
  mask_ratio_min: float = 0.7
  mask_ratio_std: float = 0.25
  context_noise: float = 0.0
  context_fade: float = 0.0
  context_token_drop: float = 0.0
  own_context_prob: float = 0.0
  own_context_steps: int = 10
  diffusion_batch_mul: int = 4
  context_drop_prob: float = 0.0  # classifier-free guidance: p(null context) in training
  temporal_attention: str = "causal"

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "LossSettings":
    loss = config.loss
    return cls(
        mode=loss.mode, num_cond_frames=loss.num_cond_frames,
        mask_ratio_min=loss.mask_ratio_min, mask_ratio_std=loss.mask_ratio_std,
        context_noise=loss.get("context_noise", 0.0),
        context_fade=loss.get("context_fade", 0.0),
        context_token_drop=loss.get("context_token_drop", 0.0),
        own_context_prob=loss.get("own_context_prob", 0.0),
        own_context_steps=loss.get("own_context_steps", 10),
        diffusion_batch_mul=config.head.diffusion_batch_mul,
        context_drop_prob=(config.model.context.drop_prob
                           if config.model.context.kind != "none" else 0.0),
        temporal_attention=temporal_attention(config))

  def get(self, name: str, default=None):
    """ConfigDict-style access, so `draw` and `check_config` take either."""
    return getattr(self, name, default)


def random_token_mask(rng: jax.Array, num_masked: jax.Array, num_tokens: int) -> jax.Array:
  """[B] counts -> [B, N] mask with that many tokens masked at random positions."""
  scores = jax.random.uniform(rng, (num_masked.shape[0], num_tokens))
  ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)  # a random order per sample
  return ranks < num_masked[:, None]


def sample_mask_ratio(rng: jax.Array, shape, minimum: float, std: float) -> jax.Array:
  """Truncated normal on [minimum, 1] with mean 1 and std `std` (MAR's mask ratio law)."""
  return 1.0 + std * jax.random.truncated_normal(rng, (minimum - 1.0) / std, 0.0, shape)


def num_supervised_frames(mode: str, num_frames: int, num_cond: int) -> int:
  """Latent frames whose masked tokens carry loss (F' of `LossDraws`)."""
  return loss_mode(mode).supervised_frames(num_frames, num_cond)


def check_modes(mode: str, temporal_attention: str) -> None:
  entry = loss_mode(mode)
  if temporal_attention not in TEMPORAL_ATTENTION:
    raise ConfigError(f"model.temporal_attention {temporal_attention!r} not in "
                     f"{TEMPORAL_ATTENTION}.")
  if entry.needs_causal and temporal_attention != "causal":
    raise ConfigError(f"loss.mode {mode!r} needs model.temporal_attention 'causal' "
                      f"({entry.needs_causal}).")


def check_config(loss_config: ml_collections.ConfigDict, temporal_attention: str,
                 num_frames: int | None = None) -> None:
  """Every `config.loss` setting the loss would reject, checked before anything is built
  (`num_frames`: latent frames of a clip, when known)."""
  mode, n_cond = loss_config.mode, loss_config.num_cond_frames
  check_modes(mode, temporal_attention)
  if n_cond < 1 or (num_frames is not None and n_cond >= num_frames):
    bound = f" < num_frames={num_frames} latent frames" if num_frames is not None else ""
    raise ConfigError(f"loss.num_cond_frames={n_cond} needs 1 <= n_cond{bound}.")
  if not 0 <= loss_config.mask_ratio_min <= 1:
    raise ConfigError(f"loss.mask_ratio_min={loss_config.mask_ratio_min} must be in [0, 1].")
  noise_max = loss_config.get("context_noise", 0.0)
  fade_max = loss_config.get("context_fade", 0.0)
  drop_max = loss_config.get("context_token_drop", 0.0)
  if noise_max < 0 or not 0 <= fade_max <= 1 or not 0 <= drop_max <= 1:
    raise ConfigError(f"loss.context_noise={noise_max} must be >= 0, loss.context_fade="
                      f"{fade_max} and loss.context_token_drop={drop_max} in [0, 1].")
  own_prob = loss_config.get("own_context_prob", 0.0)
  if not 0 <= own_prob <= 1:
    raise ConfigError(f"loss.own_context_prob={own_prob} must be in [0, 1].")
  if own_prob > 0:
    if not loss_mode(mode).own_context:
      own_modes = [name for name, m in _LOSS_MODES.items() if m.own_context]
      raise ConfigError(f"loss.own_context_prob > 0 needs loss.mode in {own_modes}, not "
                        f"{mode!r}.")
    if loss_config.get("own_context_steps", 0) < 1:
      raise ConfigError("loss.own_context_steps must be >= 1 when loss.own_context_prob > 0.")


def draw(rng: jax.Array, loss_config: ml_collections.ConfigDict, *, batch_size: int,
         num_frames: int, tokens_per_frame: int, token_dim: int, diffusion_batch_mul: int,
         num_timesteps: int, context_drop_prob: float = 0.0) -> LossDraws:
  """Draws target frames, masks, diffusion timesteps and noise, and context drops."""
  mode, n_cond = loss_config.mode, loss_config.num_cond_frames
  check_config(loss_config, "causal", num_frames)
  b, n, mul = batch_size, tokens_per_frame, diffusion_batch_mul
  f = num_supervised_frames(mode, num_frames, n_cond)
  keys = jax.random.split(rng, 6)
  entry = loss_mode(mode)
  target_frame = jax.random.randint(keys[0], (b,), n_cond, num_frames)
  if not entry.random_target_frame:
    target_frame = jnp.full((b,), n_cond, jnp.int32)
  if entry.one_ratio_over_frames:  # one ratio over all the predicted frames' tokens
    ratio = sample_mask_ratio(keys[1], (b,), loss_config.mask_ratio_min,
                              loss_config.mask_ratio_std)
    num_masked = jnp.clip(jnp.ceil(f * n * ratio).astype(jnp.int32), 1, f * n)
    token_mask = random_token_mask(keys[2], num_masked, f * n).reshape(b, f, n)
  else:
    ratio = sample_mask_ratio(keys[1], (b * f,), loss_config.mask_ratio_min,
                              loss_config.mask_ratio_std)
    num_masked = jnp.clip(jnp.ceil(n * ratio).astype(jnp.int32), 1, n)
    token_mask = random_token_mask(keys[2], num_masked, n).reshape(b, f, n)
  timesteps = jax.random.randint(keys[3], (mul, b, f, n), 0, num_timesteps)
  noise = jax.random.normal(keys[4], (mul, b, f, n, token_dim))
  drop_context = jax.random.bernoulli(keys[5], context_drop_prob, (b,))
  draws = LossDraws(target_frame, token_mask, timesteps, noise, drop_context)
  noise_max = loss_config.get("context_noise", 0.0)
  fade_max = loss_config.get("context_fade", 0.0)
  drop_max = loss_config.get("context_token_drop", 0.0)
  if noise_max > 0 or fade_max > 0 or drop_max > 0:
    corrupt = jax.random.split(jax.random.fold_in(rng, 7), 5)
    drop_prob = drop_max * jax.random.uniform(corrupt[3], (b, 1, 1))
    draws = draws.replace(
        context_noise=jax.random.normal(corrupt[0], (b, num_frames, n, token_dim)),
        noise_std=noise_max * jax.random.uniform(corrupt[1], (b,)),
        fade=fade_max * jax.random.uniform(corrupt[2], (b,)),
        token_drop=jax.random.uniform(corrupt[4], (b, num_frames, n)) < drop_prob)
  own_prob = loss_config.get("own_context_prob", 0.0)
  if own_prob > 0:
    own = jax.random.split(jax.random.fold_in(rng, 8))
    draws = draws.replace(own_context=jax.random.bernoulli(own[0], own_prob, (b,)),
                          own_context_rng=own[1])
  return draws


def corrupt_context(tokens: jax.Array, draws: LossDraws, num_cond: int) -> jax.Array:
  """Clean tokens [B, T, N, C] -> the transformer's view of them as context: frames >=
  num_cond faded towards their mean token and noised as `draws` say (unchanged when the
  draws carry no corruption)."""
  if draws.noise_std is None:
    return tokens
  fade = draws.fade[:, None, None, None]
  mean = jnp.mean(tokens, axis=2, keepdims=True)
  faded = tokens + fade * (mean - tokens)
  faded = jnp.where(draws.token_drop[..., None], mean, faded)
  noisy = faded + draws.noise_std[:, None, None, None] * draws.context_noise
  later = (jnp.arange(tokens.shape[1]) >= num_cond)[None, :, None, None]
  return jnp.where(later, noisy, tokens)


def own_predictions(model, params, tokens: jax.Array, draws: LossDraws, *, num_cond: int,
                    num_steps: int, positions, attn_mask, context=None, context_mask=None):
  """The model's own guess of every frame n_cond..T-2 from the true frames before it:
  the all-frames sequence with every target token masked, each token sampled by the head in
  `num_steps` denoising steps (temperature 1). No gradient flows through it. Returns
  [B, T - 1 - n_cond, N, C]."""
  b, t, n, c = tokens.shape
  params = jax.lax.stop_gradient(params)
  seq = jnp.concatenate([tokens[:, :t - 1], tokens[:, num_cond:]], axis=1)
  is_masked = jnp.concatenate([jnp.zeros((b, t - 1, n), bool),
                               jnp.ones((b, t - num_cond, n), bool)], axis=1)
  z = model.encode(params, seq.reshape(b, -1, c), is_masked.reshape(b, -1), positions,
                   attn_mask, context, context_mask, draws.drop_context)
  z = z.reshape(b, -1, n, z.shape[-1])[:, t - 1:2 * t - 2 - num_cond]  # frames n_cond..T-2
  schedule = gaussian.make_schedule(model.train_schedule.num_timesteps,
                                    model.config.head.noise_schedule, respacing=num_steps)
  rng_noise, rng_steps = jax.random.split(draws.own_context_rng)
  flat_z = z.reshape(-1, z.shape[-1])
  noise = jax.random.normal(rng_noise, (flat_z.shape[0], c), tokens.dtype)
  x = gaussian.p_sample_loop(schedule, model.head_fn(params, flat_z), noise, rng_steps)
  return jax.lax.stop_gradient(x.reshape(z.shape[:-1] + (c,)).astype(tokens.dtype))


def sequence_frames(mode: str, num_frames: int, num_cond: int):
  """(frame index, is_target) of every frame of the training sequence, static NumPy."""
  return loss_mode(mode).sequence_frames(num_frames, num_cond)


def sequence_layout(mode: str, num_frames: int, num_cond: int, h: int, w: int,
                    temporal_attention: str = "causal"):
  """Static (positions [S, 3], attention mask) of the training sequence. The mask is [S, S]
  or a `FrameBlockMask` of the same meaning (see `sequence.frame_block_mask`; for
  bidirectional attention: all ones; `paper` mode then cuts the frames after the target
  per sample, see `conditions_and_targets`)."""
  check_modes(mode, temporal_attention)
  frames, is_target = sequence_frames(mode, num_frames, num_cond)
  n = h * w
  if temporal_attention == "bidirectional":
    mask = jnp.ones((len(frames) * n, len(frames) * n), bool)
  else:  # computed block by block (all_frames at 8 frames: 81 of 196 frame blocks)
    mask = sequence.frame_block_mask(frames, is_target, n)
  return sequence.frame_positions(frames, h, w), mask


def conditions_and_targets(model, params, tokens: jax.Array, draws: LossDraws, *, mode: str,
                           num_cond: int, h: int, w: int, context=None, context_mask=None,
                           temporal_attention: str = "causal", own_context_steps: int = 10):
  """Runs the transformer; returns (z [B, F', N, D], targets [B, F', N, C]) of the
  supervised frames. tokens: [B, T, N, C] clean tokens of the clip. `own_context_steps`:
  the head's denoising steps of the own-frame context (used when the draws ask for it)."""
  b, t, n, c = tokens.shape
  if n != h * w:
    raise ValueError(f"tokens have {n} per frame, expected h*w = {h}*{w}.")
  positions, attn_mask = sequence_layout(mode, t, num_cond, h, w, temporal_attention)
  context_view = corrupt_context(tokens, draws, num_cond)
  own_context = lambda: own_predictions(
      model, params, tokens, draws, num_cond=num_cond, num_steps=own_context_steps,
      positions=positions, attn_mask=attn_mask, context=context, context_mask=context_mask)
  entry = loss_mode(mode)
  seq, is_masked, attn_mask = entry.inputs(
      tokens, context_view, draws, num_cond=num_cond, attn_mask=attn_mask,
      temporal_attention=temporal_attention, own_context=own_context)
  z = model.encode(params, seq.reshape(b, -1, c), is_masked.reshape(b, -1), positions,
                   attn_mask, context, context_mask, draws.drop_context)
  return entry.outputs(z.reshape(b, seq.shape[1], n, -1), tokens, draws, num_cond)


# ---- The loss modes: each says which frames its training sequence holds, which of them
# carry loss, how the clip becomes that sequence and where the supervised outputs are.
# `inputs(tokens [B, T, N, C], context_view (tokens as context: corrupted if asked), draws,
# *, num_cond, attn_mask, temporal_attention, own_context (() -> the model's own guesses))
# -> (sequence [B, F, N, C], is_masked [B, F, N], attention mask)`;
# `outputs(z [B, F, N, D], tokens, draws, num_cond) -> (z, targets) [B, F', N, .]`.
@dataclasses.dataclass(frozen=True)
class LossMode:
  name: str
  sequence_frames: Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (T, n_cond)
  supervised_frames: Callable[[int, int], int]  # (T, n_cond) -> F'
  inputs: Callable[..., tuple]
  outputs: Callable[..., tuple]
  random_target_frame: bool = False  # draw the supervised frame per sample (`paper`)
  one_ratio_over_frames: bool = False  # one mask ratio over all supervised frames (`mar`)
  needs_causal: str = ""  # why it needs causal temporal attention ("" = it does not)
  own_context: bool = False  # supports loss.own_context_prob


def _clip_frames(num_frames: int, num_cond: int):
  del num_cond
  return np.arange(num_frames), np.zeros(num_frames, bool)


def _paper_inputs(tokens, context_view, draws, *, num_cond, attn_mask, temporal_attention,
                  own_context):
  del num_cond, own_context
  t, n = tokens.shape[1], tokens.shape[2]
  is_target_frame = jnp.arange(t)[None, :] == draws.target_frame[:, None]  # [B, T]
  is_masked = is_target_frame[:, :, None] & draws.token_mask  # mask only frame k
  # The target frame's visible tokens are this frame's own, as when sampling: clean.
  seq = jnp.where(is_target_frame[:, :, None, None], tokens, context_view)
  if temporal_attention == "bidirectional":  # nobody sees the frames after k
    key_frame = jnp.repeat(jnp.arange(t), n)
    attn_mask = attn_mask[None] & (key_frame[None, None, :] <=
                                   draws.target_frame[:, None, None])
  return seq, is_masked, attn_mask


def _paper_outputs(z, tokens, draws, num_cond):
  del num_cond
  pick = draws.target_frame[:, None, None, None]
  return jnp.take_along_axis(z, pick, axis=1), jnp.take_along_axis(tokens, pick, axis=1)


def _mar_inputs(tokens, context_view, draws, *, num_cond, attn_mask, temporal_attention,
                own_context):
  """The given frames clean, the later ones masked in place."""
  del context_view, temporal_attention, own_context
  b, _, n, _ = tokens.shape
  is_masked = jnp.concatenate([jnp.zeros((b, num_cond, n), bool), draws.token_mask], 1)
  return tokens, is_masked, attn_mask


def _mar_outputs(z, tokens, draws, num_cond):
  del draws
  return z[:, num_cond:], tokens[:, num_cond:]


def _all_frames_sequence(num_frames: int, num_cond: int):
  frames = np.concatenate([np.arange(num_frames - 1), np.arange(num_cond, num_frames)])
  return frames, np.arange(len(frames)) >= num_frames - 1


def _all_frames_inputs(tokens, context_view, draws, *, num_cond, attn_mask,
                       temporal_attention, own_context):
  """Clean frames 0..T-2 (the context stream), then masked copies of frames n_cond..T-1."""
  del temporal_attention
  b, t, n, _ = tokens.shape
  context_view = context_view[:, :t - 1]
  if draws.own_context is not None and t - 1 > num_cond:
    own = jnp.concatenate([tokens[:, :num_cond], own_context()], axis=1)
    context_view = jnp.where(draws.own_context[:, None, None, None], own, context_view)
  seq = jnp.concatenate([context_view, tokens[:, num_cond:]], axis=1)
  is_masked = jnp.concatenate([jnp.zeros((b, t - 1, n), bool), draws.token_mask], axis=1)
  return seq, is_masked, attn_mask


def _all_frames_outputs(z, tokens, draws, num_cond):
  del draws
  return z[:, tokens.shape[1] - 1:], tokens[:, num_cond:]


_LOSS_MODES: dict[str, LossMode] = {}


def register_loss_mode(mode: LossMode) -> None:
  """Adds a loss mode (`config.loss.mode = mode.name`)."""
  if mode.name in _LOSS_MODES:
    raise ValueError(f"loss mode {mode.name!r} is already registered")
  _LOSS_MODES[mode.name] = mode


def loss_mode(name: str) -> LossMode:
  if name not in _LOSS_MODES:
    raise ConfigError(f"loss.mode {name!r} not in {tuple(_LOSS_MODES)}.")
  return _LOSS_MODES[name]


register_loss_mode(LossMode(
    "paper", _clip_frames, lambda t, n_cond: 1, _paper_inputs, _paper_outputs,
    random_target_frame=True))
register_loss_mode(LossMode(
    "all_frames", _all_frames_sequence, lambda t, n_cond: t - n_cond, _all_frames_inputs,
    _all_frames_outputs, own_context=True,
    needs_causal="its clean stream would otherwise show every frame's answer"))
register_loss_mode(LossMode(
    "mar", _clip_frames, lambda t, n_cond: t - n_cond, _mar_inputs, _mar_outputs,
    one_ratio_over_frames=True))


def per_token_losses(model, params, tokens, draws: LossDraws, *, mode, num_cond, h, w,
                     context=None, context_mask=None, temporal_attention: str = "causal",
                     own_context_steps: int = 10) -> jax.Array:
  """Diffusion loss of every token of the supervised frames, [mul, B, F', N]."""
  z, targets = conditions_and_targets(model, params, tokens, draws, mode=mode,
                                      num_cond=num_cond, h=h, w=w, context=context,
                                      context_mask=context_mask,
                                      temporal_attention=temporal_attention,
                                      own_context_steps=own_context_steps)
  mul = draws.timesteps.shape[0]
  # Flatten batch-major ([B, mul, F', N] -> rows): with the batch split over devices, the
  # merged row axis keeps that split. Flattening mul-major would make every device run
  # the head on the whole global batch (found with `videomar plan`: 4x the temporaries).
  z = jnp.broadcast_to(z[:, None], (z.shape[0], mul) + z.shape[1:])
  targets = jnp.broadcast_to(targets[:, None], z.shape[:-1] + targets.shape[-1:])
  timesteps = jnp.swapaxes(draws.timesteps, 0, 1)
  noise = jnp.swapaxes(draws.noise, 0, 1)
  flat = lambda a: a.reshape(-1, a.shape[-1])
  losses = model.diffusion_losses(params, flat(z), flat(targets), timesteps.reshape(-1),
                                  flat(noise))
  return jnp.swapaxes(losses.reshape(timesteps.shape), 0, 1)  # back to [mul, B, F', N]


def temporal_attention(config) -> str:
  """`config.model.temporal_attention` ('causal' for configs saved before it existed)."""
  return config.model.get("temporal_attention", "causal")


def next_frame_loss(model, params, tokens: jax.Array, rng: jax.Array,
                    settings: LossSettings, *, h: int, w: int, context=None,
                    context_mask=None, train: bool = True):
  """The training loss: mean diffusion loss over the masked tokens of the target frame(s).

  tokens: [B, T, N, C] clean tokens of a clip (latents patchified, N = h * w).
  settings: `LossSettings.from_config(config)`.
  Returns (loss, aux) with aux = {"masked_fraction": ...}.
  """
  b, t, n, c = tokens.shape
  draws = draw(rng, settings, batch_size=b, num_frames=t, tokens_per_frame=n, token_dim=c,
               diffusion_batch_mul=settings.diffusion_batch_mul,
               num_timesteps=model.train_schedule.num_timesteps,
               context_drop_prob=settings.context_drop_prob if train else 0.0)
  losses = per_token_losses(model, params, tokens, draws, mode=settings.mode,
                            num_cond=settings.num_cond_frames, h=h, w=w, context=context,
                            context_mask=context_mask,
                            temporal_attention=settings.temporal_attention,
                            own_context_steps=settings.own_context_steps)
  weights = draws.token_mask.astype(jnp.float32)
  loss = jnp.sum(losses * weights[None]) / (losses.shape[0] * jnp.sum(weights))
  return loss, {"masked_fraction": jnp.mean(weights)}
