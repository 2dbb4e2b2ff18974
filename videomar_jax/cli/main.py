"""The `videomar` command line.

  videomar train --config=configs/videomar.py:tiny --workdir=DIR [--config.key=value ...]
  videomar data build --dataset=bouncing_balls|moving_mnist --data_dir=DIR [--num_train_clips=...]
  videomar data build --dataset=folder --path=VIDEOS --data_dir=DIR [--num_frames --resolution
      --frame_stride] [--config=configs/videomar.py:tiny --config.data.KEY=VALUE ...]
  videomar info --config=configs/videomar.py:paper
  videomar evaluate --workdir=DIR [--num_examples=8 --num_steps=16 --num_given --fvd_detector]
  videomar sample (--workdir=DIR | --checkpoint=PATH) (--image=cond.png | --video=cond.mp4)
      --out=out.mp4 [--num_frames --num_steps --cfg --temperature --seed --save_latents]
  videomar bench sampler --config=configs/videomar.py:tiny --json=out.json
  videomar bench train --config=configs/videomar.py:small --json=out.json [--mesh=data:1]
  videomar bench tokenizer --variant=CV8x8x8 --num_frames=17 --resolution=128 --json=out.json
  videomar plan --config=configs/videomar.py:paper --mesh=data:4,fsdp:16,tensor:1
  videomar plan --config=configs/videomar.py:paper --topology=v5p:4x4x4 [--mesh=fsdp:-1]
      [--cpu_estimate] (the TPU compiler, no TPU: pip install -e .[tpu])
  videomar verify --torch_checkpoint=PATH --config=... (see cli/torch_commands.py)
  videomar torch export --checkpoint=RUN_OR_STEP --out=model.safetensors
  videomar torch keys --torch_checkpoint=PATH [--config=...] [--key_map=renames.json]
  videomar tokenizer convert|encode|decode|train ... (see cli/tokenizer_commands.py)
  videomar data encode --tokenizer=DIR --dataset=bouncing_balls --data_dir=DATA --out=CACHE

Flags are absl flags; `--config` is an `ml_collections` config file (`path[:arg]`) whose
fields can be overridden with `--config.key=value`. The config is locked: unknown keys are
errors. The configs that ship with the package have short names (videomar_jax/
config_files.py): `--config=tiny` or `--config=videomar:tiny` is configs/videomar.py:tiny,
`--config=tokenizer:ARG` is configs/tokenizer.py:ARG, wherever the package is installed.
"""

import json
import logging as std_logging
import math
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from videomar_jax.cli import command_flags, config_errors, tokenizer_commands, torch_commands
from videomar_jax.errors import ConfigError, UserError
from videomar_jax.train import checkpoint as checkpoint_lib

COMMANDS = ("train", "data build", "info", "evaluate", "sample", "bench sampler",
            "bench train", "bench tokenizer", "plan", "verify", "torch export", "torch keys",
            "tokenizer convert",
            "tokenizer encode", "tokenizer decode", "tokenizer train", "data encode")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config: a file's `path[:arg]`, or a packaged one by name: `tiny` (a "
    "videomar preset), `videomar:small`, `tokenizer:VARIANT`.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs).")
_DATASET = flags.DEFINE_string("dataset", "bouncing_balls", "data build / encode: dataset "
                               "(data build also takes folder with --path, data encode "
                               "folder:PATH of videos).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where `data build` writes the dataset.")
_PATH = flags.DEFINE_string("path", None, "data build --dataset=folder: the folder of videos.")
_FRAME_STRIDE = flags.DEFINE_integer("frame_stride", 0, "data build --dataset=folder: keep "
                                     "every n-th frame (0 = config.data.frame_stride, 1).")
_NUM_TRAIN = flags.DEFINE_integer("num_train_clips", 1024, "data build: training clips.")
_NUM_TEST = flags.DEFINE_integer("num_test_clips", 64, "data build: held-out clips.")
_NUM_FRAMES = flags.DEFINE_integer(
    "num_frames", 0, "data build: frames per clip (0 = 16); data encode: frames encoded per "
    "clip (0 = 1 + 2 x temporal stride); sample/evaluate: frames of the "
    "output video, given ones included (0 = the last curriculum stage's).")
_RESOLUTION = flags.DEFINE_integer("resolution", 32, "data build / encode: frame size "
                                   "(square).")
