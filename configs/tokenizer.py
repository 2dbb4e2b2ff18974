"""Tokenizer training config: `--config=configs/tokenizer.py:<variant>`.

Trains a Cosmos continuous video tokenizer from scratch on reconstruction (L2, optionally
L1 and a temporal-difference term). The default is a narrow variant sized for CPU on the
built-in bouncing-balls clips; `CV4x8x8`, `CV8x8x8` and `CV8x16x16` are the released
architectures (train them on your own data on accelerators). Example::

  videomar tokenizer train --config=configs/tokenizer.py:CV4x8x8-narrow --workdir=/tmp/tok
      # 4000 steps of batch 8, about 7 minutes on a 2-core CPU

The result is a tokenizer directory in `<workdir>/tokenizer` for `--config.tokenizer.
checkpoint=...` of a VideoMAR run and for `videomar data encode --tokenizer=...`.
"""

import ml_collections


def get_config(arg: str = "CV4x8x8-narrow") -> ml_collections.ConfigDict:
  # pylint: disable=import-outside-toplevel
  from videomar_jax.tokenizers.cosmos import get_variant
  variant = arg or "CV4x8x8-narrow"
  network = get_variant(variant)  # raises, listing the known variants

  config = ml_collections.ConfigDict()
  config.variant = variant
  config.dtype = "float32"  # compute dtype (parameters stay float32)
  config.seed = 0
  config.num_devices = 0  # data parallel over this many local devices (0 = all)

  # Clips: (1 + k * temporal_stride) frames, so every latent frame is fully used.
  config.num_frames = 1 + 2 * network.temporal_stride
  config.resolution = 32
  config.batch_size = 8
  config.steps = 4000

  # ---- Data: the built-in bouncing balls (as in configs/videomar.py).
  config.data = ml_collections.ConfigDict()
  config.data.dataset = "bouncing_balls"
  config.data.data_dir = ""  # "" = <workdir>/data
  config.data.num_train_clips = 1024
  config.data.num_test_clips = 64
  config.data.num_frames = max(16, 1 + 2 * network.temporal_stride)
  config.data.resolution = 32
  config.data.num_balls = 2
  config.data.worker_count = 0

  # ---- Reconstruction loss: l1 |x^ - x| + l2 (x^ - x)^2 + temporal |dx^/dt - dx/dt|.
  # No L1 by default: on the built-in clips (a few small balls on black) the per-pixel
  # median is black, and L1 holds the reconstruction there. On this data, after 2000
  # steps at lr 3e-3, L2 alone reached 20.9 dB held-out PSNR and L1 + L2 17.4 dB (an
  # all-black video scores 15.8 dB). Cosmos itself trains with L1 on natural video.
  config.loss = ml_collections.ConfigDict()
  config.loss.l1_weight = 0.0
  config.loss.l2_weight = 1.0
  config.loss.temporal_weight = 0.0

  # ---- Optimiser (train/optimizer.py: AdamW, warmup, cosine decay, clipping).
  config.optim = ml_collections.ConfigDict()
  # L2 alone, 1000 steps: 17.5 dB held-out PSNR at lr 1e-3, 18.2 dB at 3e-3.
  config.optim.lr = 3e-3
  config.optim.base_lr = 0.0  # unused when lr > 0
  config.optim.warmup_steps = 100
  config.optim.schedule = "cosine"
  config.optim.b1 = 0.9
  config.optim.b2 = 0.99
  config.optim.weight_decay = 0.0
  config.optim.grad_clip = 1.0

  # ---- Loop.
  config.train = ml_collections.ConfigDict()
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 2
  # A jax.profiler trace of steps start+1..stop into <workdir>/profile, e.g.
  # `--config.train.profile_steps=10,15` (train/profiling.py); () = no trace.
  config.train.profile_steps = ()

  # ---- Held-out evaluation and export.
  config.eval = ml_collections.ConfigDict()
  config.eval.num_clips = 32
  # Latent scale written with the tokenizer (what VideoMAR multiplies latents by);
  # 0 = 1 / std of the held-out latents, so that the generator sees unit variance.
  config.latent_scale = 0.0
  # Locked: a config file built from this one that misspells a key fails there, not
  # silently (existing keys can still be changed).
  config.lock()
  return config
