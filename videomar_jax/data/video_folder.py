"""Training data from a folder of your own videos (`config.data.dataset = "folder"`).

`build` finds every video under `config.data.path` (MP4, WebM, MKV, AVI, MOV, GIF files
and folders of numbered PNG/JPEG frames, recursively), decodes each one frame at a time
(PyAV; every `frame_stride`-th frame kept), and writes non-overlapping clips of
`num_frames` frames to a TFDS `array_record` dataset, once::

    <data_dir>/video_folder_clips/<name>/1.0.0/    the TFDS dataset, splits train and test
    <data_dir>/video_folder_clips/<name>/1.0.0/videomar_folder.json   which file went where

Every frame is resized by its short side (Lanczos, antialiased) and centre-cropped to a
square of `stored_size(resolution)` = ceil(1.125 * resolution) pixels, never squashed:
training takes a random `resolution`-sized square of it and mirrors it half the time
(`pipeline.RandomCropFlip`), the test split its centre (`CentreCropped`).

`name` encodes the settings and a hash of the folder (its absolute path and every file's
name, size and modification time): an unchanged folder is read back, a changed folder or
other settings build anew. Videos are split by file (a file's clips all go to one split),
`test_fraction` of them held out, chosen by a hash of their paths inside the folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging
from etils import epath
from PIL import Image

from videomar_jax.data import integrity
from videomar_jax.errors import ConfigError, UserError
from videomar_jax.io import video_stream
from videomar_jax.io.video_io import VideoInputError

BUILDER_NAME = "video_folder_clips"
DATASET_VERSION = "1.0.0"
SIDECAR = "videomar_folder.json"
# Stored frames are this much larger than the training resolution, room for random crops.
STORED_SCALE = 1.125
# Bump when the stored clips change for the same files and settings (forces a rebuild).
_FORMAT = 1
_NAMES_SHOWN = 3  # unreadable files named in the build log


class FolderDataError(UserError):
  """A folder of videos that yields no training data."""


def say(message: str) -> None:
  """The build log's default: stdout, at once (a training run's log is often a pipe)."""
  print(message, flush=True)


def stored_size(resolution: int) -> int:
  return math.ceil(resolution * STORED_SCALE)


@dataclasses.dataclass(frozen=True)
class FolderSettings:
  """What a folder dataset is built with (`config.data`'s keys of the same names)."""
  path: str  # absolute
  num_frames: int = 16
  resolution: int = 32
  frame_stride: int = 1
  test_fraction: float = 0.1
  max_clips_per_file: int = 0  # 0 = every clip of a file

  @property
  def size(self) -> int:
    return stored_size(self.resolution)

  def check(self) -> None:
    if not self.path:
      raise ConfigError("config.data.dataset is 'folder' but config.data.path is empty: give "
                        "the folder of videos (--config.data.path=DIR).")
    if not os.path.isdir(self.path):
      raise ConfigError(f"config.data.path={self.path}: no such folder.")
    for key in ("num_frames", "resolution", "frame_stride"):
      if getattr(self, key) < 1:
        raise ConfigError(f"config.data.{key}={getattr(self, key)} must be >= 1.")
    if not 0.0 <= self.test_fraction < 1.0:
      raise ConfigError(f"config.data.test_fraction={self.test_fraction} must be in [0, 1).")
    if self.max_clips_per_file < 0:
      raise ConfigError(f"config.data.max_clips_per_file={self.max_clips_per_file} must be "
                        ">= 0 (0 = every clip).")

  def min_frames(self) -> int:
    """Frames a video needs for one clip."""
    return (self.num_frames - 1) * self.frame_stride + 1

  def clips_in(self, frame_count: int) -> int:
    kept = -(-frame_count // self.frame_stride)
    clips = kept // self.num_frames
    return min(clips, self.max_clips_per_file) if self.max_clips_per_file else clips


def settings_from_config(data) -> FolderSettings:
  """`FolderSettings` of `config.data`, checked (a `ConfigError` naming the key)."""
  settings = FolderSettings(
      path=os.path.abspath(os.path.expanduser(data.path)) if data.path else "",
      num_frames=int(data.num_frames), resolution=int(data.resolution),
      frame_stride=int(data.frame_stride), test_fraction=float(data.test_fraction),
      max_clips_per_file=int(data.max_clips_per_file))
  settings.check()
  return settings


# ---- Frames.
def square_frame(image: Image.Image, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: the centre square of `image` (side = its short side) resized
  with Lanczos (antialiased when shrinking); never changes the aspect ratio."""
  width, height = image.size
  side = min(width, height)
  box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
  # reducing_gap: a box average down to 3x the size first, then Lanczos; 7x faster on HD
  # frames and, per Pillow, indistinguishable from Lanczos all the way.
  resized = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS, box=box,
                                        reducing_gap=3.0)
  return np.asarray(resized, dtype=np.uint8)


def clips(video: video_stream.Video, settings: FolderSettings) -> Iterator[np.ndarray]:
  """uint8 [num_frames, S, S, 3] clips of `video`, consecutive and non-overlapping (the
  frames after the last whole clip are dropped), decoded as they are needed."""
  max_frames = settings.max_clips_per_file * settings.num_frames or None
  window = []
  for image in video_stream.iter_frames(video, settings.frame_stride, max_frames):
    window.append(square_frame(image, settings.size))
    if len(window) == settings.num_frames:
      yield np.stack(window)
      window = []


# ---- What to build.
def _relative(video: video_stream.Video, root: str) -> str:
  return os.path.relpath(video.path, root)


def config_name(settings: FolderSettings, videos: list[video_stream.Video]) -> str:
  """The dataset's name: its settings, and a hash of them and of the folder's files."""
  digest = hashlib.sha256(json.dumps(
      {"format": _FORMAT, **dataclasses.asdict(settings)}, sort_keys=True).encode())
  for video in videos:
    digest.update(f"video {_relative(video, settings.path)}\n".encode())
    for path in video.files():
      stat = os.stat(path)
      digest.update(f"{os.path.basename(path)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
  return (f"f{settings.num_frames}_res{settings.resolution}_stride{settings.frame_stride}_"
          f"{digest.hexdigest()[:16]}")


def _hash_unit(relative_path: str) -> float:
  """A fixed number in [0, 1) for a path inside the folder."""
  return int(hashlib.sha1(relative_path.encode()).hexdigest()[:15], 16) / 16 ** 15


def test_files(relative_paths: list[str], test_fraction: float) -> set[str]:
  """The files of the test split: round(test_fraction x files) of them, at least one when
  there are two or more and `test_fraction > 0`, never all; which ones is fixed by a hash of
  their paths inside the folder (not by their names' order, which often follows content)."""
  count = len(relative_paths)
  if test_fraction <= 0 or count < 2:
    return set()
  ordered = sorted(relative_paths, key=lambda p: (_hash_unit(p), p))
  return set(ordered[:min(max(1, round(test_fraction * count)), count - 1)])


@dataclasses.dataclass
class Plan:
  """The videos of each split, and what was skipped and why."""
  settings: FolderSettings
  name: str
  splits: dict[str, list[video_stream.Video]]
  short: list[str]
  unreadable: list[tuple[str, str]]  # (path inside the folder, reason)
  clips: dict[str, list[tuple[str, int]]] = dataclasses.field(default_factory=dict)
  failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def _short(error: Exception, root: str) -> str:
  """An error about a file, with its path inside the folder and no final full stop."""
  return str(error).replace(root + os.sep, "").rstrip(".")


def _stride_text(settings: FolderSettings) -> str:
  return f" at stride {settings.frame_stride}" if settings.frame_stride > 1 else ""


def _unreadable_text(unreadable: list[tuple[str, str]], total: int) -> str:
  named = "; ".join(reason for _, reason in unreadable[:_NAMES_SHOWN])
  more = f"; and {len(unreadable) - _NAMES_SHOWN} more" if len(unreadable) > _NAMES_SHOWN else ""
  return f"skipped {len(unreadable)} of {total} files: unreadable ({named}{more})"


def make_plan(settings: FolderSettings, videos: list[video_stream.Video], name: str,
              log: Callable[[str], None] = say) -> Plan:
  """Counts every video's frames (packets, not decoding), skips the short and unreadable
  ones (logged), and splits the rest by file."""
  root = settings.path
  usable, short, unreadable = [], [], []
  for video in videos:
    relative = _relative(video, root)
    try:
      frame_count = video_stream.count_frames(video)
    except VideoInputError as e:
      unreadable.append((relative, _short(e, root)))
      continue
    (usable if settings.clips_in(frame_count) else short).append(video)
  total = len(videos)
  if short:
    short.sort(key=lambda v: v.path)
    log(f"  skipped {len(short)} of {total} files: shorter than {settings.num_frames} "
        f"frames{_stride_text(settings)}")
  if unreadable:
    log(f"  {_unreadable_text(unreadable, total)}")
  if not usable:
    found = [f"{len(short)} shorter than {settings.min_frames()} frames"] if short else []
    if unreadable:
      found.append(f"{len(unreadable)} unreadable: "
                   f"{', '.join(relative for relative, _ in unreadable[:_NAMES_SHOWN])}"
                   f"{', ...' if len(unreadable) > _NAMES_SHOWN else ''}")
    raise FolderDataError(
        f"{root}: no clip of {settings.num_frames} frames{_stride_text(settings)} in its "
        f"{total} videos ({', '.join(found)}): each video needs at least "
        f"{settings.min_frames()} frames (lower config.data.num_frames or "
        "config.data.frame_stride, or add longer videos).")
  test = test_files([_relative(v, root) for v in usable], settings.test_fraction)
  splits = {"train": [v for v in usable if _relative(v, root) not in test],
            "test": [v for v in usable if _relative(v, root) in test]}
  return Plan(settings, name, {k: v for k, v in splits.items() if v},
              [_relative(v, root) for v in short], unreadable)


# ---- The TFDS builder.
class VideoFolderClips(tfds.core.GeneratorBasedBuilder):
  """TFDS builder of the clips of a `Plan` (given to the constructor: `plan=`). Read the
  result back with `tfds.builder_from_directory` (no class or plan needed then)."""

  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {DATASET_VERSION: "Initial release."}

  def __init__(self, *, plan: Plan, log: Callable[[str], None] = say, **kwargs):
    self._plan, self._log = plan, log  # before the base class, which calls _info
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:  # see bouncing_balls.BouncingBalls.code_path
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    settings = self._plan.settings
    shape = (settings.num_frames, settings.size, settings.size, 3)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Clips of the videos in {settings.path}: "
        + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(settings).items()),
        # zlib: the numpy decoder reads it without TensorFlow (as bouncing_balls).
        features=tfds.features.FeaturesDict({"frames": tfds.features.Tensor(
            shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._plan.splits}

  def _generate_examples(self, split: str):
    plan = self._plan
    videos = plan.splits[split]
    counts = plan.clips.setdefault(split, [])
    last_report = time.monotonic()
    for done, video in enumerate(videos):
      relative = _relative(video, plan.settings.path)
      count = 0
      try:
        for clip in clips(video, plan.settings):
          yield f"{relative}#{count}", {"frames": clip}
          count += 1
      except VideoInputError as e:  # damaged partway: keep the clips before the damage
        plan.failed.append((relative, _short(e, plan.settings.path)))
      counts.append((relative, count))
      if time.monotonic() - last_report > 10:
        last_report = time.monotonic()
        self._log(f"  {split}: {done + 1}/{len(videos)} videos, "
                  f"{sum(c for _, c in counts)} clips")


# ---- Build and read.
def dataset_directory(data_dir: str, name: str) -> str:
  return os.path.join(data_dir, BUILDER_NAME, name, DATASET_VERSION)


class _DropMessage(logging.Filter):
  def __init__(self, prefix: str):
    super().__init__()
    self.prefix = prefix

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(self.prefix)


def _rebuild_hint(directory: str, settings: FolderSettings) -> str:
  return f"Delete {directory} and run again: it is rebuilt from {settings.path}."


def current_name(settings: FolderSettings) -> str:
  """The dataset name of the folder as it is now (its listing and the settings), without
  decoding anything."""
  return config_name(settings, video_stream.find_videos(settings.path))


def build(settings: FolderSettings, data_dir: str, log: Callable[[str], None] = say) -> str:
  """Builds the dataset of `settings` under `data_dir` unless it is there; returns its
  directory. Raises `FolderDataError` when the folder yields no clip."""
  settings.check()
  videos = video_stream.find_videos(settings.path)
  if not videos:
    raise FolderDataError(
        f"{settings.path} holds no videos: looked for "
        f"{', '.join(e[1:] for e in video_stream.VIDEO_EXTENSIONS)} files and folders of "
        f"{', '.join(e[1:] for e in video_stream.FRAME_EXTENSIONS)} frames, recursively.")
  name = config_name(settings, videos)
  directory = dataset_directory(data_dir, name)
  if os.path.isdir(directory):
    return directory
  log(f"Building the dataset of {len(videos)} videos in {settings.path} ({settings.num_frames}"
      f"-frame clips{_stride_text(settings)}, stored at {settings.size}px) into {directory}")
  plan = make_plan(settings, videos, name, log)
  tfds.disable_progress_bar()
  # A config per folder is the design, not the "custom data configuration" TFDS warns of.
  quiet = _DropMessage("Using custom data configuration")
  absl_logging.get_absl_logger().addFilter(quiet)
  try:
    builder = VideoFolderClips(plan=plan, log=log, data_dir=data_dir,
                               config=tfds.core.BuilderConfig(name=name),
                               file_format="array_record")
  finally:
    absl_logging.get_absl_logger().removeFilter(quiet)
  try:
    builder.download_and_prepare()
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise FolderDataError(f"building the dataset of {settings.path} failed "
                          f"({integrity.reason(e)}); {directory} was not "
                          "written.") from e
  if plan.failed:
    log(f"  {len(plan.failed)} files stopped decoding partway (their clips before that are "
        f"kept): {'; '.join(reason for _, reason in plan.failed[:_NAMES_SHOWN])}")
  _write_sidecar(directory, plan)
  log("  " + ", ".join(f"{split}: {sum(c for _, c in counts)} clips from {len(counts)} files"
                       for split, counts in plan.clips.items()))
  return directory


def _write_sidecar(directory: str, plan: Plan) -> None:
  sidecar = {"path": plan.settings.path, "settings": dataclasses.asdict(plan.settings),
             "splits": {split: [[relative, count] for relative, count in counts]
                        for split, counts in plan.clips.items()},
             "skipped_short": plan.short,
             "skipped_unreadable": [relative for relative, _ in plan.unreadable],
             "decoding_failed": [relative for relative, _ in plan.failed]}
  tmp = os.path.join(directory, SIDECAR + ".tmp")
  with open(tmp, "w") as f:
    json.dump(sidecar, f, indent=2)
  os.replace(tmp, os.path.join(directory, SIDECAR))


def split_sizes(directory: str) -> dict[str, int]:
  """Clips per split of a built dataset."""
  return {split: info.num_examples
          for split, info in tfds.builder_from_directory(directory).info.splits.items()}


def read_sidecar(directory: str) -> dict:
  """Which files each split's clips came from, in record order, and what was skipped."""
  with open(os.path.join(directory, SIDECAR)) as f:
    return json.load(f)


def load(settings: FolderSettings, data_dir: str, split: str,
         log: Callable[[str], None] = say):
  """Builds if needed and returns the random-access source of `split` (records
  `{"frames": uint8 [num_frames, S, S, 3]}`, S = `stored_size(resolution)`), its files
  checked (`integrity.check_split`)."""
  directory = build(settings, data_dir, log)
  hint = _rebuild_hint(directory, settings)
  try:
    builder = tfds.builder_from_directory(directory)
    splits = dict(builder.info.splits)
  except Exception as e:  # pylint: disable=broad-except
    raise integrity.DatasetFileError(
        f"the dataset in {directory} is incomplete or damaged ({integrity.reason(e)}). "
        f"{hint}") from e
  if split not in splits:
    held_out = ("config.data.test_fraction is 0" if settings.test_fraction == 0 else
                "one video gave clips, and a video's clips all go to one split")
    raise FolderDataError(f"the dataset of {settings.path} has no {split!r} split "
                          f"({held_out}): add videos, or set config.data.test_fraction.")
  return integrity.check_split(builder.as_data_source(split),
                               integrity.tfds_shards(builder, split), hint)


class CentreCropped:
  """A random-access view of `source` whose clips are the centre `size` x `size` square of
  the stored frames (the test split, as evaluation reads it)."""

  def __init__(self, source: Any, size: int):
    self.source, self.size = source, size

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    frames = self.source[index]["frames"]
    _, height, width, _ = frames.shape
    top, left = (height - self.size) // 2, (width - self.size) // 2
    return {"frames": np.ascontiguousarray(frames[:, top:top + self.size,
                                                  left:left + self.size])}
