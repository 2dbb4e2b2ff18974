"""Metrics of generated bouncing-balls videos against the ground truth.

Ball centres are found from the colour masks of a frame: a pixel belongs to a ball when it
is within `tolerance` (max over RGB) of that ball's known colour; the centre is the mask's
centroid. A ball with no pixel in a frame is "missing" and scores `missing_penalty_px`
(half the frame size by default), so a video that loses its balls cannot look good.
"""

import numpy as np


def find_centres(frames: np.ndarray, colours: np.ndarray, tolerance: int = 60):
  """frames uint8 [F, H, W, 3], colours uint8 [K, 3] -> (centres [F, K, 2] (x, y), found
  [F, K] bool)."""
  diff = np.abs(frames[:, :, :, None, :].astype(np.int32) - colours[None, None, None].astype(
      np.int32)).max(-1)  # [F, H, W, K]
  mask = diff <= tolerance
  count = mask.sum(axis=(1, 2))  # [F, K]
  ys, xs = np.mgrid[:frames.shape[1], :frames.shape[2]]
  with np.errstate(invalid="ignore", divide="ignore"):
    cx = (mask * xs[None, :, :, None]).sum(axis=(1, 2)) / count
    cy = (mask * ys[None, :, :, None]).sum(axis=(1, 2)) / count
  return np.stack([cx, cy], -1), count > 0


def centre_errors(frames: np.ndarray, true_centres: np.ndarray, colours: np.ndarray,
                  missing_penalty_px: float | None = None) -> np.ndarray:
  """Per-frame mean distance (px) between found and true centres, [F]."""
  found_centres, found = find_centres(frames, colours)
  penalty = missing_penalty_px if missing_penalty_px is not None else frames.shape[1] / 2
  dist = np.linalg.norm(found_centres - true_centres, axis=-1)
  return np.where(found, dist, penalty).mean(-1)


def found_fraction(frames: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """Per-frame fraction of the clip's balls with at least one pixel of their colour, [F]."""
  return find_centres(frames, colours)[1].mean(-1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR (dB) of uint8 videos."""
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))
