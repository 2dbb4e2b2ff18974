"""Moving MNIST is the standard protocol, built offline and deterministically, and `evaluate`
scores any dataset: per-frame MSE / SSIM / PSNR after the given frames, and FVD with a
detector the user supplies."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from conftest import REPO, load_config
from videomar_jax.data import moving_mnist, sources
from videomar_jax.eval import evaluate, fvd, quality
from videomar_jax.models.videomar import VideoMAR
from videomar_jax.tokenizers import model_token_dim


def test_the_digits_are_mnist_and_the_test_digits_are_unseen():
  train, test = moving_mnist.mnist_digits("train"), moving_mnist.mnist_digits("test")
  assert train.shape == (4000, 28, 28) and test.shape == (1000, 28, 28)
  assert train.dtype == np.uint8 and train.max() == 255 and 0.1 < (train > 127).mean() < 0.3
  train_rows = {d.tobytes() for d in train}
  assert not any(d.tobytes() in train_rows for d in test)


def test_clips_follow_the_protocol():
  rng = np.random.default_rng(0)
  corners = moving_mnist.trajectories(rng, 64, 20, 2)
  free = moving_mnist.CANVAS - moving_mnist.DIGIT
  assert corners.min() >= 0 and corners.max() <= free
  # 0.1 of the free canvas a frame; integer corners, and a bounce shortens one step.
  speed = np.linalg.norm(np.diff(corners, axis=1), axis=-1)
  assert np.median(speed) == pytest.approx(0.1 * free, abs=1.0)
  assert speed.max() <= 0.1 * free + 1.5
  # Every clip bounces off some border within 20 frames or moves straight: a reversal of
  # direction happens in some clips.
  steps = np.sign(np.diff(corners, axis=1))
  assert np.any((steps[:, 1:] != 0) & (steps[:, 1:] == -steps[:, :-1]))
  clips = list(moving_mnist.generate_split("test", 3, 20, 2, seed=0))
  assert all(c.shape == (20, 64, 64) and c.dtype == np.uint8 for c in clips)
  again = list(moving_mnist.generate_split("test", 3, 20, 2, seed=0))
  other = list(moving_mnist.generate_split("test", 3, 20, 2, seed=1))
  np.testing.assert_array_equal(clips, again)
  assert not np.array_equal(clips[0], other[0])
  # Two digits of ~19% ink each, at most overlapping: ~2-9% of a 64x64 frame is ink.
  ink = np.mean([(c > 127).mean() for c in clips])
  assert 0.02 < ink < 0.1


def test_the_built_dataset_is_rgb_and_equals_the_generator(tmp_path):
  source = moving_mnist.load(str(tmp_path), "test", num_train_clips=4, num_test_clips=3)
  assert len(source) == 3
  frames = source[1]["frames"]
  assert frames.shape == (20, 64, 64, 3)
  np.testing.assert_array_equal(frames[..., 0], frames[..., 2])
  expected = list(moving_mnist.generate_split("test", 3, 20, 2, seed=0))[1]
  np.testing.assert_array_equal(frames[..., 0], expected)


def test_mse_per_frame_is_summed_over_pixels_and_channel_averaged():
  truth = np.zeros((2, 3, 8, 8, 3), np.uint8)
  pred = truth.copy()
  pred[:, 1, :2, :2] = 255  # 4 pixels fully wrong in frame 1 of both clips
  pred[0, 2, 0, 0, 0] = 255  # one channel of one pixel in frame 2 of clip 0
  np.testing.assert_allclose(quality.mse_per_frame(pred, truth), [0.0, 4.0, 1 / 6])


def _random_run(tmp_path, num_test_clips=3):
  """configs/moving_mnist.py with a very small model, data under tmp_path."""
  config = load_mm_config()
  config.model.width, config.model.depth, config.model.num_heads = 32, 1, 2
  config.head.width, config.head.depth, config.head.num_sampling_steps = 32, 1, 4
  config.data.num_train_clips, config.data.num_test_clips = 4, num_test_clips
  config.data.data_dir = str(tmp_path / "data")
  return config


def _weights(config):
  """(config, params, step) of the untrained model, as `restore_weights` returns them."""
  model = VideoMAR(config, model_token_dim(config))
  return config, model.init(jax.random.key(0)), 0


def test_evaluate_scores_moving_mnist_after_ten_given_frames(tmp_path):
  config = _random_run(tmp_path)
  metrics = evaluate.evaluate_run(str(tmp_path), _weights(config), num_examples=2, num_steps=2,
                                  num_videos=1, sheet_examples=1)
  assert metrics["dataset"] == "moving_mnist" and metrics["num_given_frames"] == 10
  assert metrics["num_frames"] == 20
  for prefix in ("", "teacher_forced_", "baseline_", "copy_previous_"):
    for name in ("mse", "ssim", "psnr"):
      assert len(metrics[f"{prefix}{name}_per_frame"]) == 10, (prefix, name)
  assert "centre_error_px" not in metrics and "balls_found_fraction" not in metrics
  # The copy-last reference is scored from the truth alone: recompute it here.
  truth = np.stack([moving_mnist.load(config.data.data_dir, "test", num_train_clips=4,
                                      num_test_clips=3)[i]["frames"] for i in range(2)])
  copy_last = np.concatenate([truth[:, :10], np.repeat(truth[:, 9:10], 10, axis=1)], axis=1)
  np.testing.assert_allclose(metrics["baseline_mse_per_frame"],
                             quality.mse_per_frame(copy_last[:, 10:], truth[:, 10:]))
  assert metrics["baseline_mse"] > 50  # two digits move ~3.6 px a frame
  assert metrics["mse_vs_copy_last"] == pytest.approx(metrics["baseline_mse"] / metrics["mse"])
  report = os.path.join(str(tmp_path), "report")
  for name in ("metrics.json", "metrics_per_frame.png", "contact_sheet.png",
               "example_00_generated_vs_truth.gif"):
    assert os.path.getsize(os.path.join(report, name)) > 0
  assert "copy last given" in evaluate.report_summary(metrics)
  with pytest.raises(evaluate.EvaluateInputError, match="leaves nothing to generate"):
    evaluate.evaluate_run(str(tmp_path), _weights(config), num_examples=1, num_frames=10)
  with pytest.raises(evaluate.EvaluateInputError, match="--num_given=-1"):
    evaluate.evaluate_run(str(tmp_path), _weights(config), num_examples=1, num_given=-1)
  with pytest.raises(evaluate.EvaluateInputError, match="needs --num_examples >= 2"):
    evaluate.evaluate_run(str(tmp_path), _weights(config), num_examples=1,
                          fvd_detector="any.pt")


def test_frechet_distance_matches_the_closed_form():
  # Commuting covariances: the distance is |dmu|^2 + sum (sqrt(a) - sqrt(b))^2 on the
  # eigenvalues, in any rotated basis.
  rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
  a, b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([4.0, 1.0, 0.5, 0.25])
  mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = fvd.frechet_distance(rotation @ mu1, rotation @ np.diag(a) @ rotation.T,
                             rotation @ mu2, rotation @ np.diag(b) @ rotation.T)
  assert got == pytest.approx(expected, rel=1e-9)
  assert fvd.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0, abs=1e-9)
  # Fitted to samples of the two Gaussians, it converges to the same value.
  rng = np.random.default_rng(1)
  x = rng.normal(size=(200000, 4)) * np.sqrt(a) + mu1
  y = rng.normal(size=(200000, 4)) * np.sqrt(b) + mu2
  sampled = fvd.frechet_distance(*fvd.gaussian_of(x), *fvd.gaussian_of(y))
  assert sampled == pytest.approx(np.sum((mu1 - mu2) ** 2) + np.sum(
      (np.sqrt(a) - np.sqrt(b)) ** 2), rel=0.02)


class _TinyDetector(torch.nn.Module):
  """A random 3D-conv network with the I3D TorchScript file's call convention."""

  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv3d(3, 8, kernel_size=3, stride=(1, 8, 8))
    self.head = torch.nn.Linear(8, 5)

  def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
              return_features: bool = False) -> torch.Tensor:
    assert x.shape[1] == 3 and x.shape[-1] == 224 and not rescale and not resize
    features = torch.relu(self.conv(x)).mean(dim=(2, 3, 4))
    return features if return_features else self.head(features)


