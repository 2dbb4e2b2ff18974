"""Pixel metrics of generated videos: PSNR, SSIM and MSE per frame (SSIM from dm-pix)."""

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np


def psnr_per_frame(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """uint8 videos [B, F, H, W, 3] -> PSNR (dB) of each frame over the batch's pixels, [F]
  (MSE pooled over clips, then converted, as `balls.psnr` does for a whole video)."""
  diff = pred.astype(np.float64) - truth.astype(np.float64)
  mse = np.mean(diff ** 2, axis=(0, 2, 3, 4))
  return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


@jax.jit
def _ssim(a, b):
  return dm_pix.ssim(a, b, max_val=1.0)


def ssim_per_frame(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """uint8 videos [B, F, H, W, 3] -> mean SSIM of each frame over the clips, [F]
  (dm-pix defaults: 11x11 Gaussian window, sigma 1.5, on [0, 1] pixels)."""
  b, f = pred.shape[:2]
  flat = lambda v: jnp.asarray(v, jnp.float32).reshape((b * f,) + v.shape[2:]) / 255.0
  return np.asarray(_ssim(flat(pred), flat(truth))).reshape(b, f).mean(axis=0)


def mse_per_frame(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """uint8 videos [B, F, H, W, C] -> mean over clips of each frame's squared error, [F]:
  [0, 1] intensities, averaged over the channels (an RGB copy of a grayscale clip scores as
  the grayscale clip) and summed over the frame's pixels, the per-frame MSE of the Moving
  MNIST literature (e.g. a 64x64 frame: up to 4096)."""
  diff = (pred.astype(np.float64) - truth.astype(np.float64)) / 255.0
  return np.mean(diff ** 2, axis=-1).sum(axis=(2, 3)).mean(axis=0)
