"""`videomar evaluate`: generate held-out bouncing-balls clips from their first frame and
write `<workdir>/report/`.

Two views of the model, each over `num_examples` test clips and every seed in `seeds`:
  * free-running: only frame 0 is given; every generated frame is the context of the next
    (what a user gets, errors accumulate);
  * teacher-forced: frame f is generated from the TRUE frames < f (one frame ahead, no
    accumulation: how well the model predicts and renders a single next frame).
Two references are scored the same way: copy the first frame to every later frame (a model
that learned no motion), and copy the true previous frame (what one frame of motion costs;
the teacher-forced model should get near it).

Metrics per generated frame: ball-centre error (px, a missing ball scores half the frame
size), the fraction of balls found, PSNR and SSIM. On these mostly black frames PSNR
rewards black frames (close to a mostly black truth), so read it next to the ball metrics.

Writes `metrics.json` (overall and per-frame figures, per seed too), `metrics_per_frame.png`
(the four metrics per generated frame), `contact_sheet.png` (rows of examples: free-running,
teacher-forced, truth) and a GIF/MP4 per example (generated | truth).
"""

import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from videomar_jax.data import pipeline as data_pipeline
from videomar_jax.data import sources
from videomar_jax.errors import UserError
from videomar_jax.eval import balls, quality
from videomar_jax.io import video_io
from videomar_jax.sampling.generate import SamplerSettings
from videomar_jax.sampling.video_generator import VideoGenerator

class EvaluateInputError(UserError):
  """Settings that do not fit the run being evaluated (the CLI prints the message alone)."""


# name in metrics.json -> label in plots
METHODS = {"model": "VideoMAR, free-running", "teacher_forced": "VideoMAR, teacher-forced",
           "baseline": "copy first frame", "copy_previous": "copy true previous frame"}


def held_out_clips(config, workdir: str, num_examples: int, num_frames: int, resolution: int):
  """The first `num_examples` test clips, cut to `num_frames` and resized: (video, centres,
  colours)."""
  entry = sources.data_source(config)
  if entry.pixel_test_split is None:
    raise EvaluateInputError(f"evaluate cannot score runs on data.dataset="
                             f"{config.data.dataset!r} (no pixel test split).")
  source = entry.pixel_test_split(config, workdir)
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


def score(pred: np.ndarray, truth: np.ndarray, true_centres: np.ndarray,
          colours: np.ndarray) -> dict:
  """Per-frame metrics of predicted frames 1.. of uint8 videos [B, F, H, W, 3] (frame 0 is
  given and not scored): each a list of F - 1 floats."""
  pred, truth = pred[:, 1:], truth[:, 1:]
  errors = np.stack([balls.centre_errors(p, c[1:], k)
                     for p, c, k in zip(pred, true_centres, colours)])
  found = np.stack([balls.found_fraction(p, k) for p, k in zip(pred, colours)])
  return {"centre_error_px": errors.mean(0), "balls_found": found.mean(0),
          "psnr": quality.psnr_per_frame(pred, truth),
          "ssim": quality.ssim_per_frame(pred, truth)}


def _overall(per_frame: dict, pred_truth=None) -> dict:
  out = {k: float(np.mean(v)) for k, v in per_frame.items()}
  if pred_truth is not None:  # PSNR of the whole video, as the report always gave it
    out["psnr"] = balls.psnr(*pred_truth)
  return out


