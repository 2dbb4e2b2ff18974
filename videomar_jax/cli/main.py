"""The `videomar` command line.

  videomar train --config=configs/videomar.py:tiny --workdir=DIR [--config.key=value ...]
  videomar data build --dataset=bouncing_balls --data_dir=DIR [--num_train_clips=...]
  videomar info --config=configs/videomar.py:paper

Flags are absl flags; `--config` is an `ml_collections` config file (`path[:arg]`) whose
fields can be overridden with `--config.key=value`. The config is locked: unknown keys are
errors.
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "data build", "info")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, `path[:arg]`.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs).")
_DATASET = flags.DEFINE_string("dataset", "bouncing_balls", "Dataset to build.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where `data build` writes the dataset.")
_NUM_TRAIN = flags.DEFINE_integer("num_train_clips", 1024, "data build: training clips.")
_NUM_TEST = flags.DEFINE_integer("num_test_clips", 64, "data build: held-out clips.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 16, "data build: frames per clip.")
_RESOLUTION = flags.DEFINE_integer("resolution", 32, "data build: frame size (square).")
_NUM_BALLS = flags.DEFINE_integer("num_balls", 2, "data build: balls per clip.")
_NUM_FRAMES_INFO = flags.DEFINE_integer("info_num_frames", 0, "info: pixel frames of the "
                                        "clip to count FLOPs for (0 = the last stage's).")


def _require(flag, what: str):
  if flag.value is None:
    raise app.UsageError(f"{what} needs --{flag.name}.")
  return flag.value


def cmd_train(_):
  from videomar_jax.train import trainer  # pylint: disable=g-import-not-at-top
  config = _require(_CONFIG, "train")
  workdir = _require(_WORKDIR, "train")
  try:
    summary = trainer.train(config, workdir)
  except trainer.NonFiniteLossError as e:
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(json.dumps(summary), flush=True)


def cmd_data_build(_):
  from videomar_jax.data import bouncing_balls  # pylint: disable=g-import-not-at-top
  if _DATASET.value != "bouncing_balls":
    raise app.UsageError(f"unknown --dataset={_DATASET.value!r}; built-in: bouncing_balls.")
  data_dir = _require(_DATA_DIR, "data build")
  builder = bouncing_balls.build(
      data_dir, num_train_clips=_NUM_TRAIN.value, num_test_clips=_NUM_TEST.value,
      num_frames=_NUM_FRAMES.value, resolution=_RESOLUTION.value, num_balls=_NUM_BALLS.value)
  print(f"Built {builder.name}/{builder.builder_config.name} in {builder.data_dir}: "
        f"{ {k: v.num_examples for k, v in builder.info.splits.items()} }", flush=True)


def cmd_info(_):
  from videomar_jax import flops  # pylint: disable=g-import-not-at-top
  from videomar_jax.models.videomar import VideoMAR  # pylint: disable=g-import-not-at-top
  config = _require(_CONFIG, "info")
  model = VideoMAR(config)
  counts = flops.params_per_module(model)
  total = sum(counts.values())
  stage = config.stages[-1]
  num_frames = _NUM_FRAMES_INFO.value or stage.num_frames
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


HANDLERS = {"train": cmd_train, "data build": cmd_data_build, "info": cmd_info}


def run(argv=None):
  argv = list(sys.argv if argv is None else argv)
  prog = os.path.basename(argv[0])
  words = [a for a in argv[1:3] if not a.startswith("-")]
  command = " ".join(words[:2]) if words[:1] == ["data"] else " ".join(words[:1])
  if command not in HANDLERS:
    print(f"usage: {prog} {{{' | '.join(COMMANDS)}}} [flags]\n"
          f"unknown command {command!r}; see the module docstring of videomar_jax.cli.main.",
          file=sys.stderr)
    sys.exit(2)
  rest = argv[1 + len(command.split()):]
  app.run(_quiet_libraries(HANDLERS[command]), argv=[f"{prog} {command}"] + rest)


def _quiet_libraries(handler):
  """Orbax and TFDS log every file they touch at INFO; show warnings only unless the user
  asked for more with --verbosity."""
  def wrapped(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    return handler(argv)
  return wrapped


if __name__ == "__main__":
  run()
