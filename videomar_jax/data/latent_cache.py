"""Latent caching: encode a video dataset once, train on its latents (as MAR does).

`encode_dataset` runs a tokenizer over every clip of every split and writes a TFDS
`array_record` dataset of latents (no TensorFlow needed)::

    <out>/videomar_latents.json            what was encoded, with which tokenizer
    <out>/cached_latents/<config>/1.0.0/   the TFDS dataset (splits as in the source)

Every record holds `latents` float32 `[T, h, w, C]` (already multiplied by the
tokenizer's `latent_scale`, exactly what the model trains on), optionally
`latents_flipped` (the encoding of the horizontally mirrored clip: mirroring latents is not
the same as encoding the mirrored pixels), and `index` (the record's position in the
source split; the order is kept, so record i of the cache is clip i of the source).

The trainer reads a cache with `config.data.dataset = "latents"` and
`config.data.latents_dir = <out>`. Crops always start at latent frame 0: a causal
tokenizer encodes its first frame alone, as an image, so a later latent frame cannot
start a clip; shorter curriculum stages take a prefix.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import time
from typing import Any, Callable, Iterable, Iterator

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from videomar_jax.data import integrity
from videomar_jax.errors import UserError
from videomar_jax.tokenizers.base import Tokenizer, video_to_unit

META_FILE = "videomar_latents.json"


class LatentCacheError(UserError):
  """A latent cache that is missing, corrupt, or does not fit the run."""


@dataclasses.dataclass
class CachedLatentsConfig(tfds.core.BuilderConfig):
  latent_shape: tuple[int, int, int, int] = (1, 1, 1, 1)
  flipped: bool = False


class CachedLatents(tfds.core.GeneratorBasedBuilder):
  """TFDS builder of a latent cache; `examples` is set by `encode_dataset` before writing."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  examples: dict[str, Callable[[], Iterator[tuple[int, dict]]]] = {}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:  # see bouncing_balls.BouncingBalls.code_path
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    config: CachedLatentsConfig = self.builder_config
    features = {"latents": tfds.features.Tensor(shape=config.latent_shape, dtype=np.float32),
                "index": tfds.features.Scalar(dtype=np.int64)}
    if config.flipped:
      features["latents_flipped"] = tfds.features.Tensor(shape=config.latent_shape,
                                                         dtype=np.float32)
    return tfds.core.DatasetInfo(builder=self, description="Tokenizer latents of a video "
                                 "dataset, written by `videomar data encode`.",
                                 features=tfds.features.FeaturesDict(features),
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self.examples}

  def _generate_examples(self, split: str):
    return self.examples[split]()


def _encoder(tokenizer: Tokenizer):
  @jax.jit
  def encode(video_uint8):
    return tokenizer.encode(video_to_unit(video_uint8))
  return encode


def _batched(clips: Iterable[np.ndarray], batch_size: int) -> Iterator[list[np.ndarray]]:
  batch = []
  for clip in clips:
    batch.append(clip)
    if len(batch) == batch_size:
      yield batch
      batch = []
  if batch:
    yield batch


def encode_clips(tokenizer: Tokenizer, clips: Iterable[np.ndarray], *, batch_size: int,
                 flip: bool, total: int, label: str = "") -> Iterator[dict]:
  """Encodes uint8 clips `[F, H, W, 3]` in batches; yields one record per clip, in order.
  The last batch is padded to `batch_size` so that only one program is compiled."""
  encode = _encoder(tokenizer)
  done, start = 0, time.perf_counter()
  for batch in _batched(clips, batch_size):
    count = len(batch)
    video = np.stack(batch + [batch[-1]] * (batch_size - count))
    latents = np.asarray(encode(video))[:count]
    flipped = np.asarray(encode(video[:, :, :, ::-1]))[:count] if flip else None
    for i in range(count):
      record = {"latents": latents[i].astype(np.float32), "index": np.int64(done + i)}
      if flip:
        record["latents_flipped"] = flipped[i].astype(np.float32)
      yield record
    done += count
    rate = done / max(time.perf_counter() - start, 1e-9)
    print(f"  {label}{done}/{total} clips  {rate:.1f} clips/s  ETA "
          f"{(total - done) / max(rate, 1e-9):.0f} s", flush=True)


def _clip(record: Any, num_frames: int, resolution: int, where: str) -> np.ndarray:
  # pylint: disable=import-outside-toplevel
  from videomar_jax.data.pipeline import resize_video
  frames = np.asarray(record["frames"] if isinstance(record, dict) else record)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise LatentCacheError(f"{where}: expected uint8 frames [F, H, W, 3], got "
                           f"{frames.dtype} {frames.shape}.")
  if frames.shape[0] < num_frames:
    raise LatentCacheError(f"{where}: {frames.shape[0]} frames, fewer than the "
                           f"{num_frames} to encode.")
  return resize_video(frames[:num_frames], resolution)