@pytest.fixture
def detector_path(tmp_path):
  torch.manual_seed(0)
  path = str(tmp_path / "tiny_detector.pt")
  torch.jit.script(_TinyDetector()).save(path)
  return path


def test_fvd_with_a_user_detector(detector_path, tmp_path):
  detector = fvd.VideoDetector(detector_path)
  assert detector.kwargs == {"rescale": False, "resize": False, "return_features": True}
  rng = np.random.default_rng(0)
  real = rng.integers(0, 256, size=(12, 4, 32, 32, 3), dtype=np.uint8)
  assert detector.features(real).shape == (12, 8)
  assert detector.fvd(real, real) == pytest.approx(0.0, abs=1e-6)
  assert detector.fvd(detector.statistics(real), real) == pytest.approx(0.0, abs=1e-6)
  darker = (real // 2).astype(np.uint8)
  assert detector.fvd(real, darker) > 1e-3
  protocol = detector.protocol(num_videos=12, num_frames=4, num_given=1)
  assert protocol["detector_sha256"] == fvd._sha256(detector_path)  # pylint: disable=protected-access
  assert protocol["given_frames_included"] is True
  junk = tmp_path / "junk.pt"
  junk.write_bytes(b"not a torchscript file")
  with pytest.raises(fvd.DetectorError, match=r"cannot load it as a TorchScript file"):
    fvd.VideoDetector(str(junk))


def test_evaluate_reports_fvd_and_its_protocol(detector_path, tmp_path):
  config = _random_run(tmp_path, num_test_clips=4)
  metrics = evaluate.evaluate_run(str(tmp_path), _weights(config), num_examples=4,
                                  num_steps=2, num_frames=12, num_videos=0, sheet_examples=1,
                                  fvd_detector=detector_path)
  assert metrics["fvd"] > 0 and metrics["baseline_fvd"] > 0
  assert metrics["fvd_protocol"]["num_videos"] == 4
  assert metrics["fvd_protocol"]["num_frames"] == 12
  with open(os.path.join(str(tmp_path), "report", "metrics.json")) as f:
    assert json.load(f)["fvd_protocol"]["detector_sha256"] == fvd._sha256(detector_path)  # pylint: disable=protected-access


def test_data_build_moving_mnist_from_the_command_line(tmp_path):
  result = subprocess.run(
      # No --dataset: the config's (what `train --config=...moving_mnist.py` reads).
      [sys.executable, "-m", "videomar_jax.cli.main", "data", "build",
       f"--config={REPO}/configs/moving_mnist.py", f"--data_dir={tmp_path}",
       "--num_train_clips=5", "--num_test_clips=2"],
      capture_output=True, text=True, cwd=REPO, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-2000:]
  assert "train5_test2_frames20_digits2_seed0" in result.stdout
  assert "'train': 5" in result.stdout and "'test': 2" in result.stdout
  assert sources.data_source(load_mm_config()).num_given_frames == 10


def load_mm_config():
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("mm_config",
                                                os.path.join(REPO, "configs", "moving_mnist.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")
