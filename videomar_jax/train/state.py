"""The train state pytree and the jitted training step."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from videomar_jax.losses import next_frame
from videomar_jax.models import sequence
from videomar_jax.tokenizers.base import video_to_tokens


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and replaces; saved whole in checkpoints."""
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any  # float32 master weights
  opt_state: Any
  ema_params: Any  # exponential moving average of params (used for sampling)
  rng: jax.Array  # the run's base key; step keys are fold_in(rng, step)


def create_state(model, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
  init_rng, run_rng = jax.random.split(jax.random.key(seed))
  params = model.init(init_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    rng=jax.random.key_data(run_rng))


def make_train_step(model, tokenizer, optimizer: optax.GradientTransformation,
                    ema_decay: float, loss_settings: next_frame.LossSettings):
  """Returns `train_step(state, batch) -> (state, metrics)` (pure; jit it with donation).

  `batch` holds `video` (uint8 pixels, tokenized inside the step) or `latents`
  ([B, T, h, w, C], already tokenized; then `tokenizer` may be None). `loss_settings`:
  `next_frame.LossSettings.from_config(config)`.
  """

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if "latents" in batch:
      p = model.config.model.patch_size
      tokens = sequence.patchify(batch["latents"].astype(jnp.float32), p)
      h, w = batch["latents"].shape[2] // p, batch["latents"].shape[3] // p
    else:
      tokens, (h, w) = video_to_tokens(tokenizer, batch["video"], model.config.model.patch_size)

    def loss_fn(params):
      return next_frame.next_frame_loss(model, params, tokens, rng, loss_settings, h=h, w=w,
                                        context=batch.get("context"),
                                        context_mask=batch.get("context_mask"))

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA with the usual warmup (decay (1 + n) / (10 + n) until it reaches ema_decay), so
    # that short runs do not sample from weights still dominated by the initialisation.
    n = state.step.astype(jnp.float32)
    decay = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
    ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p,
                                 state.ema_params, params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema), metrics

  return train_step