_NUM_BALLS = flags.DEFINE_integer("num_balls", 2, "data build: balls per clip.")
_NUM_DIGITS = flags.DEFINE_integer("num_digits", 2, "data build: Moving MNIST digits per clip.")
_FVD_DETECTOR = flags.DEFINE_string(
    "fvd_detector", "", "evaluate: a TorchScript video detector (e.g. the I3D file of the "
    "FVD literature) for the Frechet video distance; nothing is downloaded.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "sample: a run directory or one of "
                                  "its checkpoints/<step> folders (instead of --workdir); "
                                  "tokenizer encode/decode: a tokenizer directory.")
_IMAGE = flags.DEFINE_string("image", None, "sample: conditioning image (I2V).")
_VIDEO = flags.DEFINE_string("video", None, "sample: conditioning video (V2V).")
_NUM_GIVEN = flags.DEFINE_integer("num_given", 0, "sample --video: given frames (0 = all).")
_OUT = flags.DEFINE_string("out", None, "sample: output path (writes .mp4 and .gif); "
                           "tokenizer convert / data encode: output directory.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 16, "Unmasking steps per frame.")
_CFG = flags.DEFINE_float("cfg", 1.0, "Classifier-free guidance scale (with --class_label).")
_CLASS = flags.DEFINE_integer("class_label", None, "sample: class label for class models.")
_TEMPERATURE = flags.DEFINE_string(
    "temperature", "linear", "'linear' (0.95 -> 0.90), a number (constant) or a comma list "
    "(one per generated frame).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_CLIP_DENOISED = flags.DEFINE_float(
    "clip_denoised", None, "sample/evaluate: clip the head's predicted x_0 to [-c, c] at "
    "every denoising step (default: the model's head.clip_denoised).")
_CONTEXT_NOISE = flags.DEFINE_float(
    "context_noise", 0.0, "sample/evaluate: std of the noise added to each generated frame "
    "as later frames see it (for models trained with loss.context_noise).")
_SAVE_LATENTS = flags.DEFINE_bool("save_latents", False, "sample: also write <out>.npy.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 64, "evaluate: held-out clips.")
_REPORT_NAME = flags.DEFINE_string("report_name", "report", "evaluate: the report's folder "
                                   "inside the run directory.")
_SEEDS = flags.DEFINE_string("seeds", None, "evaluate: comma-separated sampling seeds, each "
                             "scored and averaged (default: --seed).")
_JSON = flags.DEFINE_string("json", None, "bench: where to write the figures.")
_GRID = flags.DEFINE_integer("bench_grid", 16, "bench sampler: tokens per frame side.")
_BENCH_STEPS = flags.DEFINE_integer("bench_steps", 16, "bench sampler: unmasking steps per "
                                    "frame (S; the paper: N / S = 16).")
_BENCH_PROFILE = flags.DEFINE_string("bench_profile", None, "bench train: write a jax.profiler "
                                     "trace of the timed steps to this folder.")
_BENCH_FRAMES = flags.DEFINE_integer("bench_frames", 6, "bench sampler: generated frames.")
_BENCH_MODES = flags.DEFINE_list("bench_modes", "kv_cache,no_cache,next_token", "bench "
                                 "sampler: the modes to time (comma-separated).")
_BENCH_SPLIT = flags.DEFINE_bool("bench_time_split", True, "bench sampler: also time each mode "
                                 "with a 2-step head, to split transformer and head time "
                                 "(doubles the runs).")
_REPEATS = flags.DEFINE_integer("bench_repeats", 3, "bench sampler: timed runs per mode; "
                                "bench train: timed steps.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "none", ["none", "auto", "manual"], "train: multi-process start-up: "
    "none (one process), auto (Cloud TPU VMs, SLURM), manual (the three flags below or "
    "VIDEOMAR_COORDINATOR_ADDRESS / _NUM_PROCESSES / _PROCESS_ID).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id.")
_MESH = flags.DEFINE_string("mesh", None, "plan / bench train: mesh sizes, e.g. "
                            "data:4,fsdp:16,tensor:1 (plan: that many fake CPU devices).")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "plan: compile with the TPU compiler for a slice, e.g. v5p:4x4x4, "
    "v4:2x2x1, v5e:2x2, v6e:4x4 (needs the tpu extra: pip install -e .[tpu]).")
_CPU_ESTIMATE = flags.DEFINE_bool("cpu_estimate", False, "plan --topology: also compile on "
                                  "fake CPU devices and print both.")
_BENCH_BATCH = flags.DEFINE_integer("bench_batch_size", 1, "bench tokenizer: clips per call.")
_NUM_FRAMES_INFO = flags.DEFINE_integer("info_num_frames", 0, "info: pixel frames of the "
                                        "clip to count FLOPs for (0 = the last stage's).")


def _require(flag, what: str):
  if flag.value is None:
    raise app.UsageError(f"{what} needs --{flag.name}.")
  if flag is _CONFIG:  # a file that built its own ConfigDict: same keys as the presets
    try:
      base = config_errors.base_config(flag.value)
    except OSError as e:  # config_flags reports a file it could not load on first use
      raise ConfigError(config_errors.describe(sys.argv, e)) from None
    if base is not None:
      config_errors.check_schema(flag.value, base)
  return flag.value


def cmd_train(_):
  from videomar_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  from videomar_jax.train import trainer  # pylint: disable=g-import-not-at-top
  config = _require(_CONFIG, "train")
  workdir = _require(_WORKDIR, "train")
  distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value)
  init_params = None
  if config.train.init_from:  # read only on a fresh run, by every process
    from videomar_jax import interop  # pylint: disable=g-import-not-at-top
    init_params = interop.init_params_loader(config)
  sample_fn = None
  if config.train.sample_every > 0:  # videos to TensorBoard, from the sampler above `train`
    from videomar_jax.tools import train_samples  # pylint: disable=g-import-not-at-top
    sample_fn = train_samples.make_sample_fn(config, workdir)
  try:
    summary = trainer.train(config, workdir, init_params, sample_fn)
  except trainer.NonFiniteLossError as e:
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(json.dumps(summary), flush=True)


