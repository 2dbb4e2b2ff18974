"""VideoMAR training config: `--config=configs/videomar.py:<preset>`.

Presets size the transformer and the diffusion head; the rest (data, curriculum, optimiser)
is shared and can be overridden from the command line, e.g.
`--config.batch_size=16 --config.optim.base_lr=2e-4`. The config is locked, so a misspelled
key is an error rather than a silently ignored setting.

The `paper` preset is the model of the paper (width 1536, depth 36, 24 heads, ~1.4B
parameters, Cosmos 16-channel latents, 1536-d text context of 300 tokens, diffusion head
of depth 3 and width 1024). The data and curriculum defaults here are the CPU-sized
built-in `bouncing_balls` set; paper-scale runs override `data`, `tokenizer` and `stages`.
"""

import dataclasses

import ml_collections

from videomar_jax.errors import ConfigError
from videomar_jax.parallel.rules import default_rules_config


@dataclasses.dataclass(frozen=True)
class ModelSize:
  width: int  # transformer width D
  depth: int  # transformer blocks
  num_heads: int
  head_width: int  # diffusion head width
  head_depth: int  # diffusion head residual blocks


# `tiny_long` is the `tiny` recipe trained longer (below).
MODEL_PRESETS = {
    "tiny": ModelSize(width=128, depth=4, num_heads=4, head_width=128, head_depth=2),
    "tiny_long": ModelSize(width=128, depth=4, num_heads=4, head_width=128, head_depth=2),
    "small": ModelSize(width=256, depth=6, num_heads=4, head_width=256, head_depth=3),
    "base": ModelSize(width=768, depth=12, num_heads=12, head_width=768, head_depth=3),
    "paper": ModelSize(width=1536, depth=36, num_heads=24, head_width=1024, head_depth=3),
    # `videomar bench sampler`'s default model: the `small` transformer with a narrow head,
    # so that, as in the paper's model, the transformer passes and not the head's denoising
    # steps carry the FLOPs of a generation (docs/benchmarks.md gives the split).
    "sampler_bench": ModelSize(width=256, depth=6, num_heads=4, head_width=64, head_depth=3),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  preset = arg or "tiny"
  if preset not in MODEL_PRESETS:
    raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}.")
  size = MODEL_PRESETS[preset]
  width, depth, num_heads = size.width, size.depth, size.num_heads
  head_width, head_depth = size.head_width, size.head_depth

  config = ml_collections.ConfigDict()
  config.preset = preset
  config.seed = 0

  # ---- Tokenizer: pixels -> latents [B, T, h, w, C] (already multiplied by latent_scale).
  # "patch" (parameter-free space-to-depth) or "cosmos" (a tokenizer directory written by
  # `videomar tokenizer convert|train`; variant and latent_channels size the model).
  config.tokenizer = ml_collections.ConfigDict()
  config.tokenizer.name = "patch"
  config.tokenizer.patch_size = 4  # patch only
  config.tokenizer.latent_scale = 1.0
  config.tokenizer.variant = ""  # cosmos: CV4x8x8, CV8x8x8, CV8x16x16 or a -narrow one
  config.tokenizer.latent_channels = 16  # cosmos
  config.tokenizer.checkpoint = ""  # cosmos: tokenizer directory
  config.tokenizer.dtype = ""  # cosmos: compute dtype ("" = as stored)

  # ---- Transformer.
  config.model = ml_collections.ConfigDict()
  config.model.width = width
  config.model.depth = depth
  config.model.num_heads = num_heads
  config.model.mlp_ratio = 4
  config.model.patch_size = 1  # latents -> tokens; the patch tokenizer already patchifies.
  # Channels of each head given to the (t, h, w) RoPE axes; () = (hd/2, hd/4, hd/4).
  config.model.rope_split = ()
  config.model.rope_base = 10000.0
  # > 0: a learned (row, column) position table of this many tokens a side, added to the
  # tokens as MAR does (beyond the paper, which has RoPE only). Small heads get too few RoPE
  # frequencies to locate a token absolutely (docs/experiments.md).
  config.model.pos_embed_size = 0
  # "causal" (the paper's: frames see themselves and earlier frames; the KV-cached sampler
  # needs it) or "bidirectional" (the paper's ablation; samples with --mode=no_cache).
  config.model.temporal_attention = "causal"
  config.model.dtype = "float32"  # computation dtype; parameters stay float32.
  config.model.scan_layers = True
  config.model.remat_policy = "none"  # none | full | dots
  # Self-attention queries per block (0 = all at once). Blocks bound the score matrix to
  # [B, H, chunk, S] instead of [B, H, S, S]: the paper's 25600-token clips need it.
  config.model.attention_chunk = 0
  # Who computes attention: auto (cuDNN flash attention on a GPU in bf16, XLA elsewhere,
  # both through jax.nn.dot_product_attention) | xla | cudnn | reference (plain einsums).
  config.model.attention_impl = "auto"
  # Optional cross-attention context: none | class | text.
  config.model.context = ml_collections.ConfigDict()
  config.model.context.kind = "none"
  config.model.context.num_classes = 0
  config.model.context.dim = 0  # text feature width Dc
  config.model.context.length = 0  # text tokens L
  config.model.context.drop_prob = 0.1  # replaced by the learned null context (CFG)

  # ---- Diffusion head, MAR's DiffLoss.
  config.head = ml_collections.ConfigDict()
  config.head.width = head_width
  config.head.depth = head_depth
  config.head.num_timesteps = 1000
  config.head.noise_schedule = "cosine"
  config.head.num_sampling_steps = 100
  config.head.diffusion_batch_mul = 4
  # Sampling: clip the predicted x_0 to [-c, c] at every denoising step (0 = MAR: latents
  # are unbounded). Pixel patches (tokenizer "patch") lie in [-1, 1].
  config.head.clip_denoised = 0.0

  # ---- Next-frame diffusion loss.
  config.loss = ml_collections.ConfigDict()
  config.loss.mode = "paper"  # paper | all_frames | mar (no next-frame loss, the ablation)
  config.loss.num_cond_frames = 1
  config.loss.mask_ratio_min = 0.7
  config.loss.mask_ratio_std = 0.25
  # Beyond the paper (0 = off): corrupt the context frames after the given ones in training,
  # noise std ~ U[0, context_noise], blend towards the frame's mean token ~ U[0, context_fade],
  # tokens replaced by that mean with probability ~ U[0, context_token_drop], so that the
  # model meets its own imperfect frames as context (losses/next_frame.py).
  config.loss.context_noise = 0.0
  config.loss.context_fade = 0.0
  config.loss.context_token_drop = 0.0
  # Beyond the paper (0 = off; all_frames mode): for this fraction of the samples the context
  # frames after the given ones are the model's own gradient-free prediction of them (every
  # token masked, the head sampled in own_context_steps denoising steps), so that training
  # shows it the kind of frame it will condition on when generating (losses/next_frame.py).
  config.loss.own_context_prob = 0.0
  config.loss.own_context_steps = 10

  # ---- Data.
  config.data = ml_collections.ConfigDict()
  # "bouncing_balls" or "moving_mnist" (built in, pixels; configs/moving_mnist.py sets up the
  # latter), "folder" (your videos in `path`, built once into data_dir) or "latents": a cache
  # written once by `videomar data encode` (read from latents_dir; the tokenizer never runs
  # in the step).
  config.data.dataset = "bouncing_balls"
  config.data.data_dir = ""  # "" = <workdir>/data
  config.data.latents_dir = ""  # dataset "latents": the cache's directory
  # "latents": pick a cached mirrored copy half the time; "folder": mirror the training crops
  # half the time.
  config.data.random_flip = True
  # dataset "folder": a folder of MP4/WebM/MKV/AVI/MOV/GIF files and folders of numbered
  # PNG/JPEG frames, searched recursively; stored as clips of num_frames frames.
  config.data.path = ""
  config.data.frame_stride = 1  # "folder": keep every n-th frame of a video
  config.data.test_fraction = 0.1  # "folder": share of the files held out (>= 1 file of 2+)
  config.data.max_clips_per_file = 0  # "folder": clips taken from a file's start (0 = all)
  config.data.num_train_clips = 1024
  config.data.num_test_clips = 64
  config.data.num_frames = 16
  config.data.resolution = 32
  config.data.num_balls = 2  # bouncing_balls
  config.data.num_digits = 2  # moving_mnist
  config.data.worker_count = 0
  # Probability that a training crop starts at the clip's first frame rather than at a
  # random one (the built-in clips start with the balls at rest, as evaluation does).
  config.data.crop_first_frame_prob = 0.0

  # ---- Curriculum: stages run in order, each from the previous stage's weights
  # (short-to-long in frames, then progressive resolution). batch_size 0 = config.batch_size.
  config.batch_size = 16
  config.stages = [
      ml_collections.ConfigDict(dict(num_frames=4, resolution=32, steps=300, batch_size=0)),
      ml_collections.ConfigDict(dict(num_frames=8, resolution=32, steps=300, batch_size=0)),
  ]

  # ---- Optimiser.
  config.optim = ml_collections.ConfigDict()
  config.optim.base_lr = 1e-4  # per 256 examples: lr = base_lr * batch_size / 256
  config.optim.lr = 0.0  # > 0 overrides the batch-size scaling
  config.optim.warmup_steps = 50
  config.optim.schedule = "constant"  # constant | cosine (after warmup)
  config.optim.b1 = 0.9
  config.optim.b2 = 0.95
  config.optim.weight_decay = 0.02
  config.optim.grad_clip = 1.0
  config.optim.ema_decay = 0.999

  # ---- Loop, logging, checkpoints.
  # Devices: a (data, fsdp, tensor) mesh, -1 = the devices the other axes leave; and the
  # logical-axis rules placing parameters and activations on it (videomar_jax/parallel/).
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.mesh.num_devices = 0  # 0 = every device; n = the first n (one process only)
  config.sharding = ml_collections.ConfigDict()
  config.sharding.rules = default_rules_config()

  config.train = ml_collections.ConfigDict()
  config.train.log_every = 10
  config.train.checkpoint_every = 100
  config.train.keep_checkpoints = 3
  # A PyTorch checkpoint in the VideoMAR authors' layout (.safetensors/.pt) whose weights
  # initialise a fresh run (params and EMA); ignored when the run resumes. See interop/.
  config.train.init_from = ""
  # A JSON/YAML file of regex key renames applied to init_from's keys (`videomar torch keys`
  # shows what a file holds; see interop/keys.py).
  config.train.init_key_map = ""
  # Where Orbax writes checkpoints ("" = <workdir>/checkpoints). May be a gs:// URI (all
  # processes of a pod must see it); logs and reports stay in the local workdir.
  config.train.checkpoint_dir = ""
  # Write checkpoints in the background (Orbax async): training goes on while the arrays
  # are written. A save still waits for the one before it; the run waits for the last one
  # before it exits or stops for a preemption, and a failed write is reported there.
  config.train.async_checkpoint = False
  # Persistent XLA compilation cache: a restarted or resumed run loads its compiled programs
  # instead of compiling them again (minutes for a large model on a pod). "" =
  # <workdir>/compilation_cache; a path, or a URI such as gs://bucket/xla_cache (passed to
  # JAX as it is; shared by the hosts of a pod and by later runs); "none" = off. A
  # JAX_COMPILATION_CACHE_DIR environment variable wins over this setting.
  config.train.compilation_cache_dir = ""
  # > 0 (`videomar train`): every sample_every steps and at the last one, generate videos
  # from the first frame of sample_clips held-out clips (the stage's clip length, with
  # sample_steps unmasking steps per frame) with the EMA weights and write them to
  # TensorBoard (Images tab: samples/frames, a contact sheet, and samples/video, a GIF).
  # The time this takes is not counted in steps/s. 0 = off.
  config.train.sample_every = 0
  config.train.sample_clips = 4
  config.train.sample_steps = 16
  # A jax.profiler trace of a window of steps (train/profiling.py): (start, stop), e.g.
  # `--config.train.profile_steps=10,15`, traces steps start+1..stop into <workdir>/profile
  # (TensorBoard's profile plugin or xprof opens it); () = no trace.
  config.train.profile_steps = ()

  if preset in ("tiny", "tiny_long"):
    # The recipe of docs/experiments.md (r2_token_drop at lr 3e-3, batch 4, 4-frame clips
    # only: run r16, cut to 15 minutes), found on the built-in balls on a 2-core CPU.
    # Departures from the paper, each measured there: capacity moved from the head to the
    # transformer; a learned position table (RoPE with 32-channel heads cannot place a token
    # absolutely) and RoPE base 100;
    # the all-frames loss; mask ratios from 0.3 (the paper's 0.7 never shows the model a
    # mostly revealed frame, so it gains nothing from revealed tokens); half the crops
    # starting at rest, where evaluation starts; corrupted context frames in training.
    config.model.width = 128
    config.model.depth = 4
    config.model.num_heads = 4
    config.model.rope_base = 100.0
    config.model.pos_embed_size = 8  # 32 px / patch 4 = 8 tokens a side
    config.head.width = 128
    config.head.depth = 2
    config.head.diffusion_batch_mul = 1
    config.head.num_sampling_steps = 50
    # IDDPM's linear schedule: with a head trained for minutes, the cosine schedule's first
    # sampling steps (respaced beta ~ 1) amplify epsilon errors ~300x into pure noise.
    config.head.noise_schedule = "linear"
    config.loss.mode = "all_frames"
    config.loss.mask_ratio_min = 0.3
    config.loss.mask_ratio_std = 0.5
    config.loss.context_noise = 0.2
    config.loss.context_fade = 0.5
    config.loss.context_token_drop = 0.5
    config.data.crop_first_frame_prob = 0.5
    # Tiny models on tiny data want a far larger step than 1e-4*B/256: a sweep of 1e-3 to
    # 1e-2 (docs/experiments.md, s0-s4) found 3e-3 best, and it beat 1e-3 on the full
    # recipe (r9: teacher-forced 4.96 -> 3.47 px, free-running 9.39 -> 8.07 px).
    config.optim.lr = 3e-3
    config.optim.ema_decay = 0.995  # a run of minutes: average over its last ~200 steps
    # Unrolled blocks (as in every run of docs/experiments.md): on a CPU, XLA's while loop
    # costs more than one compiled block saves at this size.
    config.model.scan_layers = False
    # Batch 4 and 4-frame clips only, ~2900 steps in 15 minutes on 2 CPU cores: half the
    # batch gives twice the updates for the same time (r11, r13: teacher-forced 2.9 -> 1.7
    # px), and every 8-frame step traded for 4-frame ones made free-running generation of 8
    # frames better (r10 -> r12, r13 -> r14 -> r15 -> r16: 6.26 -> 5.77 -> 5.45 -> 5.03 px);
    # the model trained on 4 frames generates 8. Both stages are 4-frame ones, so evaluate and
    # sample need --num_frames=8 for 8-frame clips (launch/quickstart.sh passes it).
    config.batch_size = 4
    config.stages = [
        ml_collections.ConfigDict(dict(num_frames=4, resolution=32, steps=2600, batch_size=0)),
        ml_collections.ConfigDict(dict(num_frames=4, resolution=32, steps=300, batch_size=0)),
    ]
  if preset in ("small", "sampler_bench"):
    # Unrolled blocks, as `tiny`: on a CPU, XLA's while loop over the layers zero-fills and
    # copies the stacked activations the backward pass reads (a `small` training step
    # measured 22.4 instead of 33.2 CPU-thread-seconds unrolled; docs/benchmarks.md).
    config.model.scan_layers = False

  if preset == "tiny_long":
    # The `tiny` recipe trained ~3.2x longer, about 51 minutes on 2 CPU cores (run r18 of
    # docs/experiments.md): free-running 1.43 px, 3.8x better than copying the first frame.
    # Every crop starts at the clip's first frame, at rest, as generation does (the motion
    # is then fixed by the first frame), and a short 8-frame stage teaches the distances of
    # an 8-frame clip after 8800 steps on 4-frame ones.
    config.data.crop_first_frame_prob = 1.0
    config.stages[0].steps = 8800
    config.stages[1].num_frames = 8
    config.stages[1].steps = 500
  if preset == "paper":
    config.model.patch_size = 1
    config.model.dtype = "bfloat16"
    config.model.remat_policy = "full"
    config.model.attention_chunk = 1024
    config.model.context.kind = "text"
    config.model.context.dim = 1536
    config.model.context.length = 300
    # Cosmos continuous video tokenizer: 8x temporal, 8x8 spatial, 16 channels, x0.5.
    config.tokenizer.name = "cosmos"
    config.tokenizer.variant = "CV8x8x8"
    config.tokenizer.latent_channels = 16
    config.tokenizer.latent_scale = 0.5
    config.data.resolution = 256
    config.data.num_frames = 193  # (1 + 8 * 24) pixel frames -> 25 latent frames
    config.batch_size = 256
    config.optim.lr = 0.0
    config.optim.ema_decay = 0.9999
    config.stages = [
        # num_frames counts pixel frames: 33 / 97 / 193 -> 5 / 13 / 25 latent frames.
        ml_collections.ConfigDict(dict(num_frames=33, resolution=256, steps=20000, batch_size=0)),
        ml_collections.ConfigDict(dict(num_frames=97, resolution=256, steps=20000, batch_size=0)),
        ml_collections.ConfigDict(dict(num_frames=193, resolution=256, steps=20000, batch_size=0)),
    ]
  # Locked: a config file built from this one that misspells a key fails there, not
  # silently (existing keys can still be changed).
  config.lock()
  return config