def evaluate_run(workdir: str, weights: tuple, num_examples: int = 64, num_frames: int = 0,
                 num_steps: int = 16, seeds=(0,), seed: int | None = None,
                 gif_scale: int = 4, num_videos: int = 8, sheet_examples: int = 6,
                 sampler: dict | None = None, out_name: str = "report") -> dict:
  """Scores `weights` = (config, params, step) of the run in `workdir` (as
  `train.setup.restore_weights` reads them: the latest checkpoint's EMA weights) on
  held-out clips; see the module docstring. `seed` (one seed) is kept for callers of the old signature. `sampler` holds
  extra `SamplerSettings` fields (e.g. temperature); `out_name` the report's folder."""
  seeds = (seed,) if seed is not None else tuple(int(s) for s in seeds)
  if not seeds:
    raise ValueError("evaluate needs at least one seed.")
  config, params, step = weights
  stage = config.stages[-1]
  num_frames = num_frames or stage["num_frames"]
  resolution = stage["resolution"]
  video, true_centres, colours = held_out_clips(config, workdir, num_examples, num_frames,
                                                resolution)
  generator = VideoGenerator(config, params)
  tokens_per_frame = (resolution // generator.stride) ** 2
  # The sampler counts latent frames; a causal tokenizer with temporal stride s decodes
  # 1 + s * (T - 1) pixel frames from T latent ones.
  # Bidirectional models (the ablation) have no KV cache: they re-run the clip every step.
  causal = config.model.get("temporal_attention", "causal") == "causal"
  settings = SamplerSettings(num_frames=generator.tokenizer.num_latent_frames(num_frames),
                             num_steps=min(num_steps, tokens_per_frame),
                             mode="kv_cache" if causal else "no_cache", **(sampler or {}))
  num_generated = settings.num_frames - 1
  if settings.temperature == "list" and len(settings.temperatures) != num_generated:
    raise EvaluateInputError(f"--temperature lists {len(settings.temperatures)} values; this "
                             f"run generates {num_generated} frames after the given one.")

  references = {"baseline": np.repeat(video[:, :1], num_frames, axis=1),
                "copy_previous": np.concatenate([video[:, :1], video[:, :-1]], axis=1)}
  per_seed, videos, generate_seconds = {}, {}, 0.0
  for s in seeds:
    start = time.perf_counter()
    free, _ = generator(video[:, :1], settings, seed=s)
    forced, _ = generator.teacher_forced(video, settings, seed=s)
    generate_seconds += time.perf_counter() - start
    videos.setdefault("model", free)
    videos.setdefault("teacher_forced", forced)
    per_seed[s] = {name: score(pred, video, true_centres, colours)
                   for name, pred in (("model", free), ("teacher_forced", forced))}
    per_seed[s]["model_psnr_video"] = balls.psnr(free[:, 1:], video[:, 1:])
    per_seed[s]["teacher_forced_psnr_video"] = balls.psnr(forced[:, 1:], video[:, 1:])
  refs = {name: score(pred, video, true_centres, colours) for name, pred in references.items()}
  per_frame = dict(refs)
  for name in ("model", "teacher_forced"):
    per_frame[name] = {k: np.mean([per_seed[s][name][k] for s in seeds], axis=0)
                       for k in refs["baseline"]}

  out_dir = os.path.join(workdir, out_name)
  os.makedirs(out_dir, exist_ok=True)
  for i in range(min(num_videos, num_examples)):
    gap = np.full((num_frames, resolution, 2, 3), 255, np.uint8)
    side_by_side = np.concatenate([videos["model"][i], gap, video[i]], axis=2)
    video_io.write_video(os.path.join(out_dir, f"example_{i:02d}_generated_vs_truth"),
                         video_io.upscale(side_by_side, gif_scale), fps=4)
  write_contact_sheet(os.path.join(out_dir, "contact_sheet.png"), videos["model"],
                      videos["teacher_forced"], video, sheet_examples, gif_scale)
  plot_per_frame(per_frame, os.path.join(out_dir, "metrics_per_frame.png"))

  summary_path = os.path.join(workdir, "train_summary.json")
  train_seconds = None
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      train_seconds = json.load(f).get("train_seconds")
  metrics = _metrics_json(per_frame, per_seed, references, video, seeds)
  metrics = {"checkpoint_step": step, "num_examples": num_examples, "seeds": list(seeds),
             "num_frames": num_frames, "resolution": resolution,
             "steps_per_frame": settings.num_steps, **metrics,
             "train_seconds": train_seconds,
             # every seed, both views, compilation included
             "generate_seconds": round(generate_seconds, 2)}
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=2)
  return metrics


