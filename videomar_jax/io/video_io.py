"""Reading conditioning images/videos and writing results (MP4 via imageio-ffmpeg's bundled
binary, GIF via Pillow; no system ffmpeg needed)."""

import os
import warnings

import imageio.v2 as imageio
import numpy as np

from videomar_jax.errors import UserError


class VideoInputError(UserError):
  """A conditioning file that cannot be used, with the reason."""


# The first bytes of the formats we read, to say what a file that does not decode is.
_MAGIC = ((b"\x89PNG", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"GIF8", "GIF"),
          (b"BM", "BMP image"), (b"\x1aE\xdf\xa3", "WebM/Matroska video"))


def _kind(head: bytes) -> str | None:
  for magic, kind in _MAGIC:
    if head.startswith(magic):
      return kind
  if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"AVI "):
    return "WebP image" if head[8:12] == b"WEBP" else "AVI video"
  if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
    return "MP4/MOV video"
  return None


def unreadable_error(path: str, error: BaseException) -> VideoInputError:
  """What is wrong with a file imageio (or PyAV) could not decode, without ffmpeg's banner."""
  size = os.path.getsize(path)
  if size == 0:
    return VideoInputError(f"{path}: the file is empty (0 bytes).")
  with open(path, "rb") as f:
    kind = _kind(f.read(16))
  if kind is None:
    return VideoInputError(f"{path}: not an image or video: its first bytes match none of "
                           "PNG, JPEG, GIF, BMP, WebP, MP4/MOV, WebM/MKV, AVI.")
  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  detail = "" if ("ffmpeg" in first.lower() or "pip install" in first) else f" ({first[:120]})"
  return VideoInputError(f"{path}: a {kind} ({size} bytes) that cannot be decoded: "
                         f"truncated or damaged{detail}.")


def read_frames(path: str) -> np.ndarray:
  """An image or a video file -> uint8 RGB frames [F, H, W, 3] (F = 1 for an image)."""
  if not os.path.isfile(path):
    raise VideoInputError(f"{path}: no such file.")
  try:
    if os.path.splitext(path)[1].lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
      frames = np.asarray(imageio.imread(path))[None]
    else:
      frames = np.stack([np.asarray(f) for f in imageio.mimread(path, memtest=False)])
  except Exception as e:  # imageio raises many types for unreadable files
    raise unreadable_error(path, e) from None
  if frames.shape[0] == 0:
    raise VideoInputError(f"{path}: the video holds no frames.")
  if frames.ndim == 3:
    raise VideoInputError(f"{path}: greyscale; an RGB image or video is needed.")
  if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
    raise VideoInputError(f"{path}: frames of shape {frames.shape[1:]} are not RGB.")
  if frames.dtype != np.uint8:
    raise VideoInputError(f"{path}: {frames.dtype} pixels; 8-bit RGB is needed.")
  return frames[..., :3]


def fit_to_stride(frames: np.ndarray, stride: int, target: int | None = None) -> np.ndarray:
  """Resizes (nearest neighbour) to `target`x`target` if given, else down to the nearest
  multiple of `stride`, printing a notice when the size changes."""
  _, h, w, _ = frames.shape
  new_h, new_w = (target, target) if target else (h // stride * stride, w // stride * stride)
  if new_h == 0 or new_w == 0:
    raise VideoInputError(f"frames of {h}x{w} are smaller than the tokenizer stride {stride}.")
  if (new_h, new_w) == (h, w):
    return frames
  print(f"Notice: resizing the input from {h}x{w} to {new_h}x{new_w} (multiples of the "
        f"tokenizer stride x patch size {stride}).", flush=True)
  rows = (np.arange(new_h) * h / new_h).astype(int)
  cols = (np.arange(new_w) * w / new_w).astype(int)
  return frames[:, rows][:, :, cols]


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour enlargement for viewing small frames."""
  return frames.repeat(factor, axis=-3).repeat(factor, axis=-2) if factor > 1 else frames


def write_video(path_stem: str, frames: np.ndarray, fps: int = 8) -> list[str]:
  """Writes `<stem>.mp4` and `<stem>.gif`; returns the paths."""
  frames = np.asarray(frames, np.uint8)
  mp4, gif = path_stem + ".mp4", path_stem + ".gif"
  with warnings.catch_warnings():  # the ffmpeg writer forks and execs at once: harmless
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
    imageio.mimsave(mp4, list(frames), fps=fps, macro_block_size=1)
  imageio.mimsave(gif, list(frames), duration=1000 / fps, loop=0)
  return [mp4, gif]
