"""`videomar evaluate`: generate held-out clips of any data source from their given frames and
write `<workdir>/report/`.

The given frames are what the data source's protocol gives (`DataSource.num_given_frames`:
1 for image-to-video, 10 for Moving MNIST) unless `num_given` says otherwise. Two views of
the model, each over `num_examples` test clips and every seed in `seeds`:
  * free-running: only the given frames are true; every generated frame is the context of
    the next (what a user gets, errors accumulate);
  * teacher-forced: frame f is generated from the TRUE frames < f (one frame ahead, no
    accumulation: how well the model predicts and renders a single next frame).
Two references are scored the same way: copy the last given frame to every later frame (a
model that learned no motion), and copy the true previous frame (what one frame of motion
costs; the teacher-forced model should get near it).

Metrics per generated frame, for every dataset: PSNR, SSIM and MSE (squared error of [0, 1]
intensities, averaged over the colour channels and summed over the frame's pixels: the
per-frame MSE the Moving MNIST literature reports). For `bouncing_balls`, also the
ball-centre error (px, a missing ball scores half the frame size) and the fraction of balls
found; on those mostly black frames PSNR rewards black frames, so read it next to the ball
metrics. With a detector (`fvd_detector`), the Frechet video distance of the generated and
the copy-last videos to the true ones (`eval/fvd.py`; its protocol is in metrics.json).

Writes `metrics.json` (overall and per-frame figures, per seed too), `metrics_per_frame.png`,
`contact_sheet.png` (rows of examples: free-running, teacher-forced, truth) and a GIF/MP4 per
example (generated | truth).
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


# name in metrics.json -> label in plots and the summary
METHODS = {"model": "VideoMAR, free-running", "teacher_forced": "VideoMAR, teacher-forced",
           "baseline": "copy last given frame", "copy_previous": "copy true previous frame"}
PREFIXES = {"model": "", "teacher_forced": "teacher_forced_", "baseline": "baseline_",
            "copy_previous": "copy_previous_"}
# per-frame metric -> its name in metrics.json
PIXEL_METRICS = {"psnr": "psnr", "ssim": "ssim", "mse": "mse"}
BALL_METRICS = {"centre_error_px": "centre_error_px", "balls_found": "balls_found_fraction"}


def held_out_clips(config, workdir: str, num_examples: int, num_frames: int, resolution: int):
  """The first `num_examples` test clips, cut to `num_frames` and resized: (video, centres,
  colours); centres and colours are None for data without balls."""
  entry = sources.data_source(config)
  if entry.pixel_test_split is None:
    raise EvaluateInputError(f"evaluate cannot score runs on data.dataset="
                             f"{config.data.dataset!r} (no pixel test split).")
  source = entry.pixel_test_split(config, workdir)
  if num_examples > len(source):
    raise EvaluateInputError(f"--num_examples={num_examples}, but the test split has "
                             f"{len(source)} clips.")
  videos, centres, colours = [], [], []
  for i in range(num_examples):
    clip = source[i]
    frames = clip["frames"][:num_frames]
    if len(frames) < num_frames:
      raise EvaluateInputError(f"--num_frames={num_frames}, but the test clips have "
                               f"{len(frames)} frames.")
    videos.append(data_pipeline.resize_video(frames, resolution))
    if "centres" in clip:
      centres.append(data_pipeline.resize_centres(clip["centres"][:num_frames],
                                                  frames.shape[1], frames.shape[2], resolution))
      colours.append(clip["colours"])
  if not centres:
    return np.stack(videos), None, None
  return np.stack(videos), np.stack(centres), np.stack(colours)


def score(pred: np.ndarray, truth: np.ndarray, true_centres: np.ndarray | None = None,
          colours: np.ndarray | None = None, num_given: int = 1) -> dict:
  """Per-frame metrics of the predicted frames num_given.. of uint8 videos [B, F, H, W, 3]
  (the given frames are not scored): each a list of F - num_given floats. Ball metrics only
  with `true_centres` and `colours`."""
  pred, truth = pred[:, num_given:], truth[:, num_given:]
  out = {"psnr": quality.psnr_per_frame(pred, truth),
         "ssim": quality.ssim_per_frame(pred, truth),
         "mse": quality.mse_per_frame(pred, truth)}
  if true_centres is not None:
    out["centre_error_px"] = np.stack([balls.centre_errors(p, c[num_given:], k) for p, c, k
                                       in zip(pred, true_centres, colours)]).mean(0)
    out["balls_found"] = np.stack([balls.found_fraction(p, k)
                                   for p, k in zip(pred, colours)]).mean(0)
  return out


def evaluate_run(workdir: str, weights: tuple, num_examples: int = 64, num_frames: int = 0,
                 num_steps: int = 16, seeds=(0,), seed: int | None = None,
                 gif_scale: int = 4, num_videos: int = 8, sheet_examples: int = 6,
                 sampler: dict | None = None, out_name: str = "report", num_given: int = 0,
                 fvd_detector: str = "") -> dict:
  """Scores `weights` = (config, params, step) of the run in `workdir` (as
  `train.setup.restore_weights` reads them: the latest checkpoint's EMA weights) on
  held-out clips; see the module docstring. `seed` (one seed) is kept for callers of the old
  signature. `sampler` holds extra `SamplerSettings` fields (e.g. temperature); `out_name`
  the report's folder; `num_given` the given frames (0 = the data source's protocol);
  `fvd_detector` a TorchScript video detector for FVD ("" = no FVD)."""
  seeds = (seed,) if seed is not None else tuple(int(s) for s in seeds)
  if not seeds:
    raise ValueError("evaluate needs at least one seed.")
  config, params, step = weights
  stage = config.stages[-1]
  num_frames = num_frames or stage["num_frames"]
  if num_given < 0:
    raise EvaluateInputError(f"--num_given={num_given}: give a number of frames >= 1 (0 = "
                             "the dataset's protocol).")
  num_given = num_given or sources.data_source(config).num_given_frames
  resolution = stage["resolution"]
  generator = VideoGenerator(config, params)
  if num_given > 1 and generator.tokenizer.num_latent_frames(num_given) != num_given:
    raise EvaluateInputError(f"{num_given} given frames need a tokenizer without temporal "
                             f"compression; this run's is {config.tokenizer.name!r}.")
  if num_frames <= num_given:
    raise EvaluateInputError(f"--num_frames={num_frames} leaves nothing to generate after "
                             f"{num_given} given frame(s).")
  detector = None
  if fvd_detector and num_examples < 2:
    raise EvaluateInputError(f"FVD fits a Gaussian to the videos' features: it needs "
                             f"--num_examples >= 2 (got {num_examples}).")
  if fvd_detector:
    from videomar_jax.eval import fvd  # pylint: disable=g-import-not-at-top  (imports torch)
    detector = fvd.VideoDetector(fvd_detector)
  video, true_centres, colours = held_out_clips(config, workdir, num_examples, num_frames,
                                                resolution)
  tokens_per_frame = (resolution // generator.stride) ** 2
  # The sampler counts latent frames; a causal tokenizer with temporal stride s decodes
  # 1 + s * (T - 1) pixel frames from T latent ones.
  # Bidirectional models (the ablation) have no KV cache: they re-run the clip every step.
  causal = config.model.get("temporal_attention", "causal") == "causal"
  settings = SamplerSettings(num_frames=generator.tokenizer.num_latent_frames(num_frames),
                             num_steps=min(num_steps, tokens_per_frame),
                             mode="kv_cache" if causal else "no_cache", **(sampler or {}))
  num_generated = settings.num_frames - num_given
  if settings.temperature == "list" and len(settings.temperatures) != num_generated:
    raise EvaluateInputError(f"--temperature lists {len(settings.temperatures)} values; this "
                             f"run generates {num_generated} frames after the given ones.")

  last_given = video[:, num_given - 1:num_given]
  references = {"baseline": np.concatenate(
                    [video[:, :num_given],
                     np.repeat(last_given, num_frames - num_given, axis=1)], axis=1),
                "copy_previous": np.concatenate([video[:, :1], video[:, :-1]], axis=1)}
  scored = lambda pred: score(pred, video, true_centres, colours, num_given)
  # The true videos' detector statistics, computed once for every FVD below.
  real_stats = detector.statistics(video) if detector is not None else None
  per_seed, videos, generate_seconds = {}, {}, 0.0
  for s in seeds:
    start = time.perf_counter()
    free, _ = generator(video[:, :num_given], settings, seed=s)
    forced, _ = generator.teacher_forced(video, settings, seed=s, num_given=num_given)
    generate_seconds += time.perf_counter() - start
    videos.setdefault("model", free)
    videos.setdefault("teacher_forced", forced)
    per_seed[s] = {"model": scored(free), "teacher_forced": scored(forced),
                   "model_psnr_video": balls.psnr(free[:, num_given:], video[:, num_given:]),
                   "teacher_forced_psnr_video": balls.psnr(forced[:, num_given:],
                                                           video[:, num_given:])}
    if detector is not None:
      per_seed[s]["fvd"] = detector.fvd(real_stats, free)
  per_frame = {name: scored(pred) for name, pred in references.items()}
  for name in ("model", "teacher_forced"):
    per_frame[name] = {k: np.mean([per_seed[s][name][k] for s in seeds], axis=0)
                       for k in per_frame["baseline"]}

  out_dir = os.path.join(workdir, out_name)
  os.makedirs(out_dir, exist_ok=True)
  for i in range(min(num_videos, num_examples)):
    gap = np.full((num_frames, resolution, 2, 3), 255, np.uint8)
    side_by_side = np.concatenate([videos["model"][i], gap, video[i]], axis=2)
    video_io.write_video(os.path.join(out_dir, f"example_{i:02d}_generated_vs_truth"),
                         video_io.upscale(side_by_side, gif_scale), fps=4)
  write_contact_sheet(os.path.join(out_dir, "contact_sheet.png"), videos["model"],
                      videos["teacher_forced"], video, sheet_examples, gif_scale)
  plot_per_frame(per_frame, os.path.join(out_dir, "metrics_per_frame.png"), num_given)

  summary_path = os.path.join(workdir, "train_summary.json")
  train_seconds = None
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      train_seconds = json.load(f).get("train_seconds")
  metrics = _metrics_json(per_frame, per_seed, references, video, seeds, num_given)
  if detector is not None:
    metrics["fvd"] = float(np.mean([per_seed[s]["fvd"] for s in seeds]))
    metrics["baseline_fvd"] = detector.fvd(real_stats, references["baseline"])
    metrics["fvd_protocol"] = detector.protocol(num_videos=num_examples, num_frames=num_frames,
                                                num_given=num_given)
  metrics = {"dataset": config.data.dataset, "checkpoint_step": step,
             "num_examples": num_examples, "seeds": list(seeds), "num_frames": num_frames,
             "num_given_frames": num_given, "resolution": resolution,
             "steps_per_frame": settings.num_steps, **metrics,
             "train_seconds": train_seconds,
             # every seed, both views, compilation included
             "generate_seconds": round(generate_seconds, 2)}
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=2)
  return metrics


def _metrics_json(per_frame, per_seed, references, video, seeds, num_given) -> dict:
  """Flat keys: <prefix>psnr, <prefix>ssim, <prefix>mse (and for balls <prefix>centre_error_px
  and <prefix>balls_found_fraction) and their _per_frame lists, for every method; plus
  per-seed figures."""
  names = dict(PIXEL_METRICS)
  if "centre_error_px" in per_frame["baseline"]:
    names.update(BALL_METRICS)
  out = {}
  for method, prefix in PREFIXES.items():
    for key, name in names.items():
      values = per_frame[method][key]
      out[f"{prefix}{name}"] = float(np.mean(values))
      out[f"{prefix}{name}_per_frame"] = [float(v) for v in values]
  # PSNR of whole videos (MSE over every generated pixel), as earlier reports gave it.
  for method in ("baseline", "copy_previous"):
    out[f"{PREFIXES[method]}psnr"] = balls.psnr(references[method][:, num_given:],
                                                video[:, num_given:])
  out["psnr"] = float(np.mean([per_seed[s]["model_psnr_video"] for s in seeds]))
  out["teacher_forced_psnr"] = float(np.mean([per_seed[s]["teacher_forced_psnr_video"]
                                              for s in seeds]))
  # > 1: the model is that many times better than copying the last given frame.
  out["mse_vs_copy_last"] = out["baseline_mse"] / max(out["mse"], 1e-9)
  if "centre_error_px" in names:
    out["centre_error_vs_copy_first"] = out["baseline_centre_error_px"] / max(
        out["centre_error_px"], 1e-9)
  out["per_seed"] = {
      str(s): {f"{PREFIXES[m]}{names[k]}": float(np.mean(per_seed[s][m][k]))
               for m in ("model", "teacher_forced") for k in names} for s in seeds}
  for s in seeds:
    if "fvd" in per_seed[s]:
      out["per_seed"][str(s)]["fvd"] = per_seed[s]["fvd"]
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


def plot_per_frame(per_frame: dict, path: str, num_given: int = 1) -> None:
  titles = {"psnr": "PSNR (dB)", "ssim": "SSIM", "mse": "MSE per frame (sum over pixels)"}
  if "centre_error_px" in per_frame["baseline"]:
    titles = {"centre_error_px": "ball-centre error (px)", "balls_found": "balls found",
              **titles}
  styles = {"model": "o-", "teacher_forced": "^-", "baseline": "s--", "copy_previous": "d:"}
  columns = 2 if len(titles) > 3 else len(titles)
  rows = -(-len(titles) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.3 * rows), squeeze=False)
  for ax in axes.ravel()[len(titles):]:
    ax.axis("off")
  for ax, (key, title) in zip(axes.ravel(), titles.items()):
    for method, label in METHODS.items():
      values = per_frame[method][key]
      ax.plot(np.arange(num_given, num_given + len(values)), values, styles[method],
              label=label)
    ax.set_title(title)
    ax.set_xlabel("frame")
  axes[0, 0].legend(fontsize=8)
  fig.suptitle(f"held-out clips, given frames 0..{num_given - 1}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def report_summary(metrics: dict) -> str:
  """The figures that matter, in a few lines for the console."""
  rows = [("free-running", ""), ("teacher-forced", "teacher_forced_"),
          ("copy last given", "baseline_"), ("copy true previous", "copy_previous_")]
  with_balls = "centre_error_px" in metrics
  columns = "centre error px | balls found | " if with_balls else ""
  lines = [f"{metrics['num_examples']} held-out clips x seeds {metrics['seeds']}, "
           f"{metrics['num_given_frames']} given -> {metrics['num_frames']} frames: "
           f"{columns}PSNR | SSIM | MSE/frame"]
  for label, p in rows:
    balls_part = (f"{metrics[p + 'centre_error_px']:6.2f} | "
                  f"{metrics[p + 'balls_found_fraction']:5.1%} | ") if with_balls else ""
    lines.append(f"  {label:<19} {balls_part}{metrics[p + 'psnr']:5.2f} | "
                 f"{metrics[p + 'ssim']:.3f} | {metrics[p + 'mse']:8.2f}")
  if "fvd" in metrics:
    lines.append(f"  FVD: free-running {metrics['fvd']:.1f}, copy last given "
                 f"{metrics['baseline_fvd']:.1f} ({metrics['num_examples']} videos)")
  if with_balls:
    ratio, what = metrics["centre_error_vs_copy_first"], "centre error"
  else:
    ratio, what = metrics["mse_vs_copy_last"], "MSE"
  lines.append(f"  free-running {what} is {ratio:.2f}x better than copying the last given "
               "frame" if ratio >= 1 else f"  free-running {what} is {1 / ratio:.2f}x worse "
               "than copying the last given frame")
  return "\n".join(lines)
