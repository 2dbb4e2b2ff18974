"""`videomar evaluate`: generate held-out bouncing-balls clips from their first frame and
write `<workdir>/report/`: a side-by-side GIF (generated | ground truth) per example, a plot
of the centre error per generated frame, and `metrics.json`.

The baseline copies the first frame to every later frame: a model that learned nothing about
motion scores about the same as it, one that learned the physics does better.
"""

import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from videomar_jax.data import pipeline as data_pipeline
from videomar_jax.data import bouncing_balls, latent_cache
from videomar_jax.eval import balls
from videomar_jax.sampling import video_io
from videomar_jax.sampling.generate import SamplerSettings
from videomar_jax.sampling.pipeline import VideoGenerator, load_checkpoint
from videomar_jax.train.trainer import open_dataset


def _pixel_source(config, workdir: str):
  """The test split of the run's pixel clips; for a run on cached latents, of the dataset
  the cache was encoded from (its metadata names it)."""
  if config.data.dataset != "latents":
    return open_dataset(config, workdir, split="test")
  source = latent_cache.read_meta(config.data.latents_dir)["source"]
  if source.get("dataset") != "bouncing_balls":
    raise ValueError(f"evaluate scores bouncing-balls clips; the latent cache "
                     f"{config.data.latents_dir} was encoded from {source}.")
  settings = {k: v for k, v in source.items() if k not in ("dataset", "data_dir")}
  return bouncing_balls.load(source["data_dir"], "test", **settings)


def held_out_clips(config, workdir: str, num_examples: int, num_frames: int, resolution: int):
  """The first `num_examples` test clips, cut to `num_frames` and resized: (video, centres,
  colours)."""
  source = _pixel_source(config, workdir)
  if num_examples > len(source):
    raise ValueError(f"{num_examples} examples asked for, the test split has {len(source)}.")
  videos, centres, colours = [], [], []
  for i in range(num_examples):
    clip = source[i]
    frames = clip["frames"][:num_frames]
    videos.append(data_pipeline.resize_video(frames, resolution))
    centres.append(data_pipeline.resize_centres(clip["centres"][:num_frames], frames.shape[1],
                                                frames.shape[2], resolution))
    colours.append(clip["colours"])
  return np.stack(videos), np.stack(centres), np.stack(colours)


def evaluate_run(workdir: str, num_examples: int = 8, num_frames: int = 0, num_steps: int = 16,
                 seed: int = 0, gif_scale: int = 4) -> dict:
  config, params, step = load_checkpoint(workdir)
  stage = config.stages[-1]
  num_frames = num_frames or stage["num_frames"]
  resolution = stage["resolution"]
  video, true_centres, colours = held_out_clips(config, workdir, num_examples, num_frames,
                                                resolution)
  generator = VideoGenerator(config, params)
  tokens_per_frame = (resolution // generator.stride) ** 2
  # The sampler counts latent frames; a causal tokenizer with temporal stride s decodes
  # 1 + s * (T - 1) pixel frames from T latent ones.
  settings = SamplerSettings(num_frames=generator.tokenizer.num_latent_frames(num_frames),
                             num_steps=min(num_steps, tokens_per_frame))
  start = time.perf_counter()
  generated, _ = generator(video[:, :1], settings, seed=seed)
  generate_seconds = time.perf_counter() - start

  copy_first = np.repeat(video[:, :1], num_frames, axis=1)
  errors = {"model": [], "baseline": []}
  for i in range(num_examples):
    for name, pred in (("model", generated[i]), ("baseline", copy_first[i])):
      errors[name].append(balls.centre_errors(pred[1:], true_centres[i, 1:], colours[i]))
  per_frame = {k: np.mean(v, axis=0) for k, v in errors.items()}  # [F - 1]

  out_dir = os.path.join(workdir, "report")
  os.makedirs(out_dir, exist_ok=True)
  for i in range(num_examples):
    gap = np.full((num_frames, resolution, 2, 3), 255, np.uint8)
    side_by_side = np.concatenate([generated[i], gap, video[i]], axis=2)
    video_io.write_video(os.path.join(out_dir, f"example_{i:02d}_generated_vs_truth"),
                         video_io.upscale(side_by_side, gif_scale), fps=4)
  _plot_errors(per_frame, os.path.join(out_dir, "centre_error_per_frame.png"))

  summary_path = os.path.join(workdir, "train_summary.json")
  train_seconds = None
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      train_seconds = json.load(f).get("train_seconds")
  metrics = {
      "checkpoint_step": step,
      "num_examples": num_examples,
      "num_frames": num_frames,
      "resolution": resolution,
      "steps_per_frame": settings.num_steps,
      "centre_error_px": float(per_frame["model"].mean()),
      "centre_error_px_per_frame": [float(e) for e in per_frame["model"]],
      "psnr": balls.psnr(generated[:, 1:], video[:, 1:]),
      "baseline_centre_error_px": float(per_frame["baseline"].mean()),
      "baseline_centre_error_px_per_frame": [float(e) for e in per_frame["baseline"]],
      "baseline_psnr": balls.psnr(copy_first[:, 1:], video[:, 1:]),
      "train_seconds": train_seconds,
      "generate_seconds": round(generate_seconds, 2),  # all examples, compilation included
  }
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=2)
  return metrics


def _plot_errors(per_frame: dict, path: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 3.5))
  frames = np.arange(1, len(per_frame["model"]) + 1)
  ax.plot(frames, per_frame["model"], "o-", label="VideoMAR (generated)")
  ax.plot(frames, per_frame["baseline"], "s--", label="copy first frame")
  ax.set_xlabel("generated frame")
  ax.set_ylabel("ball-centre error (px)")
  ax.set_title("held-out clips, given frame 0")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
