"""Streaming reads of a folder tree of videos with PyAV: which videos it holds, how many
frames each has, and their frames one at a time, so that a dataset is built from a user's
videos without holding a whole file in memory.

A video is a file (MP4, WebM, MKV, AVI, MOV, GIF) or a folder of numbered frames (PNG,
JPEG; in the order of the numbers in their names: frame_2 before frame_10).
"""

import dataclasses
import os
import re
from collections.abc import Iterator

from PIL import Image

from videomar_jax.io.video_io import VideoInputError, unreadable_error

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".webm", ".mkv", ".avi", ".mov", ".gif")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class Video:
  """A video file (`frames` empty), or a folder of frame files (`frames`, in order)."""
  path: str
  frames: tuple[str, ...] = ()

  def files(self) -> tuple[str, ...]:
    """The files it is read from."""
    return self.frames or (self.path,)


def natural_key(name: str) -> list:
  """Sort key ordering the numbers in names by value: frame_2 < frame_10."""
  return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _extension(name: str) -> str:
  return os.path.splitext(name)[1].lower()


def find_videos(root: str) -> list[Video]:
  """Every video under `root` (recursively, hidden files and folders left out), in a fixed
  order: a folder's frames (if it holds any), then its video files, then its subfolders."""
  videos = []
  for directory, subdirs, names in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    names = sorted(n for n in names if not n.startswith("."))
    frames = sorted((n for n in names if _extension(n) in FRAME_EXTENSIONS), key=natural_key)
    if frames:
      videos.append(Video(directory, tuple(os.path.join(directory, n) for n in frames)))
    videos.extend(Video(os.path.join(directory, n)) for n in names
                  if _extension(n) in VIDEO_EXTENSIONS)
  return videos


def _pyav():
  """PyAV, imported where a video file is read: a program that reads none (training on
  built data, benchmarks) never loads FFmpeg. Called outside the readers' `try`, so that a
  broken install is its own error, not "cannot read <file>"."""
  import av  # pylint: disable=g-import-not-at-top
  return av


def count_frames(video: Video) -> int:
  """The frames of `video`, counted from its packets (read, not decoded); a
  `VideoInputError` naming the file when it cannot be read."""
  if video.frames:
    return len(video.frames)
  av = _pyav()
  try:
    with av.open(video.path) as container:
      if not container.streams.video:
        raise VideoInputError(f"{video.path}: holds no video stream.")
      return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
  except VideoInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (FFmpeg's errors come in many types)
    raise unreadable_error(video.path, e) from None


def iter_frames(video: Video, stride: int = 1,
                max_frames: int | None = None) -> Iterator[Image.Image]:
  """The RGB frames 0, stride, 2 * stride, ... of `video`, decoded one at a time; stops
  after `max_frames` of them. A file that cannot be decoded is a `VideoInputError`."""
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  if max_frames is not None and max_frames <= 0:
    return
  if video.frames:
    for path in video.frames[::stride][:max_frames]:
      try:
        with Image.open(path) as image:
          frame = image.convert("RGB")
      except Exception as e:  # pylint: disable=broad-except
        raise unreadable_error(path, e) from None
      yield frame
    return
  kept = 0
  av = _pyav()
  try:
    with av.open(video.path) as container:
      if not container.streams.video:
        raise VideoInputError(f"{video.path}: holds no video stream.")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"  # frame threads: decoding is most of a build's time
      for index, frame in enumerate(container.decode(stream)):
        if index % stride:
          continue  # every frame is decoded (inter-frame codecs need them), few converted
        image = frame.to_image()
        # Phone videos store upright frames as rotated ones plus a display rotation, which
        # players (and imageio-ffmpeg, `videomar sample --video`) apply: so do we.
        rotation = getattr(frame, "rotation", 0) or 0
        if rotation % 360:
          image = image.rotate(rotation, expand=True)
        kept += 1
        yield image
        if max_frames is not None and kept >= max_frames:
          return
  except VideoInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise unreadable_error(video.path, e) from None
