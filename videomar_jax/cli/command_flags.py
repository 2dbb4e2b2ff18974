"""Which flags each command takes, and what each means there.

All commands share one absl flag registry (one `videomar` binary), so this table is what
gives every command its own namespace: a flag another command owns is an error naming the
command's flags (`videomar sample --num_balls=3` does not silently do nothing), and
`videomar <command> --help` lists only that command's flags, each with the meaning it has
there (`--num_frames` is a stored clip's length for `data build`, the output video's for
`sample`). An empty text means the flag's own help. `tests/test_cli_flags.py` checks that
every flag a command's handler reads is in its row.
"""

import re

from absl import flags

from videomar_jax.errors import UserError

_SAMPLER = {
    "num_steps": "Unmasking steps per frame.",
    "temperature": "",
    "clip_denoised": "Clip the head's predicted x_0 to [-c, c] at every denoising step "
                     "(default: the model's head.clip_denoised).",
    "context_noise": "Std of the noise added to each generated frame as later frames see it "
                     "(for models trained with loss.context_noise).",
}
_MULTIHOST = {"distributed": "", "coordinator_address": "", "num_processes": "",
              "process_id": ""}

COMMAND_FLAGS: dict[str, dict[str, str]] = {
    "train": {"config": "", "workdir": "", **_MULTIHOST},
    "data build": {
        "dataset": "Dataset to build: bouncing_balls, moving_mnist, or folder (your "
                   "videos, --path).",
        "data_dir": "Where to write the dataset (default: config.data.data_dir).",
        "config": "Optional: take the settings from this config's config.data (flags given "
                  "here win).",
        "path": "The folder of videos (--dataset=folder), searched recursively.",
        "frame_stride": "Keep every n-th frame of a video (--dataset=folder; 0 = "
                        "config.data.frame_stride, 1).",
        "num_train_clips": "", "num_test_clips": "",
        "num_frames": "Frames per stored clip (0 = config.data.num_frames, 16; moving_mnist: "
                      "20).",
        "resolution": "Frame size of the training clips (square; a folder's are stored "
                      "12.5% larger, for random crops).",
        "num_balls": "", "num_digits": ""},
    "info": {"config": "", "info_num_frames": ""},
    "evaluate": {
        "workdir": "The run to score (its latest checkpoint, EMA weights).",
        "num_examples": "", "report_name": "", "seed": "Sampling seed (with no --seeds).",
        "seeds": "",
        "num_frames": "Frames of each generated video, the given ones included (0 = the last "
                      "curriculum stage's).",
        "num_given": "True frames given before generating (0 = the dataset's protocol: 1, "
                     "Moving MNIST 10).",
        "fvd_detector": "",
        **_SAMPLER},
    "sample": {
        "workdir": "A run directory (its latest checkpoint).",
        "checkpoint": "A run directory or one of its checkpoints/<step> folders.",
        "torch_checkpoint": "A PyTorch checkpoint in the VideoMAR authors' layout (with "
                            "--config).",
        "torch_entry": "", "key_map": "", "config": "The model config of --torch_checkpoint.",
        "image": "", "video": "", "num_given": "", "out": "Output path (writes .mp4 and .gif).",
        "num_frames": "Frames of the output video, given ones included (0 = the last "
                      "curriculum stage's).",
        "cfg": "", "class_label": "", "seed": "Sampling seed.", "save_latents": "",
        **_SAMPLER},
    "bench sampler": {"config": "The model (default: videomar:sampler_bench).",
                      "json": "Where to write the figures.", "bench_grid": "",
                      "bench_steps": "", "bench_frames": "", "bench_modes": "",
                      "bench_time_split": "", "bench_repeats": "Timed runs per mode."},
    "bench train": {"config": "", "json": "Where to write the figures.",
                    "mesh": "Mesh sizes, e.g. data:1 (default: config.mesh).",
                    "bench_repeats": "Timed steps.", "bench_profile": ""},
    "bench tokenizer": {
        "variant": "Cosmos variant: CV4x8x8, CV8x8x8, CV8x16x16 or a -narrow one.",
        "num_frames": "Frames per clip (0 = 17).", "resolution": "Frame size (square).",
        "bench_batch_size": "", "bench_repeats": "Timed calls.",
        "json": "Where to write the figures."},
    "plan": {"config": "", "mesh": "Mesh sizes, e.g. data:4,fsdp:16,tensor:1 (compiled on "
                                   "that many fake CPU devices; with --topology: overrides "
                                   "config.mesh, -1 fills).",
             "topology": "", "cpu_estimate": "",
             "json": "Where to write the plan."},
    "verify": {"torch_checkpoint": "", "torch_entry": "", "key_map": "", "config": "",
               "inputs": "", "outputs": "", "tolerance": "", "verify_seed": "",
               "verify_shape": "", "json": "Where to write the per-layer report."},
    "torch export": {"workdir": "A run directory (its latest checkpoint).",
                     "checkpoint": "A run directory or one of its checkpoints/<step> folders.",
                     "out": "Output file (.safetensors or .pt).", "use_ema": ""},
    "torch keys": {"torch_checkpoint": "", "torch_entry": "", "key_map": "",
                   "config": "Compare against this model config."},
    "tokenizer convert": {"torch": "", "variant": "", "legacy_mode": "", "latent_scale": "",
                          "out": "Output tokenizer directory."},
    "tokenizer encode": {"checkpoint": "A tokenizer directory.", "input": "", "output": ""},
    "tokenizer decode": {"checkpoint": "A tokenizer directory.", "input": "", "output": "",
                         "fps": ""},
    "tokenizer train": {"config": "A tokenizer config: tokenizer:VARIANT (packaged) or a "
                        "file's path[:ARG].",
                        "workdir": ""},
    "data encode": {
        "tokenizer": "", "dataset": "bouncing_balls, or folder:PATH of videos.",
        "data_dir": "The bouncing_balls dataset to encode.",
        "num_train_clips": "", "num_test_clips": "", "num_balls": "",
        "num_frames": "Frames encoded per clip (0 = 1 + 2 x the temporal stride).",
        "resolution": "Frame size (square).", "flip": "", "encode_batch_size": "",
        "out": "Output latent-cache directory."},
}

