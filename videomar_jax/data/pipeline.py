"""Grain input pipeline for video clips.

:func:`make_loader` turns a random-access source of clips (e.g.
``bouncing_balls.load(data_dir, "train")``, or any ``len``/``__getitem__`` object whose
records are dicts with ``frames`` uint8 ``[F0, H0, W0, 3]`` and optionally
``centres`` float ``[F0, K, 2]``) into a ``grain.DataLoader`` that

1. shuffles deterministically by ``seed`` (``grain.samplers.IndexSampler``,
   reshuffled every epoch) into one global order, and gives each process its rows of
   every global batch (:class:`GlobalBatchRows`), so the global batches do not depend on
   the number of processes and each process reads only the records it trains on,
2. crops ``num_frames`` consecutive frames at a random start
   (:class:`RandomTemporalCrop`, a ``grain.transforms.RandomMap``: grain seeds the
   generator of every record from ``seed`` and the record's position in the global
   order, so crops are reproducible and identical after a checkpoint restore),
3. resizes to ``resolution x resolution`` (:class:`Resize`: area average when the
   source size is a multiple of it, otherwise nearest neighbour; ``centres`` are
   mapped to the new pixel grid), and
4. batches ``global_batch_size // shard_count`` elements per process, dropping the
   incomplete last batch of a finite run.

Each batch is a dict::

    {"video":   uint8   [b, num_frames, resolution, resolution, 3],
     "centres": float32 [b, num_frames, K, 2]}   # only if the source has centres

with ``b = global_batch_size // shard_count``. Centres are ``(x, y)`` = (column, row)
pixel coordinates of the resized frames.

With ``worker_count > 0`` every worker assembles whole batches from its own share
of the shard's records, so the batch composition depends on ``worker_count``; the
records and their crops do not (the crop generator depends only on ``seed`` and the
record's position in the global order).

Checkpointing: ``iterator = iter(loader)``; ``iterator.get_state()`` returns the
position as JSON ``bytes`` and ``iterator.set_state(state)`` on a fresh iterator of an
identically configured loader (same ``worker_count`` too) resumes with the very same
batches. With orbax use ``grain.checkpoint.CheckpointSave(iterator)`` /
``grain.checkpoint.CheckpointRestore(iterator)`` (handler
``grain.checkpoint.CheckpointHandler``, one JSON file per process).
"""

from __future__ import annotations

import json
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

__all__ = [
    "RandomCropFlip",
    "RandomTemporalCrop",
    "Resize",
    "make_loader",
    "resize_centres",
    "resize_video",
]


