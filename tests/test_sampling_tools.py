"""Video I/O, ball-centre metrics, the sampler benchmark, and `videomar sample/evaluate`."""

import glob
import json
import os
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest

from conftest import REPO, small_config
from videomar_jax.config_files import load_config
from videomar_jax.sampling.generate import SamplerSettings
from videomar_jax.tools import bench_sampler as bench
from videomar_jax.data import bouncing_balls
from videomar_jax.eval import balls
from videomar_jax.models import sequence
from videomar_jax.io import video_io
from videomar_jax.tokenizers.base import unit_to_video
from videomar_jax.tokenizers.patch import PatchTokenizer


def test_centres_found_from_colour_masks_match_the_simulation():
  colour_ids = np.array([0, 3])
  start = np.array([[8.0, 6.0], [22.0, 10.0]])
  centres = bouncing_balls.simulate(start, colour_ids, num_frames=6, resolution=32, radius=3,
                                    gravity=0.5, restitution=0.9, substeps=4)
  frames = bouncing_balls.render(centres, colour_ids, 32, 3)
  colours = bouncing_balls.PALETTE_RGB[colour_ids]
  errors = balls.centre_errors(frames, centres, colours)
  assert errors.shape == (6,) and errors.max() < 0.6
  # An empty frame loses both balls and scores the penalty (half the frame size).
  assert balls.centre_errors(np.zeros_like(frames), centres, colours).min() == 16.0
  assert balls.psnr(frames, frames) > 90 and balls.psnr(frames, 255 - frames) < 5


def test_report_scores_references_and_predictions_the_same_way(tmp_path):
  """`score` on the truth gives the metric's floor, on copy-previous its known error; balls
  found and SSIM see a blank frame for what it is; the contact sheet has 3 rows an example."""
  from videomar_jax.eval import evaluate as report  # pylint: disable=import-outside-toplevel
  colour_ids = np.array([0, 3])
  start = np.array([[8.0, 6.0], [22.0, 10.0]])
  centres = bouncing_balls.simulate(start, colour_ids, num_frames=5, resolution=32, radius=3,
                                    gravity=0.5, restitution=0.9, substeps=4)
  truth = bouncing_balls.render(centres, colour_ids, 32, 3)[None]
  colours = bouncing_balls.PALETTE_RGB[colour_ids][None]
  perfect = report.score(truth, truth, centres[None], colours)
  assert np.all(perfect["centre_error_px"] < 0.6) and np.all(perfect["balls_found"] == 1)
  assert np.allclose(perfect["ssim"], 1.0) and np.all(perfect["psnr"] > 90)
  previous = np.concatenate([truth[:, :1], truth[:, :-1]], axis=1)
  moved = report.score(previous, truth, centres[None], colours)
  step = np.linalg.norm(np.diff(centres, axis=0), axis=-1).mean(-1)  # true motion per frame
  np.testing.assert_allclose(moved["centre_error_px"], step, atol=0.6)
  blank = truth.copy()
  blank[:, 2:] = 0
  lost = report.score(blank, truth, centres[None], colours)
  np.testing.assert_array_equal(lost["balls_found"], [1, 0, 0, 0])
  assert lost["centre_error_px"][1] == 16.0 and lost["ssim"][1] < perfect["ssim"][1]
  path = str(tmp_path / "sheet.png")
  report.write_contact_sheet(path, blank, previous, truth, 1, scale=1)
  assert imageio.imread(path).shape == (3 * (32 + 2) + 6, 5 * (32 + 2), 3)