def encode_dataset(tokenizer: Tokenizer, splits: dict[str, Any], out: str, *,
                   num_frames: int, resolution: int, flip: bool, batch_size: int = 8,
                   tokenizer_info: dict | None = None, source_info: dict | None = None) -> dict:
  """Encodes every split (a random-access source of clips or of `{"frames": ...}` records)
  to a latent cache in `out`; returns its metadata (also written to `out/META_FILE`).

  Clips are their first `num_frames` frames resized to `resolution` x `resolution`.
  """
  latent_shape = tokenizer.latent_shape(num_frames, resolution, resolution)
  if os.path.exists(os.path.join(out, META_FILE)):
    raise LatentCacheError(f"{out} already holds a latent cache; choose another --out or "
                           "delete it first (nothing was overwritten).")
  for split, source in splits.items():
    if len(source) == 0:
      raise LatentCacheError(f"split {split!r} of the source is empty.")
    _clip(source[0], num_frames, resolution, f"split {split!r}, clip 0")

  def examples(split, source):
    def generate():
      clips = (_clip(source[i], num_frames, resolution, f"split {split!r}, clip {i}")
               for i in range(len(source)))
      records = encode_clips(tokenizer, clips, batch_size=batch_size, flip=flip,
                             total=len(source), label=f"{split}: ")
      for i, record in enumerate(records):
        yield i, record
    return generate

  config = CachedLatentsConfig(
      name=f"t{latent_shape[0]}_h{latent_shape[1]}_w{latent_shape[2]}_c{latent_shape[3]}"
      + ("_flip" if flip else ""), latent_shape=tuple(latent_shape), flipped=flip)
  tfds.disable_progress_bar()
  builder = CachedLatents(data_dir=out, config=config, file_format="array_record")
  CachedLatents.examples = {s: examples(s, src) for s, src in splits.items()}
  try:
    builder.download_and_prepare()
  finally:
    CachedLatents.examples = {}
  meta = {
      "format": 1,
      "dataset_dir": os.path.relpath(builder.data_dir, out),
      "splits": {s: len(src) for s, src in splits.items()},
      "num_frames": num_frames, "resolution": resolution,
      "latent_shape": list(latent_shape), "flipped": flip,
      "tokenizer": {"temporal_stride": tokenizer.temporal_stride,
                    "spatial_stride": tokenizer.spatial_stride,
                    "latent_channels": tokenizer.latent_channels,
                    "latent_scale": tokenizer.latent_scale, **(tokenizer_info or {})},
      "source": source_info or {},
  }
  tmp = os.path.join(out, META_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp, os.path.join(out, META_FILE))
  return meta


def read_meta(directory: str) -> dict:
  path = os.path.join(directory, META_FILE)
  if not os.path.isfile(path):
    raise LatentCacheError(f"no latent cache at {directory} ({META_FILE} missing; write one "
                           "with `videomar data encode`).")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise LatentCacheError(f"{path} is not valid JSON ({e}).") from None


def load(directory: str, split: str):
  """(random-access source of `split`, metadata) of a latent cache."""
  meta = read_meta(directory)
  if split not in meta["splits"]:
    raise LatentCacheError(f"the latent cache {directory} has no split {split!r} (it has "
                           f"{sorted(meta['splits'])}).")
  builder = tfds.builder_from_directory(os.path.join(directory, meta["dataset_dir"]))
  hint = (f"Encode the cache again (`videomar data encode --out={directory}` after deleting "
          "it).")
  return integrity.check_split(builder.as_data_source(split),
                               integrity.tfds_shards(builder, split), hint), meta


class LatentCrop(grain.transforms.RandomMap):
  """Takes the first `num_latent_frames` latent frames and, with `random_flip`, the
  mirrored copy half the time. Output: `{"latents": [T, h, w, C]}`."""

  def __init__(self, num_latent_frames: int, random_flip: bool):
    self.num_latent_frames = num_latent_frames
    self.random_flip = random_flip

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    use_flipped = self.random_flip and bool(rng.integers(0, 2))
    latents = element["latents_flipped" if use_flipped else "latents"]
    return {"latents": np.asarray(latents[:self.num_latent_frames], dtype=np.float32)}


def check_run(meta: dict, directory: str, tokenizer_config, num_latent_frames: int,
              resolution: int, random_flip: bool) -> None:
  """Errors that name the mismatch between a cache and a run's config and stage."""
  # pylint: disable=import-outside-toplevel
  from videomar_jax.tokenizers import tokenizer_geometry
  cached = meta["tokenizer"]
  geometry = tokenizer_geometry(tokenizer_config)
  wanted = (geometry.temporal_stride, geometry.spatial_stride, geometry.latent_channels)
  found = (cached["temporal_stride"], cached["spatial_stride"], cached["latent_channels"])
  if wanted != found:
    raise LatentCacheError(f"the latent cache {directory} was encoded with strides "
                           f"{found[0]}x{found[1]} and {found[2]} channels, config.tokenizer "
                           f"says {wanted[0]}x{wanted[1]} and {wanted[2]}.")
  if not np.isclose(cached["latent_scale"], tokenizer_config.latent_scale):
    raise LatentCacheError(f"the latent cache {directory} holds latents scaled by "
                           f"{cached['latent_scale']}, config.tokenizer.latent_scale is "
                           f"{tokenizer_config.latent_scale}.")
  if meta["resolution"] != resolution:
    raise LatentCacheError(f"the latent cache {directory} was encoded at "
                           f"{meta['resolution']}px; the stage asks for {resolution}px "
                           "(latents cannot be resized: encode another cache).")
  if num_latent_frames > meta["latent_shape"][0]:
    raise LatentCacheError(f"the stage needs {num_latent_frames} latent frames; the cache "
                           f"{directory} has {meta['latent_shape'][0]} per clip.")
  if random_flip and not meta["flipped"]:
    raise LatentCacheError(f"config.data.random_flip is set but the latent cache {directory} "
                           "has no flipped copies (encode with --flip, or set "
                           "config.data.random_flip=False).")

