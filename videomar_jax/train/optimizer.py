"""AdamW with MAR/VideoMAR's settings.

lr = base_lr * batch_size / 256 (or an explicit `optim.lr`), linear warmup then constant or
cosine decay, global-norm gradient clipping, weight decay only on weight matrices: biases,
norm scales, the mask token, the null context, embeddings tables and the modulation tables
are not decayed.
"""

import jax
import ml_collections
import optax

from videomar_jax.errors import ConfigError

# Parameter names (last path entry) that never get weight decay besides biases and norms.
NO_DECAY_NAMES = ("bias", "scale", "mask_token", "fake_latent", "class_emb",
                  "scale_shift_table")


def learning_rate(optim: ml_collections.ConfigDict, batch_size: int) -> float:
  return optim.lr if optim.lr > 0 else optim.base_lr * batch_size / 256


def lr_schedule(optim: ml_collections.ConfigDict, batch_size: int,
                total_steps: int) -> optax.Schedule:
  """Linear warmup from 0, then constant or cosine decay to 0 at `total_steps`."""
  peak = learning_rate(optim, batch_size)
  warmup = optax.linear_schedule(0.0, peak, max(optim.warmup_steps, 1))
  if optim.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif optim.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, max(total_steps - optim.warmup_steps, 1))
  else:
    raise ConfigError(f"optim.schedule {optim.schedule!r} not in ('constant', 'cosine').")
  return optax.join_schedules([warmup, after], [optim.warmup_steps])


def decay_mask(params) -> dict:
  """True for the parameters that get weight decay: weight matrices only."""
  def wants_decay(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    return name not in NO_DECAY_NAMES and leaf.ndim >= 2
  return jax.tree_util.tree_map_with_path(wants_decay, params)


def make_optimizer(optim: ml_collections.ConfigDict, batch_size: int,
                   total_steps: int) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(optim.grad_clip),
      optax.adamw(lr_schedule(optim, batch_size, total_steps), b1=optim.b1, b2=optim.b2,
                  weight_decay=optim.weight_decay, mask=decay_mask))