def _metrics_json(per_frame, per_seed, references, video, seeds) -> dict:
  """Flat keys: <prefix>centre_error_px, <prefix>balls_found_fraction, <prefix>psnr,
  <prefix>ssim and their _per_frame lists, for every method; plus per-seed figures."""
  prefixes = {"model": "", "teacher_forced": "teacher_forced_", "baseline": "baseline_",
              "copy_previous": "copy_previous_"}
  names = {"centre_error_px": "centre_error_px", "balls_found": "balls_found_fraction",
           "psnr": "psnr", "ssim": "ssim"}
  out = {}
  for method, prefix in prefixes.items():
    for key, name in names.items():
      values = per_frame[method][key]
      out[f"{prefix}{name}"] = float(np.mean(values))
      out[f"{prefix}{name}_per_frame"] = [float(v) for v in values]
  # PSNR of whole videos (MSE over every generated pixel), as earlier reports gave it.
  for method in ("baseline", "copy_previous"):
    out[f"{prefixes[method]}psnr"] = balls.psnr(references[method][:, 1:], video[:, 1:])
  out["psnr"] = float(np.mean([per_seed[s]["model_psnr_video"] for s in seeds]))
  out["teacher_forced_psnr"] = float(np.mean([per_seed[s]["teacher_forced_psnr_video"]
                                              for s in seeds]))
  out["centre_error_vs_copy_first"] = out["baseline_centre_error_px"] / max(
      out["centre_error_px"], 1e-9)
  out["per_seed"] = {
      str(s): {f"{prefixes[m]}{names[k]}": float(np.mean(per_seed[s][m][k]))
               for m in ("model", "teacher_forced") for k in names} for s in seeds}
  return out


def write_contact_sheet(path: str, free: np.ndarray, forced: np.ndarray, truth: np.ndarray,
                        num_examples: int, scale: int = 4) -> None:
  """A PNG grid: for each example three rows (free-running, teacher-forced, truth), one
  column per frame; a white line between frames and a thicker one between examples."""
  num_examples = min(num_examples, len(truth))
  f, h, w = truth.shape[1:4]
  gap = 2
  rows = []
  for i in range(num_examples):
    for clip in (free[i], forced[i], truth[i]):
      frames = [np.pad(fr, ((0, 0), (0, gap), (0, 0)), constant_values=255) for fr in clip]
      rows.append(np.pad(np.concatenate(frames, axis=1), ((0, gap), (0, 0), (0, 0)),
                         constant_values=255))
    rows.append(np.full((3 * gap, rows[-1].shape[1], 3), 255, np.uint8))
  sheet = np.concatenate(rows, axis=0)
  sheet = np.repeat(np.repeat(sheet, scale, axis=0), scale, axis=1)
  Image.fromarray(sheet).save(path)


def plot_per_frame(per_frame: dict, path: str) -> None:
  titles = {"centre_error_px": "ball-centre error (px)", "balls_found": "balls found",
            "psnr": "PSNR (dB)", "ssim": "SSIM"}
  styles = {"model": "o-", "teacher_forced": "^-", "baseline": "s--", "copy_previous": "d:"}
  fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
  for ax, (key, title) in zip(axes.ravel(), titles.items()):
    for method, label in METHODS.items():
      values = per_frame[method][key]
      ax.plot(np.arange(1, len(values) + 1), values, styles[method], label=label)
    ax.set_title(title)
    ax.set_xlabel("generated frame")
  axes[0, 0].legend(fontsize=8)
  fig.suptitle("held-out clips, given frame 0")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def report_summary(metrics: dict) -> str:
  """The figures that matter, in a few lines for the console."""
  rows = [("free-running", ""), ("teacher-forced", "teacher_forced_"),
          ("copy first frame", "baseline_"), ("copy true previous", "copy_previous_")]
  lines = [f"{metrics['num_examples']} held-out clips x seeds {metrics['seeds']}: "
           "centre error px | balls found | PSNR | SSIM"]
  for label, p in rows:
    lines.append(f"  {label:<19} {metrics[p + 'centre_error_px']:6.2f} | "
                 f"{metrics[p + 'balls_found_fraction']:5.1%} | {metrics[p + 'psnr']:5.2f} | "
                 f"{metrics[p + 'ssim']:.3f}")
  lines.append(f"  free-running error is {metrics['centre_error_vs_copy_first']:.2f}x better "
               "than copying the first frame" if metrics["centre_error_vs_copy_first"] >= 1
               else f"  free-running error is {1 / metrics['centre_error_vs_copy_first']:.2f}x "
               "worse than copying the first frame")
  return "\n".join(lines)
