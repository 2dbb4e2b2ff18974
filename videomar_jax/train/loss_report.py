"""End-of-training report: the loss curve as a picture next to a JSON of its numbers."""

import json
import os

import numpy as np


def truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops the rows after `last_step` (logged by a run that was then killed before its next
  checkpoint), so that a resumed run leaves one row per step. Rewritten atomically."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= last_step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError):  # a row cut short by the kill
      continue
  if len(kept) != len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)


def read_metrics(workdir: str) -> dict[int, dict]:
  """Per-step metrics from metrics.jsonl; a resumed run's re-logged steps replace the old."""
  rows = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        row = json.loads(line)
        rows[row["step"]] = row
  return dict(sorted(rows.items()))


def write_loss_report(workdir: str, stage_ends: list[int], this_run_seconds: float) -> dict:
  """Writes `loss_curve.png` and `train_summary.json` into workdir; returns the summary.

  `train_seconds` adds this run's wall time to that of earlier (resumed) runs.
  """
  summary_path = os.path.join(workdir, "train_summary.json")
  earlier = 0.0
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      earlier = json.load(f).get("train_seconds", 0.0)
  rows = read_metrics(workdir)
  steps = np.array(list(rows), dtype=np.int64)
  losses = np.array([r["loss"] for r in rows.values()], dtype=np.float64)
  window = max(1, min(50, len(losses) // 10))
  smooth = np.convolve(losses, np.ones(window) / window, mode="valid") if len(losses) else losses
  summary = {
      "steps": int(steps[-1]) if len(steps) else 0,
      "loss_first_window_mean": float(losses[:window].mean()) if len(losses) else None,
      "loss_last_window_mean": float(losses[-window:].mean()) if len(losses) else None,
      "loss_min": float(losses.min()) if len(losses) else None,
      "window": window,
      "stage_ends": list(stage_ends),
      "train_seconds": round(earlier + this_run_seconds, 1),
  }
  # Imported here: pyplot costs ~1 s, paid once at the end of a run rather than by every
  # process that imports the trainer.
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot(steps, losses, color="0.75", lw=0.8, label="loss per step")
  if len(smooth):
    ax.plot(steps[window - 1:], smooth, color="C0", lw=1.8, label=f"mean of {window}")
  for end in stage_ends[:-1]:
    ax.axvline(end, color="C3", ls="--", lw=1)
  ax.set_xlabel("step")
  ax.set_ylabel("next-frame diffusion loss")
  if len(losses) and (losses > 0).all():  # a run resumed past its end logs no step
    ax.set_yscale("log")
  ax.set_title("training loss (dashed: curriculum stage changes)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "loss_curve.png"), dpi=100)
  plt.close(fig)
  with open(summary_path, "w") as f:
    json.dump(summary, f, indent=2)
  return summary