def test_reading_conditioning_files(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 255, (20, 18, 3), dtype=np.uint8)
  imageio.imwrite(tmp_path / "rgb.png", rgb)
  frames = video_io.read_frames(str(tmp_path / "rgb.png"))
  assert frames.shape == (1, 20, 18, 3)
  resized = video_io.fit_to_stride(frames, 4)
  assert resized.shape == (1, 20, 16, 3)
  imageio.imwrite(tmp_path / "grey.png", rgb[..., 0])
  with pytest.raises(video_io.VideoInputError, match="greyscale"):
    video_io.read_frames(str(tmp_path / "grey.png"))
  (tmp_path / "junk.mp4").write_bytes(b"not a video")
  with pytest.raises(video_io.VideoInputError, match="junk.mp4: not an image or video: its "
                     "first bytes match none of PNG"):
    video_io.read_frames(str(tmp_path / "junk.mp4"))
  with pytest.raises(video_io.VideoInputError, match="no such file"):
    video_io.read_frames(str(tmp_path / "missing.png"))
  clip = np.stack([rgb[:, :16], 255 - rgb[:, :16], rgb[:, 2:]])  # distinct frames: GIF
  paths = video_io.write_video(str(tmp_path / "clip"), clip)     # writers merge repeats
  assert all(os.path.getsize(p) > 0 for p in paths)
  assert [video_io.read_frames(p).shape[0] for p in paths] == [3, 3]
  # Unreadable media say what is wrong, without ffmpeg's banner or install hints.
  (tmp_path / "empty.mp4").write_bytes(b"")
  with pytest.raises(video_io.VideoInputError, match="empty.mp4: the file is empty"):
    video_io.read_frames(str(tmp_path / "empty.mp4"))
  for name in ("clip.mp4", "clip.gif"):
    data = (tmp_path / name).read_bytes()
    (tmp_path / f"cut_{name}").write_bytes(data[:len(data) // 3])
    with pytest.raises(video_io.VideoInputError) as info:
      video_io.read_frames(str(tmp_path / f"cut_{name}"))
    message = str(info.value)
    assert "cannot be decoded: truncated or damaged" in message, message
    assert "ffmpeg version" not in message and "pip install" not in message
  (tmp_path / "cut.png").write_bytes((tmp_path / "rgb.png").read_bytes()[:200])
  with pytest.raises(video_io.VideoInputError, match="a PNG image .* truncated or damaged"):
    video_io.read_frames(str(tmp_path / "cut.png"))
  balls_clip = bouncing_balls.render(np.array([[[4.0, 4.0]], [[9.0, 6.0]]]), np.array([2]),
                                     16, 3)
  gif = video_io.write_video(str(tmp_path / "balls"), balls_clip)[1]
  np.testing.assert_array_equal(video_io.read_frames(gif), balls_clip)  # few colours: exact


def test_sampler_benchmark_reports_every_key():
  config = small_config()
  config.head.num_sampling_steps = 5
  result = bench.bench_sampler(config, grid_side=3, generated_frames=2, steps_per_frame=3,
                               repeats=1, log=lambda *_: None)
  for key in ("kv_cache_s", "no_cache_s", "next_token_s", "speedup_no_cache_over_kv",
              "speedup_next_token_over_kv", "generated_frames", "steps_per_frame",
              "tokens_per_frame", "achieved_flops", "peak_flops", "kv_cache_flops"):
    assert key in result and np.isfinite(result[key]) and result[key] > 0, key
  assert result["tokens_per_frame"] == 9 and result["steps_per_frame"] == 3
  for mode in ("kv_cache", "no_cache", "next_token"):  # the transformer / head time split
    transformer, head = result[f"{mode}_transformer_s"], result[f"{mode}_head_s"]
    # At this toy size the two timings are within noise of each other: only the invariants.
    assert transformer >= 0 and head >= 0
    np.testing.assert_allclose(transformer + head, result[f"{mode}_s"])
    assert 0 < result[f"{mode}_transformer_flops_share"] < 1
  with pytest.raises(ValueError, match="bench_steps"):
    bench.bench_sampler(config, grid_side=3, steps_per_frame=10, log=lambda *_: None)


def test_sampler_benchmark_runs_only_the_modes_asked_for():
  # --bench_modes / --nobench_time_split: what launch/gpu_bench.sh runs, one mode a stage.
  config = small_config()
  config.head.num_sampling_steps = 5
  result = bench.bench_sampler(config, grid_side=3, generated_frames=1, steps_per_frame=3,
                               repeats=1, modes=("no_cache",), time_split=False,
                               log=lambda *_: None)
  assert result["no_cache_s"] > 0 and result["peak_flops"] > 0
  assert not [key for key in result if key.startswith(("kv_cache", "next_token"))]
  assert "no_cache_head_s" not in result  # no 2-step head run
  with pytest.raises(ValueError, match="--bench_modes=warp: choose one or more of kv_cache"):
    bench.bench_sampler(config, grid_side=3, modes=("warp",), log=lambda *_: None)


def test_sampler_benchmark_flops_follow_the_cache_slices():
  # kv_cache reads frame f's slice of the cache: fewer FLOPs than over every slot, and far
  # fewer than re-running the clip (no_cache); the default preset is transformer-dominated.
  bench_config = load_config("videomar:" + bench.DEFAULT_PRESET)
  flops = {}
  for mode, slicing in (("kv_cache", "pow2"), ("kv_cache", "none"), ("no_cache", "pow2")):
    settings = SamplerSettings(num_frames=7, num_steps=16, mode=mode, cache_slicing=slicing)
    flops[mode, slicing] = bench.generation_flops(bench_config, 256, 1, 7, settings)
  assert flops["kv_cache", "pow2"]["transformer"] < flops["kv_cache", "none"]["transformer"]
  assert flops["no_cache", "pow2"]["transformer"] > 4 * flops["kv_cache", "pow2"]["transformer"]
  kv = flops["kv_cache", "pow2"]
  assert kv["transformer"] / kv["total"] > 0.8


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "videomar_jax.cli.main", *args],
                        capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_train_then_sample_and_evaluate_from_the_command_line(tmp_path):
  workdir = str(tmp_path / "run")
  config_flags = (f"--config={REPO}/configs/videomar.py:tiny",
                  f"--config.data.data_dir={tmp_path}/data", "--config.data.num_train_clips=16",
                  "--config.data.num_test_clips=4", "--config.data.num_frames=6",
                  "--config.data.resolution=16", "--config.batch_size=4",
                  "--config.model.width=32", "--config.model.depth=2", "--config.head.width=32",
                  "--config.head.num_sampling_steps=10", "--config.stages[0].steps=2",
                  "--config.stages[0].resolution=16", "--config.stages[0].num_frames=3",
                  "--config.stages[1].steps=2", "--config.stages[1].resolution=16",
                  "--config.stages[1].num_frames=4")
  result = _cli("train", f"--workdir={workdir}", *config_flags)
  assert result.returncode == 0, result.stderr[-3000:]

  frames = bouncing_balls.render(np.array([[[5.0, 5.0]]]), np.array([1]), 16, 3)[0]
  imageio.imwrite(tmp_path / "first.png", frames)
  out = str(tmp_path / "out" / "video.mp4")  # sample creates the folder
  result = _cli("sample", f"--workdir={workdir}", f"--image={tmp_path}/first.png",
                f"--out={out}", "--num_frames=5", "--num_steps=4", "--save_latents")
  assert result.returncode == 0, result.stderr[-3000:]
  assert video_io.read_frames(out).shape == (5, 16, 16, 3)
  tokens = np.load(out.replace(".mp4", ".npy"))
  assert tokens.shape == (5, 16, 48)
  # The given frame comes back unchanged (decoded from the saved tokens: exact).
  latents = sequence.unpatchify(tokens[None, :1], 1, 4, 4)
  np.testing.assert_array_equal(unit_to_video(PatchTokenizer(4).decode(latents))[0, 0], frames)

  # Export to the authors' PyTorch layout; sampling from the export gives the same video.
  exported = f"{tmp_path}/exported.safetensors"
  result = _cli("torch", "export", f"--workdir={workdir}", f"--out={exported}")
  assert result.returncode == 0, result.stderr[-3000:]
  result = _cli("sample", f"--torch_checkpoint={exported}", *config_flags,
                f"--image={tmp_path}/first.png", f"--out={tmp_path}/from_torch.mp4",
                "--num_frames=5", "--num_steps=4", "--save_latents")
  assert result.returncode == 0, result.stderr[-3000:]
  np.testing.assert_array_equal(np.load(f"{tmp_path}/from_torch.npy"), tokens)

  # Video-to-video from two given frames, and a checkpoint folder instead of a workdir.
  video_io.write_video(str(tmp_path / "cond"), np.stack([frames, np.roll(frames, 2, 1)]))
  checkpoint = sorted(glob.glob(f"{workdir}/checkpoints/[0-9]*"))[-1]
  result = _cli("sample", f"--checkpoint={checkpoint}", f"--video={tmp_path}/cond.gif",
                f"--out={tmp_path}/v2v.mp4", "--num_frames=4", "--num_steps=2",
                "--temperature=1.0,0.9")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "after 2 given" in result.stdout
  assert video_io.read_frames(f"{tmp_path}/v2v.mp4").shape[0] == 4

  result = _cli("sample", f"--workdir={workdir}", f"--image={tmp_path}/nope.png",
                f"--out={out}")
  assert result.returncode != 0 and "no such file" in result.stderr
  # Settings that would be silently wrong are refused before generating, in one line.
  for args, message in (
      (("--image=" + f"{tmp_path}/first.png", "--temperature=-1"), "must be >= 0"),
      (("--image=" + f"{tmp_path}/first.png", "--cfg=3"), "has no effect without a context"),
      (("--video=" + f"{tmp_path}/cond.gif", "--num_given=5"), "has 2 frame(s)"),
      (("--image=" + f"{tmp_path}/first.png", "--num_given=1"), "--num_given is for --video")):
    result = _cli("sample", f"--workdir={workdir}", f"--out={tmp_path}/x.mp4", *args)
    assert result.returncode != 0 and message in result.stderr, (args, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert not os.path.exists(f"{tmp_path}/x.mp4")

  result = _cli("evaluate", f"--workdir={workdir}", "--num_examples=2", "--num_steps=4",
                "--seeds=0,1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "teacher-forced" in result.stdout and "copy true previous" in result.stdout
  with open(f"{workdir}/report/metrics.json") as f:
    metrics = json.load(f)
  for key in ("centre_error_px", "centre_error_px_per_frame", "psnr",
              "baseline_centre_error_px", "baseline_psnr", "train_seconds",
              "generate_seconds", "teacher_forced_centre_error_px",
              "copy_previous_centre_error_px", "balls_found_fraction",
              "balls_found_fraction_per_frame", "ssim", "baseline_ssim"):
    assert metrics[key] is not None, key
  assert metrics["num_examples"] == 2 and metrics["seeds"] == [0, 1]
  assert sorted(metrics["per_seed"]) == ["0", "1"]
  for key in ("centre_error_px", "balls_found_fraction", "ssim", "psnr"):
    assert len(metrics[f"teacher_forced_{key}_per_frame"]) == 3
  assert len(metrics["centre_error_px_per_frame"]) == 3
  for name in ("metrics_per_frame.png", "contact_sheet.png"):
    assert os.path.getsize(f"{workdir}/report/{name}") > 0
  assert len(glob.glob(f"{workdir}/report/example_*_generated_vs_truth.gif")) == 2
  result = _cli("evaluate", f"--workdir={workdir}", "--seeds=0,x")
  assert result.returncode != 0 and "--seeds" in result.stderr
  result = _cli("evaluate", f"--workdir={workdir}", "--num_examples=2", "--temperature=0.9,0.8")
  assert result.returncode != 0 and "generates 3 frames" in result.stderr
  assert "Traceback" not in result.stderr