# Every flag some command owns; absl's own (--verbosity, --help, ...) are not checked.
OWNED = frozenset(name for table in COMMAND_FLAGS.values() for name in table)


def check(command: str) -> None:
  """Refuses flags given on the command line that `command` does not take."""
  allowed = COMMAND_FLAGS[command]
  stray = sorted(name for name in OWNED
                 if name in flags.FLAGS and flags.FLAGS[name].present and name not in allowed)
  if stray:
    given = ", ".join(f"--{name}" for name in stray)
    raise UserError(f"`videomar {command}` does not take {given}; its flags: "
                    f"{', '.join('--' + n for n in sorted(allowed))} "
                    f"(`videomar {command} --help` says what each does).")


def usage(command: str) -> str:
  """`videomar <command> --help`: the command's flags, each with its meaning here."""
  lines = [f"videomar {command} [flags]", ""]
  for name in sorted(COMMAND_FLAGS[command]):
    flag = flags.FLAGS[name]
    # The shared help texts say which commands use a flag ("sample: ..."); here it is known.
    text = COMMAND_FLAGS[command][name] or re.sub(r"^[a-z][a-z /]*(?: --\w+)?: ", "",
                                                   flag.help)
    default = "" if flag.default in (None, "", []) else f" (default: {flag.default})"
    lines.append(f"  --{name}: {text}{default}")
  if "config" in COMMAND_FLAGS[command]:
    lines.append("  --config.KEY=VALUE: override one config field (unknown keys are errors)")
  lines.append("  --verbosity=1: show the traceback of an error")
  return "\n".join(lines)
