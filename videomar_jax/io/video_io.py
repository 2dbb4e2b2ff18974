"""Reading conditioning images/videos and writing results (MP4 via imageio-ffmpeg's bundled
binary, GIF via Pillow; no system ffmpeg needed)."""

import os

import imageio.v2 as imageio
import numpy as np

from videomar_jax.errors import UserError


class VideoInputError(UserError):
  """A conditioning file that cannot be used, with the reason."""


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
    raise VideoInputError(f"{path}: cannot be read as an image or video ({e}).") from e
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
  imageio.mimsave(mp4, list(frames), fps=fps, macro_block_size=1)
  imageio.mimsave(gif, list(frames), duration=1000 / fps, loop=0)
  return [mp4, gif]