def _build_settings(defaults: dict, given: dict) -> dict:
  """`data build`'s settings: `defaults`, then `--config`'s config.data (with its
  --config.data.KEY overrides), then the flags in `given` set on the command line (a 0
  is not set)."""
  settings = dict(defaults)
  if _CONFIG.value is not None:
    config = _require(_CONFIG, "data build")
    settings.update({key: config.data[key] for key in settings if key in config.data})
  settings.update({key: flag.value for key, flag in given.items()
                   if flag.present and flag.value not in (None, 0)})
  return settings


def _dataset_to_build() -> str:
  """--dataset if given, else --config's data.dataset, else bouncing_balls (the flag's
  default): `data build --config=moving_mnist` builds what that config trains on."""
  if not flags.FLAGS["dataset"].present and _CONFIG.value is not None:
    return _require(_CONFIG, "data build").data.dataset
  return _DATASET.value


def cmd_data_build(_):
  dataset = _dataset_to_build()
  if dataset == "folder":
    _build_folder()
    return
  from videomar_jax.data import bouncing_balls, moving_mnist  # pylint: disable=g-import-not-at-top
  if dataset not in ("bouncing_balls", "moving_mnist"):
    raise app.UsageError(f"unknown --dataset={dataset!r}; built-in: bouncing_balls, "
                         "moving_mnist, folder (with --path).")
  if dataset == "moving_mnist":
    # The protocol's sizes (those configs/moving_mnist.py trains on) unless set.
    defaults = {"data_dir": None, "num_train_clips": 10000, "num_test_clips": 1000,
                "num_frames": 20, "num_digits": _NUM_DIGITS.default}
    given = {"data_dir": _DATA_DIR, "num_train_clips": _NUM_TRAIN, "num_test_clips": _NUM_TEST,
             "num_frames": _NUM_FRAMES, "num_digits": _NUM_DIGITS}
    build = moving_mnist.build
  else:
    defaults = {"data_dir": None, "num_train_clips": _NUM_TRAIN.default,
                "num_test_clips": _NUM_TEST.default, "num_frames": 16,
                "resolution": _RESOLUTION.default, "num_balls": _NUM_BALLS.default}
    given = {"data_dir": _DATA_DIR, "num_train_clips": _NUM_TRAIN, "num_test_clips": _NUM_TEST,
             "num_frames": _NUM_FRAMES, "resolution": _RESOLUTION, "num_balls": _NUM_BALLS}
    build = bouncing_balls.build
  settings = _build_settings(defaults, given)
  data_dir = settings.pop("data_dir")
  if not data_dir:
    raise app.UsageError("data build needs --data_dir (or config.data.data_dir).")
  builder = build(data_dir, **settings)
  print(f"Built {builder.name}/{builder.builder_config.name} in {builder.data_dir}: "
        f"{ {k: v.num_examples for k, v in builder.info.splits.items()} }", flush=True)


