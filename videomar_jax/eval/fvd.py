"""Frechet video distance (FVD) with a video detector the user supplies.

FVD (Unterthiner et al., 2018) is the Frechet distance between Gaussians fitted to a
detector's features of true and of generated videos. The detector is a network trained
elsewhere (the literature uses an I3D network trained on Kinetics-400, e.g. the TorchScript
file `i3d_torchscript.pt` StyleGAN-V computes FVD with); nothing is downloaded here: pass its
path (`videomar evaluate --fvd_detector=PATH`). Figures are only comparable under the same
protocol, so `protocol()` records it in metrics.json: the detector file's SHA-256, the input
size and range, the frames scored and whether the given frames count (they do here: the
videos are scored whole, given frames included, as video-prediction papers do), and the
number of videos (FVD is biased upwards for few videos).

The detector is called as `detector(x, rescale=False, resize=False, return_features=True)`
when its TorchScript `forward` takes those arguments (the I3D file's convention: features
before the classifier), else `detector(x)`; x is float32 [B, 3, T, 224, 224] in [-1, 1].
"""

import hashlib

import numpy as np
import scipy.linalg

from videomar_jax.errors import UserError

_SIZE = 224  # I3D's input frame size
_DETECTOR_KWARGS = {"rescale": False, "resize": False, "return_features": True}


class DetectorError(UserError):
  """A detector file that cannot be used (the CLI prints the message alone)."""


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray,
                     cov2: np.ndarray) -> float:
  """|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)), the Frechet (2-Wasserstein)
  distance of two Gaussians."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
  root = scipy.linalg.sqrtm(cov1 @ cov2)
  if not np.all(np.isfinite(root)):
    # Singular product (fewer videos than feature dimensions): regularise as pytorch-fid does.
    eps = 1e-6 * np.eye(len(cov1))
    root = scipy.linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
  root = np.real(root)  # sqrtm returns tiny imaginary parts from rounding
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(root))


def gaussian_of(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of features [N, D]."""
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


class VideoDetector:
  """A TorchScript video network whose features FVD compares (see the module docstring)."""

  def __init__(self, path: str, batch_size: int = 8):
    try:
      import torch  # pylint: disable=g-import-not-at-top  (the `torch` extra)
    except ImportError:
      raise DetectorError(f"--fvd_detector={path}: running a TorchScript detector needs "
                          "PyTorch: pip install 'videomar_jax[torch]'.") from None
    self.path, self.batch_size = path, batch_size
    try:
      self.module = torch.jit.load(path, map_location="cpu").eval()
    except (OSError, RuntimeError, ValueError) as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise DetectorError(f"--fvd_detector={path}: cannot load it as a TorchScript "
                               f"file ({first}).") from None
    try:
      arguments = {a.name for a in self.module.forward.schema.arguments}
    except AttributeError:
      arguments = set()
    self.kwargs = {k: v for k, v in _DETECTOR_KWARGS.items() if k in arguments}
    self.sha256 = _sha256(path)

  def features(self, videos: np.ndarray) -> np.ndarray:
    """uint8 videos [B, F, H, W, 3] -> features [B, D]."""
    import torch  # pylint: disable=g-import-not-at-top
    out = []
    with torch.no_grad():
      for start in range(0, len(videos), self.batch_size):
        clip = torch.from_numpy(np.ascontiguousarray(videos[start:start + self.batch_size]))
        b, f, h, w, c = clip.shape
        frames = clip.reshape(b * f, h, w, c).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        frames = torch.nn.functional.interpolate(frames, size=(_SIZE, _SIZE), mode="bilinear",
                                                 align_corners=False, antialias=True)
        x = frames.reshape(b, f, c, _SIZE, _SIZE).permute(0, 2, 1, 3, 4).contiguous()
        feats = self.module(x, **self.kwargs)
        out.append(feats.reshape(b, -1).double().numpy())
    return np.concatenate(out)

  def statistics(self, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the features of uint8 videos [B, F, H, W, 3]."""
    return gaussian_of(self.features(videos))

  def fvd(self, real, fake: np.ndarray) -> float:
    """FVD of uint8 videos `fake` against `real`: videos [B, F, H, W, 3] like `fake`, or
    their `statistics` (the true videos' are computed once for several comparisons)."""
    real_stats = real if isinstance(real, tuple) else self.statistics(real)
    return frechet_distance(*real_stats, *self.statistics(fake))

  def protocol(self, num_videos: int, num_frames: int, num_given: int) -> dict:
    return {"detector": self.path, "detector_sha256": self.sha256,
            "detector_kwargs": self.kwargs, "input": f"float32 [B, 3, T, {_SIZE}, {_SIZE}] "
            "in [-1, 1], frames resized bilinearly with antialiasing",
            "num_videos": num_videos, "num_frames": num_frames,
            "given_frames_included": True, "num_given_frames": num_given}
