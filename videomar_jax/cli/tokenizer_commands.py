"""`videomar tokenizer ...` and `videomar data encode`: the video tokenizer's command line.

  videomar tokenizer convert --torch=PATH [--torch=PATH2] --variant=CV8x8x8 --out=DIR
      (released TorchScript .jit files, a .pt/.safetensors state_dict in the original or
      diffusers layout, or a diffusers model directory; --variant may be left out for a
      diffusers directory, whose config.json describes the network)
  videomar tokenizer encode --checkpoint=DIR --input=clip.mp4|.gif|.npy|.npz --output=z.npy
  videomar tokenizer decode --checkpoint=DIR --input=z.npy --output=clip.mp4|.gif|.npy
  videomar tokenizer train --config=configs/tokenizer.py:CV4x8x8-narrow --workdir=DIR
  videomar data encode --tokenizer=DIR --dataset=bouncing_balls --data_dir=DATA --out=CACHE
      [--num_frames=9 --resolution=32 --flip]   (or --dataset=folder:PATH of MP4/GIF files)

Pixels are `[T, H, W, 3]` uint8 or floats in [-1, 1]; latents are `[T, h, w, C]` already
multiplied by the tokenizer's latent scale (what VideoMAR trains on). A leading batch axis
is accepted on arrays too.
"""

import dataclasses
import glob
import json
import os
import sys

from absl import app, flags

from videomar_jax.errors import UserError

_TORCH = flags.DEFINE_multi_string("torch", None, "tokenizer convert: PyTorch weights "
                                   "(repeat for encoder.jit and decoder.jit).")
_VARIANT = flags.DEFINE_string("variant", None, "tokenizer convert: CV4x8x8, CV8x8x8, "
                               "CV8x16x16 or a -narrow variant.")
_LEGACY = flags.DEFINE_bool("legacy_mode", False, "tokenizer convert: the weights come from "
                            "NVIDIA's network built with legacy_mode=True (its decoder "
                            "up-samples in time one block earlier; the file cannot show it, "
                            "and loading it without this flag gives wrong videos).")
_LATENT_SCALE = flags.DEFINE_float("latent_scale", 0.5, "tokenizer convert: the scale "
                                   "stored with the weights (VideoMAR uses 0.5 for Cosmos).")
_INPUT = flags.DEFINE_string("input", None, "tokenizer encode/decode: input file.")
_OUTPUT = flags.DEFINE_string("output", None, "tokenizer encode/decode: output file.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "data encode: a tokenizer directory.")
_FLIP = flags.DEFINE_bool("flip", False, "data encode: also store the latents of the "
                          "horizontally mirrored clips (for config.data.random_flip).")
_ENCODE_BATCH = flags.DEFINE_integer("encode_batch_size", 8, "data encode: clips per batch.")
_FPS = flags.DEFINE_integer("fps", 8, "tokenizer decode: frames per second of a video.")

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".avi", ".mov")


class TokenizerInputError(UserError):
  """An input file or size the tokenizer cannot take, with the reason."""


def _flag(name: str, what: str):
  value = flags.FLAGS[name].value
  if value is None:
    raise app.UsageError(f"{what} needs --{name}.")
  return value


def _load_tokenizer(directory: str):
  from videomar_jax.tokenizers.cosmos_tokenizer import CosmosTokenizer  # pylint: disable=g-import-not-at-top
  return CosmosTokenizer.from_directory(directory)