def resize_video(video: np.ndarray, resolution: int) -> np.ndarray:
  """Resizes ``uint8 [F, H, W, C]`` frames to ``[F, resolution, resolution, C]``.

  Uses an area average (rounded to the nearest integer, halves up) when ``H`` and
  ``W`` are both multiples of ``resolution`` and nearest-neighbour sampling
  (pixel-centre aligned) otherwise; returns the input unchanged when the size
  already matches.
  """
  video = np.asarray(video)
  if video.ndim != 4:
    raise ValueError(f"video must have shape [F, H, W, C], got {video.shape}")
  _, height, width, _ = video.shape
  if height == resolution and width == resolution:
    return video
  if height % resolution == 0 and width % resolution == 0:
    sy, sx = height // resolution, width // resolution
    f, _, _, c = video.shape
    blocks = video.reshape(f, resolution, sy, resolution, sx, c).astype(np.uint32)
    total = blocks.sum(axis=(2, 4))
    count = sy * sx
    return ((total + count // 2) // count).astype(video.dtype)
  rows = _nearest_indices(height, resolution)
  cols = _nearest_indices(width, resolution)
  return video[:, rows][:, :, cols]


def _nearest_indices(size: int, new_size: int) -> np.ndarray:
  """Source index whose pixel contains the centre of each output pixel."""
  positions = (np.arange(new_size) + 0.5) * (size / new_size)
  return np.clip(np.floor(positions).astype(np.int64), 0, size - 1)


def resize_centres(
    centres: np.ndarray, height: int, width: int, resolution: int
) -> np.ndarray:
  """Maps ``(x, y)`` pixel coordinates from an ``H x W`` grid to the resized grid.

  Pixel ``i`` covers ``[i - 0.5, i + 0.5]``, so ``x' = (x + 0.5) * res / W - 0.5``
  (and likewise for ``y``), which matches both resizing modes of
  :func:`resize_video`.
  """
  centres = np.asarray(centres, dtype=np.float32)
  scale = np.array([resolution / width, resolution / height], dtype=np.float32)
  return ((centres + 0.5) * scale - 0.5).astype(np.float32)


class RandomTemporalCrop(grain.transforms.RandomMap):
  """Crops ``num_frames`` consecutive frames starting at a random frame.

  Input: a source record with ``frames`` ``[F0, H, W, 3]`` (and optionally
  ``centres`` ``[F0, K, 2]``). Output: ``{"video": [num_frames, H, W, 3],
  "centres": [num_frames, K, 2]}`` cropped at the same start.

  With probability ``first_frame_prob`` the crop starts at frame 0 instead (for data
  whose clips begin in a special state, like the built-in balls at rest, which is
  where image-to-video evaluation starts).
  """

  def __init__(self, num_frames: int, first_frame_prob: float = 0.0):
    if num_frames < 1:
      raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0.0 <= first_frame_prob <= 1.0:
      raise ValueError(f"first_frame_prob must be in [0, 1], got {first_frame_prob}")
    self.num_frames = num_frames
    self.first_frame_prob = first_frame_prob

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    frames = _get_frames(element)
    available = frames.shape[0]
    if available < self.num_frames:
      raise ValueError(
          f"clip has {available} frames but num_frames={self.num_frames} "
          "consecutive frames were requested"
      )
    start = int(rng.integers(0, available - self.num_frames + 1))
    # Drawn after the start so that first_frame_prob=0 keeps the crops of earlier runs.
    if self.first_frame_prob and rng.random() < self.first_frame_prob:
      start = 0
    stop = start + self.num_frames
    out = {"video": np.asarray(frames[start:stop], dtype=np.uint8)}
    if "centres" in element:
      out["centres"] = np.asarray(element["centres"][start:stop], dtype=np.float32)
    return out


class RandomCropFlip(grain.transforms.RandomMap):
  """Crops the same random ``size x size`` square out of every frame of ``video`` and, with
  ``random_flip``, mirrors it left-right half the time.

  For sources stored slightly larger than the training resolution (the video-folder
  dataset): the crop jitters position and scale of what the model sees.
  """

  def __init__(self, size: int, random_flip: bool):
    if size < 1:
      raise ValueError(f"size must be >= 1, got {size}")
    self.size = size
    self.random_flip = random_flip

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    video = element["video"]
    _, height, width, _ = video.shape
    if height < self.size or width < self.size:
      raise ValueError(f"frames of {height}x{width} are smaller than the {self.size}x"
                       f"{self.size} crop")
    top = int(rng.integers(0, height - self.size + 1))
    left = int(rng.integers(0, width - self.size + 1))
    flip = self.random_flip and bool(rng.integers(0, 2))
    crop = video[:, top:top + self.size, left:left + self.size]
    out = dict(element)
    out["video"] = np.ascontiguousarray(crop[:, :, ::-1] if flip else crop)
    return out


class Resize(grain.transforms.Map):
  """Resizes ``video`` to ``resolution x resolution`` and rescales ``centres``."""

  def __init__(self, resolution: int):
    if resolution < 1:
      raise ValueError(f"resolution must be >= 1, got {resolution}")
    self.resolution = resolution

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    video = element["video"]
    _, height, width, _ = video.shape
    out = dict(element)
    out["video"] = resize_video(video, self.resolution)
    if "centres" in element:
      out["centres"] = resize_centres(element["centres"], height, width, self.resolution)
    return out


def _get_frames(element: Any) -> np.ndarray:
  if not isinstance(element, dict) or "frames" not in element:
    keys = sorted(element) if isinstance(element, dict) else type(element).__name__
    raise ValueError(f"source records must be dicts with a 'frames' entry, got {keys}")
  frames = element["frames"]
  if np.ndim(frames) != 4 or np.shape(frames)[-1] != 3:
    raise ValueError(f"'frames' must have shape [F, H, W, 3], got {np.shape(frames)}")
  return frames


class GlobalBatchRows:
  """A sampler that gives each process its rows of every global batch.

  grain's DataLoader hands shard p the sampler indices p, p+P, p+2P, ...; the k-th of them
  is mapped to global position (k // b) * B + rows[k % b] of `global_order` (B the global
  batch, b = B / P, `rows` this process's ascending rows of a batch, by default
  p*b .. p*b + b - 1), keeping that position's record and random seed. Placing each
  process's local batch on its devices (`jax.make_array_from_process_local_data`) then
  rebuilds the global batch of a one-process run, crops included. This holds for
  `worker_count=0`; with grain workers each worker batches its own share of the indices.
  """

  def __init__(self, global_order, global_batch_size: int, shard_count: int,
               rows: list[int]):
    self._order = global_order
    self._global = global_batch_size
    self._count = shard_count
    self._local = global_batch_size // shard_count
    if len(rows) != self._local or len(set(rows)) != len(rows) or not all(
        0 <= r < global_batch_size for r in rows):
      raise ValueError(f"batch rows {rows} are not {self._local} distinct rows of a batch of "
                       f"{global_batch_size}.")
    self._rows = list(rows)

  def __repr__(self) -> str:  # grain checks it when restoring an iterator state
    return (f"GlobalBatchRows(order={self._order!r}, global_batch_size={self._global}, "
            f"shard_count={self._count})")

  def __getitem__(self, index: int):
    k = index // self._count
    position = (k // self._local) * self._global + self._rows[k % self._local]
    meta = self._order[position]
    return grain.RecordMetadata(index=index, record_key=meta.record_key, rng=meta.rng)


def iterator_state_after(loader: grain.DataLoader, num_batches: int) -> bytes:
  """The iterator state of `loader` after `num_batches` batches, built from the step count.

  Used to resume on a different number of processes, where the saved per-process states
  do not apply: thanks to `GlobalBatchRows` the next global batch is the same either way.
  Only for `worker_count=0` (with workers, grain's state is per worker). It writes grain's
  iterator state itself and reads the loader's private `_sampler` and `_shard_options`:
  setup.py pins the grain release this was checked against, and tests/test_grain_pin.py
  fails naming what moved if a new release changes them.
  """
  if loader.multiprocessing_options.num_workers:
    raise ValueError("resuming on a different number of processes needs "
                     "data.worker_count=0 (grain's worker states are per process).")
  state = json.loads(iter(loader).get_state())
  sampler = loader._sampler  # pylint: disable=protected-access
  local = num_batches * sampler._local  # pylint: disable=protected-access
  shard = loader._shard_options  # pylint: disable=protected-access
  state["last_seen_indices"] = {"0": shard.shard_index + (local - 1) * shard.shard_count}
  return json.dumps(state, indent=4).encode()


def make_loader(
    source: Any,
    *,
    global_batch_size: int,
    num_frames: int,
    resolution: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    worker_count: int = 0,
    batch_rows: list[int] | None = None,
    transforms: list[Any] | None = None,
    first_frame_prob: float = 0.0,
) -> grain.DataLoader:
  """Builds the grain loader for random-access ``source`` (see module docstring).

  Args:
    source: random-access data source (``len`` and ``__getitem__``), records are
      dicts with ``frames`` uint8 ``[F0, H0, W0, 3]`` and optional ``centres``.
    global_batch_size: batch size summed over all shards (processes).
    num_frames: consecutive frames cropped from every clip.
    resolution: side length of the output frames.
    seed: seed of the shuffle order and the temporal crops (0 <= seed < 2**32).
    shuffle: shuffle records (reshuffled every epoch); otherwise source order.
    num_epochs: passes over the data; ``None`` repeats forever.
    shard_index: this process's shard; defaults to ``jax.process_index()``.
    shard_count: number of shards; defaults to ``jax.process_count()``.
    worker_count: grain worker processes (0 = transform in this process).
    batch_rows: this process's rows of every global batch (ascending); default the
      contiguous block of shard ``shard_index`` (see ``parallel.partition``).
    transforms: per-record transforms replacing the crop and resize of video clips
      (a data source's ``train_transforms``: ``latent_cache.LatentCrop`` for cached
      latents, temporal crop + :class:`RandomCropFlip` + resize for a video folder);
      then ``num_frames`` and ``resolution`` are not checked against the records.
    first_frame_prob: probability that a crop starts at frame 0 (see
      :class:`RandomTemporalCrop`).

  Returns:
    A ``grain.DataLoader``; iterate it for batches (dicts of numpy arrays).

  Raises:
    ValueError: if ``global_batch_size`` is not divisible by ``shard_count``, on
      invalid shard indices, or if the clips are shorter than ``num_frames``.
  """
  if shard_index is None:
    shard_index = jax.process_index()
  if shard_count is None:
    shard_count = jax.process_count()
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(
        f"invalid sharding: shard_index={shard_index}, shard_count={shard_count}; "
        "need shard_count >= 1 and 0 <= shard_index < shard_count"
    )
  if global_batch_size < 1 or global_batch_size % shard_count != 0:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple of "
        f"shard_count={shard_count} (the number of processes / shards)"
    )
  if num_frames < 1 or resolution < 1:
    raise ValueError(
        f"num_frames and resolution must be >= 1, got {num_frames} and {resolution}"
    )
  num_records = len(source)
  if num_records < 1:
    raise ValueError("the data source is empty")
  # Fail early (not inside a worker) when the clips are too short.
  available = num_frames if transforms else _get_frames(source[0]).shape[0]
  if available < num_frames:
    raise ValueError(
        f"clips have {available} frames but num_frames={num_frames} consecutive "
        "frames were requested"
    )

  if worker_count and not flags.FLAGS.is_parsed():
    # Grain's worker processes read absl flags; outside `absl.app.run` (scripts,
    # notebooks, tests) they are unparsed, so use their defaults.
    flags.FLAGS.mark_as_parsed()

  shard_options = grain.sharding.ShardOptions(
      shard_index=shard_index, shard_count=shard_count, drop_remainder=True
  )
  # One global order for every process count, each process reading its own rows of every
  # global batch: 2 processes x 4 devices see exactly the batches of 1 process x 8.
  global_order = grain.samplers.IndexSampler(
      num_records=num_records,
      shard_options=grain.sharding.ShardOptions(0, 1, drop_remainder=True),
      shuffle=shuffle,
      num_epochs=num_epochs,
      seed=seed,
  )
  local = global_batch_size // shard_count
  if batch_rows is None:
    batch_rows = range(shard_index * local, (shard_index + 1) * local)
  sampler = GlobalBatchRows(global_order, global_batch_size, shard_count, list(batch_rows))
  if transforms is None:
    transforms = [RandomTemporalCrop(num_frames, first_frame_prob), Resize(resolution)]
  operations = [
      *transforms,
      grain.transforms.Batch(
          batch_size=global_batch_size // shard_count, drop_remainder=True
      ),
  ]
  return grain.DataLoader(
      data_source=source,
      sampler=sampler,
      operations=operations,
      worker_count=worker_count,
      shard_options=shard_options,
  )