def _build_folder():
  """`data build --dataset=folder`: the clips of a folder of videos (`data.video_folder`)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from videomar_jax.data import video_folder  # pylint: disable=g-import-not-at-top
  defaults = {f.name: f.default for f in dataclasses.fields(video_folder.FolderSettings)}
  settings = _build_settings(
      {**defaults, "path": None, "data_dir": None},
      {"path": _PATH, "data_dir": _DATA_DIR, "num_frames": _NUM_FRAMES,
       "resolution": _RESOLUTION, "frame_stride": _FRAME_STRIDE})
  data_dir = settings.pop("data_dir")
  if not settings["path"]:
    raise app.UsageError("data build --dataset=folder needs --path (the folder of videos).")
  if not data_dir:
    raise app.UsageError("data build --dataset=folder needs --data_dir (or "
                         "config.data.data_dir): where the dataset is written.")
  folder = video_folder.FolderSettings(**{**settings,
                                          "path": os.path.abspath(settings["path"])})
  folder.check()
  directory = video_folder.build(folder, os.path.abspath(data_dir))
  counts = video_folder.split_sizes(directory)
  overrides = " ".join(f"--config.data.{key}={getattr(folder, key)}" for key in
                       ("path", "num_frames", "resolution", "frame_stride", "test_fraction",
                        "max_clips_per_file")
                       if key not in ("test_fraction", "max_clips_per_file")
                       or getattr(folder, key) != defaults[key])
  print(f"Dataset {directory}: {counts} clips. Train on it with --config.data.dataset=folder "
        f"{overrides} --config.data.data_dir={os.path.abspath(data_dir)}", flush=True)


def cmd_info(_):
  from videomar_jax.tools import flops  # pylint: disable=g-import-not-at-top
  from videomar_jax.train import setup, trainer  # pylint: disable=g-import-not-at-top
  config = _require(_CONFIG, "info")
  if _NUM_FRAMES_INFO.value:  # the clip length to describe instead of the last stage's
    if _NUM_FRAMES_INFO.value < 0:
      raise ConfigError(f"--info_num_frames={_NUM_FRAMES_INFO.value} must be >= 1 (0 = the "
                        "last stage's frames).")
    config.stages[-1].num_frames = _NUM_FRAMES_INFO.value
  trainer.validate(config)
  model = setup.make_model(config)
  counts = flops.params_per_module(model)
  total = sum(counts.values())
  stage = config.stages[-1]
  num_frames = stage.num_frames
  shape = flops.sequence_shape(config, num_frames, stage.resolution)
  per_example = flops.train_flops_per_example(config, num_frames, stage.resolution,
                                              model.token_dim)
  print(f"config preset: {config.preset}")
  print("parameters per module:")
  for name, count in counts.items():
    print(f"  {name:<40s} {count:>15,d}")
  print(f"  {'total':<40s} {total:>15,d}  ({total / 1e9:.3f} B)")
  print(f"clip: {num_frames} pixel frames at {stage.resolution}x{stage.resolution} -> "
        f"{shape['latent_frames']} latent frames")
  print(f"token dim: {model.token_dim}, tokens per frame: {shape['tokens_per_frame']}, "
        f"sequence length ({config.loss.mode} loss): {shape['sequence_length']}")
  print(f"training FLOPs per example: {per_example:.4g}")


def cmd_evaluate(_):
  from videomar_jax.eval.evaluate import EvaluateInputError, evaluate_run, report_summary  # pylint: disable=g-import-not-at-top
  from videomar_jax.train import setup  # pylint: disable=g-import-not-at-top
  workdir = _require(_WORKDIR, "evaluate")
  seeds = (_SEED.value,)
  if _SEEDS.value:
    try:
      seeds = tuple(int(s) for s in _SEEDS.value.split(","))
    except ValueError:
      raise app.UsageError(f"--seeds={_SEEDS.value!r}: give comma-separated integers, e.g. "
                       "--seeds=0,1.") from None
  sampler = {"context_noise": _CONTEXT_NOISE.value, "clip_denoised": _CLIP_DENOISED.value}
  if _TEMPERATURE.value != "linear":  # lists are checked against the frames in `evaluate`
    sampler.update(_temperature_settings(_TEMPERATURE.value, None))
  try:
    metrics = evaluate_run(workdir, setup.restore_weights(workdir),
                           num_examples=_NUM_EXAMPLES.value,
                           num_frames=_NUM_FRAMES.value, num_steps=_NUM_STEPS.value,
                           seeds=seeds, sampler=sampler, out_name=_REPORT_NAME.value,
                           num_given=_NUM_GIVEN.value, fvd_detector=_FVD_DETECTOR.value)
  except EvaluateInputError as e:
    raise app.UsageError(str(e)) from None
  print(json.dumps({k: v for k, v in metrics.items() if k != "per_seed"}, indent=2),
        flush=True)
  print(report_summary(metrics), flush=True)
  print(f"Report written to {os.path.join(workdir, _REPORT_NAME.value)}", flush=True)


def _temperature_settings(text: str, num_generated: int) -> dict:
  if text in ("linear", "constant"):
    return {"temperature": text}
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    raise app.UsageError(f"--temperature={text!r}: 'linear', 'constant', a number or a "
                         "comma list of numbers.") from None
  if any(v < 0 for v in values):
    raise app.UsageError(f"--temperature={text!r}: temperatures must be >= 0 (0 = the "
                         "mean prediction, 1 = the model's own spread).")
  if len(values) == 1:
    return {"temperature": "constant", "temperature_start": values[0]}
  if num_generated is not None and len(values) != num_generated:
    raise app.UsageError(f"--temperature lists {len(values)} values for {num_generated} "
                         "generated frames.")
  return {"temperature": "list", "temperatures": values}


def cmd_sample(_):
  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  import numpy as np
  from videomar_jax.io import video_io
  from videomar_jax.sampling.generate import SamplerSettings
  from videomar_jax.sampling.video_generator import VideoGenerator
  from videomar_jax.train import setup
  # pylint: enable=g-import-not-at-top
  source = _CHECKPOINT.value or _WORKDIR.value
  torch_source = flags.FLAGS["torch_checkpoint"].value
  if (source is None) == (torch_source is None):
    raise app.UsageError("sample needs one of --workdir, --checkpoint or --torch_checkpoint "
                         "(with --config).")
  if (_IMAGE.value is None) == (_VIDEO.value is None):
    raise app.UsageError("sample needs exactly one of --image or --video.")
  out = _require(_OUT, "sample")
  out_dir = os.path.dirname(os.path.abspath(out))
  try:  # before minutes of generating, not after
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"--out={out}: cannot create its folder {out_dir} ({e.strerror}).") from None
  if not os.access(out_dir, os.W_OK):
    raise UserError(f"--out={out}: the folder {out_dir} is not writable.")
  if _IMAGE.value and _NUM_GIVEN.value:
    raise app.UsageError("--num_given is for --video; an --image is one given frame.")
  try:
    frames = video_io.read_frames(_IMAGE.value or _VIDEO.value)
  except video_io.VideoInputError as e:
    raise app.UsageError(str(e)) from None
  if _NUM_GIVEN.value < 0 or _NUM_GIVEN.value > len(frames):
    raise app.UsageError(f"--num_given={_NUM_GIVEN.value}: {_VIDEO.value} has {len(frames)} "
                         f"frame(s); give 1 to {len(frames)} (0 = all).")
  if torch_source:
    from videomar_jax import interop
    config = _require(_CONFIG, "sample --torch_checkpoint")
    params = interop.load_params(torch_source, config, flags.FLAGS["torch_entry"].value,
                                 key_map=flags.FLAGS["key_map"].value or "")
    step = "(PyTorch weights)"
  else:
    config, params, step = setup.restore_weights(source)
  if _CFG.value != 1.0 and (config.model.context.kind == "none" or _CLASS.value is None):
    raise app.UsageError(f"--cfg={_CFG.value} has no effect without a context: it needs a "
                         "class model and --class_label (this model's context: "
                         f"{config.model.context.kind!r}).")
  generator = VideoGenerator(config, params)
  frames = video_io.fit_to_stride(frames, generator.stride)
  given = frames[:1] if _IMAGE.value else frames[:_NUM_GIVEN.value or len(frames)]
  total = _NUM_FRAMES.value or config.stages[-1]["num_frames"]
  num_given = generator.tokenizer.num_latent_frames(len(given))
  num_total = generator.tokenizer.num_latent_frames(total)
  if num_total <= num_given:
    raise app.UsageError(f"--num_frames={total} leaves nothing to generate after "
                         f"{len(given)} given frame(s).")
  tokens_per_frame = (frames.shape[1] // generator.stride) * (frames.shape[2] //
                                                              generator.stride)
  settings = SamplerSettings(
      num_frames=num_total, num_steps=min(_NUM_STEPS.value, tokens_per_frame),
      cfg=_CFG.value, context_noise=_CONTEXT_NOISE.value, clip_denoised=_CLIP_DENOISED.value,
      **_temperature_settings(_TEMPERATURE.value, num_total - num_given))
  context = None if _CLASS.value is None else jnp.array([_CLASS.value])
  print(f"Checkpoint step {step}: generating {num_total - num_given} frame(s) after "
        f"{num_given} given, {settings.num_steps} steps per frame...", flush=True)
  video, tokens = generator(given[None], settings, seed=_SEED.value, context=context)
  stem = os.path.splitext(out)[0]
  paths = video_io.write_video(stem, video[0])
  if _SAVE_LATENTS.value:
    np.save(stem + ".npy", np.asarray(tokens[0]))
    paths.append(stem + ".npy")
  print("Wrote " + ", ".join(paths), flush=True)


def cmd_plan(_):
  # pylint: disable=g-import-not-at-top
  from videomar_jax.tools import plan, tpu_topology
  from videomar_jax.parallel.mesh import parse_mesh
  from videomar_jax.train import trainer
  # pylint: enable=g-import-not-at-top
  config = _require(_CONFIG, "plan")
  if _TOPOLOGY.value is None:
    sizes = parse_mesh(_require(_MESH, "plan"))
    plan.ensure_cpu_devices(math.prod(sizes.values()))  # before JAX starts its backend
    trainer.validate(config)  # before minutes of compiling
    result = plan.plan(config, sizes)
    print(plan.format_plan(result))
    print(f"(compiled on {result['num_devices']} fake CPU devices in "
          f"{result['compile_seconds']:.0f} s)", flush=True)
  else:
    topology = tpu_topology.parse_topology(_TOPOLOGY.value)
    if _MESH.value:
      config.mesh.update(parse_mesh(_MESH.value))
    plan.topology_mesh_sizes(config, topology)  # a mesh the slice cannot take: before libtpu
    tpu_topology.require_libtpu()
    # The CPU estimate compiles on one fake CPU device per chip; the TPU plan needs none.
    plan.ensure_cpu_devices(topology.num_chips if _CPU_ESTIMATE.value else 1)
    trainer.validate(config)
    result = plan.plan_for_topology(config, topology)
    print(plan.format_plan(result))
    print(f"(compiled by libtpu for {topology.name} in {result['compile_seconds']:.0f} s)",
          flush=True)
    if _CPU_ESTIMATE.value:
      cpu = plan.plan(config, result["mesh"])
      print(plan.format_comparison(result, cpu), flush=True)
      result["cpu_estimate"] = cpu
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=2)


def cmd_bench_train(_):
  from videomar_jax.tools.bench_train import bench_train  # pylint: disable=g-import-not-at-top
  from videomar_jax.train import trainer  # pylint: disable=g-import-not-at-top
  config = _require(_CONFIG, "bench train")
  if _MESH.value:
    from videomar_jax.parallel.mesh import parse_mesh  # pylint: disable=g-import-not-at-top
    sizes = parse_mesh(_MESH.value)
    config.mesh.update(sizes)
    config.mesh.num_devices = math.prod(sizes.values())  # e.g. data:1 on a 4-GPU host
  trainer.validate(config)
  result = bench_train(config, steps=_REPEATS.value, profile_dir=_BENCH_PROFILE.value or "")
  text = json.dumps(result, indent=2)
  print(text, flush=True)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      f.write(text)


def cmd_bench_sampler(_):
  from videomar_jax.tools import bench_sampler as bench  # pylint: disable=g-import-not-at-top
  if _CONFIG.value is None:  # the default: the paper's regime at CPU size (see the preset)
    from videomar_jax.config_files import load_config  # pylint: disable=g-import-not-at-top
    config = load_config(f"videomar:{bench.DEFAULT_PRESET}")
  else:
    config = _require(_CONFIG, "bench sampler")
  try:
    result = bench.bench_sampler(config, grid_side=_GRID.value, repeats=_REPEATS.value,
                                 steps_per_frame=_BENCH_STEPS.value,
                                 generated_frames=_BENCH_FRAMES.value,
                                 modes=tuple(_BENCH_MODES.value),
                                 time_split=_BENCH_SPLIT.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  text = json.dumps(result, indent=2)
  print(text, flush=True)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      f.write(text)


def cmd_bench_tokenizer(_):
  from videomar_jax.tools.bench_tokenizer import bench_tokenizer  # pylint: disable=g-import-not-at-top
  variant = flags.FLAGS["variant"].value
  if not variant:
    raise app.UsageError("bench tokenizer needs --variant.")
  result = bench_tokenizer(variant, num_frames=_NUM_FRAMES.value or 17,
                           resolution=_RESOLUTION.value, batch_size=_BENCH_BATCH.value,
                           repeats=_REPEATS.value)
  if "torch_encode_seconds" not in result:  # the one line saying why there is no comparison
    print(f"bench tokenizer: torch comparison {result['torch_comparison']}", file=sys.stderr)
  text = json.dumps(result, indent=2)
  print(text, flush=True)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      f.write(text)


HANDLERS = {"train": cmd_train, "data build": cmd_data_build, "info": cmd_info,
            "evaluate": cmd_evaluate, "sample": cmd_sample, "bench sampler": cmd_bench_sampler,
            "plan": cmd_plan, "bench train": cmd_bench_train,
            "bench tokenizer": cmd_bench_tokenizer,
            **torch_commands.HANDLERS, **tokenizer_commands.HANDLERS}


def run(argv=None):
  argv = list(sys.argv if argv is None else argv)
  prog = os.path.basename(argv[0])
  words = [a for a in argv[1:3] if not a.startswith("-")]
  two_words = words[:1] in (["data"], ["bench"], ["torch"], ["tokenizer"])
  command = " ".join(words[:2]) if two_words else " ".join(words[:1])
  if command not in HANDLERS:
    print(f"usage: {prog} {{{' | '.join(COMMANDS)}}} [flags]\n"
          f"unknown command {command!r}; see the module docstring of videomar_jax.cli.main.",
          file=sys.stderr)
    sys.exit(2)
  rest = argv[1 + len(command.split()):]
  if any(a in ("--help", "-h", "--helpshort", "-?") for a in rest):
    print(command_flags.usage(command))
    sys.exit(0)
  full_argv = [f"{prog} {command}"] + rest
  handler = _quiet_libraries(HANDLERS[command], command)

  def run_app(started, app_argv):
    def main(args):
      started()
      return handler(args)
    app.run(main, argv=app_argv)
  config_errors.run_reporting_config_errors(run_app, full_argv, _want_traceback)


def _quiet_libraries(handler, command: str):
  """Orbax and TFDS log every file they touch at INFO; show warnings only unless the user
  asked for more with --verbosity. Flags of other commands and bad input print as one
  message, exit status 1."""
  def wrapped(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    if _want_traceback():
      checkpoint_lib.QUIET_IO_FAILURES = False
    else:
      # A failed checkpoint read leaves futures whose exceptions asyncio logs, with their
      # tracebacks, as they are collected: after the one-line report of that failure.
      std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
    try:
      command_flags.check(command)
      return handler(argv)
    except (UserError, FileNotFoundError) as e:
      if _want_traceback():
        raise
      print(f"ERROR: {e}", file=sys.stderr, flush=True)
      sys.exit(1)
    except KeyboardInterrupt:
      if _want_traceback():
        raise
      print("Interrupted (what was saved before stays).", file=sys.stderr, flush=True)
      sys.exit(130)
  return wrapped


def _want_traceback() -> bool:
  """Bad input prints one line; --verbosity>=1 or VIDEOMAR_TRACEBACK=1 adds the traceback."""
  return (os.environ.get("VIDEOMAR_TRACEBACK", "") not in ("", "0") or
          (flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].value >= 1))


if __name__ == "__main__":
  run()