def read_pixels(path: str):
  """A video file or an array file -> float32 [B, F, H, W, 3] in [-1, 1]."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from videomar_jax.io import video_io  # pylint: disable=g-import-not-at-top
  if path.lower().endswith(VIDEO_SUFFIXES):
    try:
      frames = video_io.read_frames(path)
    except video_io.VideoInputError as e:
      raise TokenizerInputError(str(e)) from None
  else:
    frames = _read_array(path, "pixels")
  if frames.ndim == 4:
    frames = frames[None]
  if frames.ndim != 5 or frames.shape[-1] != 3:
    raise TokenizerInputError(f"{path}: pixels must be [T, H, W, 3] (or [B, T, H, W, 3]), "
                              f"got shape {frames.shape}.")
  if frames.dtype == np.uint8:
    return frames.astype(np.float32) / 127.5 - 1.0
  if not np.issubdtype(frames.dtype, np.floating):
    raise TokenizerInputError(f"{path}: pixels must be uint8 or floats in [-1, 1], got "
                              f"{frames.dtype}.")
  if not np.all(np.isfinite(frames)) or frames.min() < -1.001 or frames.max() > 1.001:
    raise TokenizerInputError(f"{path}: float pixels must be finite and in [-1, 1] (found "
                              f"{frames.min():.3g} .. {frames.max():.3g}).")
  return frames.astype(np.float32)


def _read_array(path: str, what: str):
  import numpy as np  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise TokenizerInputError(f"{path}: no such file.")
  try:
    data = np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise TokenizerInputError(f"{path}: not a readable .npy/.npz file ({e}).") from None
  if isinstance(data, np.lib.npyio.NpzFile):
    names = list(data.files)
    key = what if what in names else (names[0] if len(names) == 1 else None)
    if key is None:
      raise TokenizerInputError(f"{path}: an .npz with several arrays needs one named "
                                f"{what!r}; it has {names}.")
    return data[key]
  return data


def _write_array(path: str, array, what: str) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  if path.endswith(".npz"):
    np.savez(path, **{what: array})
  elif path.endswith(".npy"):
    np.save(path, array)
  else:
    raise TokenizerInputError(f"{path}: write latents to a .npy or .npz file.")


def cmd_tokenizer_encode(_):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  tokenizer = _load_tokenizer(_flag("checkpoint", "tokenizer encode"))
  source, target = _flag("input", "tokenizer encode"), _flag("output", "tokenizer encode")
  video = read_pixels(source)
  try:
    shape = tokenizer.latent_shape(*video.shape[1:4])
  except ValueError as e:
    raise TokenizerInputError(f"{source}: {e}") from None
  latents = np.asarray(jax.jit(tokenizer.encode)(video))
  _write_array(target, latents[0] if latents.shape[0] == 1 else latents, "latents")
  print(f"Encoded {source} {tuple(video.shape[1:])} -> {target} latents {shape} "
        f"(x{tokenizer.latent_scale}).", flush=True)


def cmd_tokenizer_decode(_):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from videomar_jax.io import video_io  # pylint: disable=g-import-not-at-top
  from videomar_jax.tokenizers.base import unit_to_video  # pylint: disable=g-import-not-at-top
  tokenizer = _load_tokenizer(_flag("checkpoint", "tokenizer decode"))
  source, target = _flag("input", "tokenizer decode"), _flag("output", "tokenizer decode")
  latents = _read_array(source, "latents")
  if latents.ndim == 4:
    latents = latents[None]
  if latents.ndim != 5 or latents.shape[-1] != tokenizer.latent_channels:
    raise TokenizerInputError(f"{source}: latents must be [T, h, w, "
                              f"{tokenizer.latent_channels}] (or with a batch axis), got "
                              f"{latents.shape}.")
  if not np.issubdtype(latents.dtype, np.floating) or not np.all(np.isfinite(latents)):
    raise TokenizerInputError(f"{source}: latents must be finite floats.")
  video = np.asarray(jax.jit(tokenizer.decode)(latents.astype(np.float32)))
  if target.lower().endswith(VIDEO_SUFFIXES):
    if video.shape[0] != 1:
      raise TokenizerInputError(f"{source} holds {video.shape[0]} clips; a video file takes "
                                "one (write .npy instead).")
    stem, suffix = os.path.splitext(target)
    paths = video_io.write_video(stem, np.asarray(unit_to_video(video[0])), fps=_FPS.value)
    written = [p for p in paths if p.endswith(suffix.lower())] or paths
  else:
    _write_array(target, video[0] if video.shape[0] == 1 else video, "pixels")
    written = [target]
  print(f"Decoded {source} {tuple(latents.shape[1:])} -> {', '.join(written)} "
        f"{tuple(video.shape[1:])}.", flush=True)


def cmd_tokenizer_convert(_):
  # pylint: disable=g-import-not-at-top
  from videomar_jax.tokenizers.cosmos import convert as cosmos_convert
  from videomar_jax.tokenizers import store
  from videomar_jax.tokenizers.cosmos import CosmosConfig, get_variant
  # pylint: enable=g-import-not-at-top
  paths = _TORCH.value
  if not paths:
    raise app.UsageError("tokenizer convert needs --torch=PATH (repeatable).")
  out = _flag("out", "tokenizer convert")
  for path in paths:
    if not os.path.exists(path):
      raise FileNotFoundError(f"--torch={path}: no such file or directory.")
  if _VARIANT.value:
    network, variant = get_variant(_VARIANT.value), _VARIANT.value
  elif len(paths) == 1 and os.path.isfile(os.path.join(paths[0], "config.json")):
    with open(os.path.join(paths[0], "config.json")) as f:
      network, variant = CosmosConfig.from_diffusers(json.load(f)), None
  else:
    raise app.UsageError("tokenizer convert needs --variant (only a diffusers model "
                         "directory describes its own network).")
  if _LEGACY.value:
    network = dataclasses.replace(network, legacy_mode=True)
  params = cosmos_convert.convert(paths, network, log=lambda m: print(m, flush=True))
  store.save(out, network, params, variant=variant, latent_scale=_LATENT_SCALE.value,
             source=", ".join(os.path.abspath(p) for p in paths))
  count = sum(v.size for v in _leaves(params))
  print(f"Converted {', '.join(paths)} -> {out} ({variant or 'diffusers config'}, "
        f"{count:,} parameters, latent_scale {_LATENT_SCALE.value}).", flush=True)


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_leaves(tree)


def cmd_tokenizer_train(_):
  from videomar_jax.train import tokenizer_trainer  # pylint: disable=g-import-not-at-top
  from videomar_jax.train.trainer import NonFiniteLossError  # pylint: disable=g-import-not-at-top
  config = _flag("config", "tokenizer train")
  workdir = _flag("workdir", "tokenizer train")
  try:
    summary = tokenizer_trainer.train(config, workdir)
  except NonFiniteLossError as e:
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(json.dumps({k: v for k, v in summary.items() if k != "evaluations"}), flush=True)


def _folder_source(path: str):
  """A folder of video files as a random-access source of uint8 clips (sorted by name)."""
  from videomar_jax.io import video_io  # pylint: disable=g-import-not-at-top
  files = sorted(p for p in glob.glob(os.path.join(path, "*"))
                 if p.lower().endswith(VIDEO_SUFFIXES))
  if not files:
    raise TokenizerInputError(f"--dataset=folder:{path}: no video files "
                              f"({', '.join(VIDEO_SUFFIXES)}) in it.")

  class Videos:
    def __len__(self):
      return len(files)

    def __getitem__(self, index):
      try:
        return {"frames": video_io.read_frames(files[index])}
      except video_io.VideoInputError as e:
        raise TokenizerInputError(str(e)) from None

  return Videos()


def cmd_data_encode(_):
  # pylint: disable=g-import-not-at-top
  from videomar_jax.data import bouncing_balls, latent_cache
  from videomar_jax.tokenizers import store
  # pylint: enable=g-import-not-at-top
  directory = _flag("tokenizer", "data encode")
  out = _flag("out", "data encode")
  tokenizer = _load_tokenizer(directory)
  dataset = flags.FLAGS["dataset"].value
  num_frames = flags.FLAGS["num_frames"].value
  resolution = flags.FLAGS["resolution"].value
  if dataset == "bouncing_balls":
    data_dir = os.path.abspath(_flag("data_dir", "data encode --dataset=bouncing_balls"))
    settings = dict(num_train_clips=flags.FLAGS["num_train_clips"].value,
                    num_test_clips=flags.FLAGS["num_test_clips"].value,
                    num_frames=max(16, num_frames), resolution=resolution,
                    num_balls=flags.FLAGS["num_balls"].value)
    splits = {s: bouncing_balls.load(data_dir, s, **settings) for s in ("train", "test")}
    source_info = {"dataset": "bouncing_balls", "data_dir": data_dir, **settings}
  elif dataset.startswith("folder:"):
    folder = os.path.abspath(dataset[len("folder:"):])
    splits = {"train": _folder_source(folder)}
    source_info = {"dataset": "folder", "path": folder}
  else:
    raise app.UsageError(f"--dataset={dataset!r}: 'bouncing_balls' or 'folder:PATH'.")
  num_frames = num_frames or 1 + 2 * tokenizer.temporal_stride
  try:
    tokenizer.latent_shape(num_frames, resolution, resolution)
  except ValueError as e:
    raise TokenizerInputError(f"--num_frames / --resolution: {e}") from None
  print(f"Encoding {dataset} ({', '.join(f'{s}: {len(v)}' for s, v in splits.items())} "
        f"clips of {num_frames} frames at {resolution}px) with {tokenizer}...", flush=True)
  meta = latent_cache.encode_dataset(
      tokenizer, splits, out, num_frames=num_frames, resolution=resolution,
      flip=_FLIP.value, batch_size=_ENCODE_BATCH.value,
      tokenizer_info={"checkpoint": os.path.abspath(directory),
                      "fingerprint": store.fingerprint(directory),
                      "variant": store.read_meta(directory).get("variant")},
      source_info=source_info)
  print(f"Wrote the latent cache {out}: latents {meta['latent_shape']} per clip"
        f"{' (+ flipped)' if meta['flipped'] else ''}, splits {meta['splits']}. Train on it "
        f"with --config.data.dataset=latents --config.data.latents_dir={os.path.abspath(out)}",
        flush=True)


HANDLERS = {"tokenizer convert": cmd_tokenizer_convert, "tokenizer encode": cmd_tokenizer_encode,
            "tokenizer decode": cmd_tokenizer_decode, "tokenizer train": cmd_tokenizer_train,
            "data encode": cmd_data_encode}
