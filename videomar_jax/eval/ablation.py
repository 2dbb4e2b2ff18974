"""The paper's ablation, rerun on the built-in data: next-frame loss, causal attention,
progressive temperature.

The paper starts from MAR-style masking over a whole clip (no next-frame loss) with
bidirectional temporal attention and one sampling temperature, and adds, in order, the
next-frame diffusion loss, frame-causal attention and progressive temperature (VBench-I2V
total 78.81 -> 79.76 -> 80.72 -> 82.56). A second table lowers the last frame's temperature
(1.00 / 0.98 / 0.96 -> 82.19 / 83.13 / 83.56). Here the same steps are three trainings of one
recipe that differ only in `loss.mode` and `model.temporal_attention`, and six evaluations:

    bash launch/ablation.sh [ROOT] [-- extra training overrides]
    python -m videomar_jax.eval.ablation run ROOT --jobs=2 -- --config.stages[0].steps=1000

Each evaluation scores free-running and teacher-forced generation on held-out clips over
every sampling seed (`videomar evaluate`); the markdown table and its numbers, written into
ROOT (TABLE_FILE, NUMBERS_FILE), put the ball-centre error next to the paper's scores.
Rerunning the command skips the trainings and evaluations that already finished.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

from videomar_jax.eval import experiments

# The recipe every training starts from (the packaged `tiny` preset, which the CLI finds
# installed or in a checkout; `--config` picks another).
# The CLI of this interpreter's videomar_jax (a `videomar` on PATH may be another install's).
VIDEOMAR = (sys.executable, "-m", "videomar_jax.cli.main")
BASE_CONFIG = "videomar:tiny"


@dataclasses.dataclass(frozen=True)
class Training:
  name: str
  loss_mode: str
  temporal_attention: str

  def overrides(self) -> list[str]:
    return [f"--config.loss.mode={self.loss_mode}",
            f"--config.model.temporal_attention={self.temporal_attention}"]


@dataclasses.dataclass(frozen=True)
class Evaluation:
  table: str  # "steps" (the paper's additive ablation) or "temperature"
  label: str
  training: str
  report: str
  temperature: str  # "constant" | "linear" (the default 0.95 -> 0.90) | "a->b" (linear)
  paper_score: float  # VBench-I2V total in the paper's table


# The paper's `next-frame loss` is its per-target-frame loss (`paper` mode): the tiny
# preset's `all_frames` mode supervises every frame at once and needs causal attention,
# so it cannot be the middle row.
TRAININGS = (
    Training("mar_bidirectional", "mar", "bidirectional"),
    Training("next_frame_bidirectional", "paper", "bidirectional"),
    Training("next_frame_causal", "paper", "causal"),
)
EVALUATIONS = (
    Evaluation("steps", "MAR masking over the clip, bidirectional, temperature 1.0",
               "mar_bidirectional", "report_t1.00", "1.0", 78.81),
    Evaluation("steps", "+ next-frame diffusion loss", "next_frame_bidirectional",
               "report_t1.00", "1.0", 79.76),
    Evaluation("steps", "+ frame-causal attention", "next_frame_causal", "report_t1.00",
               "1.0", 80.72),
    Evaluation("steps", "+ progressive temperature (0.95 -> 0.90, the authors' code)",
               "next_frame_causal", "report_linear", "linear", 82.56),
    Evaluation("temperature", "temperature 1.00 on every frame", "next_frame_causal",
               "report_t1.00", "1.0", 82.19),
    Evaluation("temperature", "temperature 1.00 -> 0.98", "next_frame_causal",
               "report_t1.00-0.98", "1.0->0.98", 83.13),
    Evaluation("temperature", "temperature 1.00 -> 0.96", "next_frame_causal",
               "report_t1.00-0.96", "1.0->0.96", 83.56),
)


def temperature_flag(temperature: str, num_generated: int) -> str:
  """`videomar evaluate --temperature` for "1.0", "linear" or "a->b" (linear from a on the
  first generated frame to b on the last)."""
  if "->" not in temperature:
    return temperature
  start, end = (float(v) for v in temperature.split("->"))
  values = np.linspace(start, end, num_generated) if num_generated > 1 else [start]
  return ",".join(f"{v:.4f}" for v in values)


def commands(root: str, extra: list[str], num_frames: int = 8, num_examples: int = 64,
             seeds: str = "0,1", config: str = BASE_CONFIG) -> tuple[dict, dict]:
  """(training name -> train argv, report path -> evaluate argv), every path under root."""
  data_dir = os.path.join(root, "data")
  train = {t.name: [*VIDEOMAR, "train", f"--workdir={os.path.join(root, t.name)}",
                    f"--config={config}", *extra, *t.overrides(),
                    f"--config.data.data_dir={data_dir}"] for t in TRAININGS}
  evaluate = {}
  for e in EVALUATIONS:
    path = os.path.join(root, e.training, e.report)
    evaluate[path] = [*VIDEOMAR, "evaluate", f"--workdir={os.path.join(root, e.training)}",
                      f"--report_name={e.report}", f"--num_examples={num_examples}",
                      f"--seeds={seeds}", f"--num_frames={num_frames}",
                      f"--temperature={temperature_flag(e.temperature, num_frames - 1)}"]
  return train, evaluate


def _log(message: str) -> None:
  print(f"[ablation {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _run_logged(argv: list[str], log_path: str) -> float:
  """Runs argv with its output in log_path; returns the wall seconds. Raises on failure."""
  start = time.time()
  with open(log_path, "w") as log:
    rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
  if rc != 0:
    raise RuntimeError(f"videomar {argv[len(VIDEOMAR)]} failed (exit {rc}); see {log_path}")
  return time.time() - start


# Outputs written into the ablation's root folder (not files of this repository).
TABLE_FILE, NUMBERS_FILE = "ablation" + ".md", "ablation" + ".json"
_TRAIN_SECONDS = "train_seconds.json"  # name -> wall seconds of each finished training


def _load_train_seconds(root: str) -> dict:
  path = os.path.join(root, _TRAIN_SECONDS)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def run(root: str, extra: list[str], jobs: int = 2, num_frames: int = 8, num_examples: int = 64,
        seeds: str = "0,1", config: str = BASE_CONFIG, runner=_run_logged) -> dict:
  """Trains and evaluates everything not yet done, `jobs` processes at a time (each
  evaluation starts once its model is trained), then writes the table."""
  os.makedirs(root, exist_ok=True)
  runner([*VIDEOMAR, "data", "build", "--dataset=bouncing_balls",
          f"--data_dir={os.path.join(root, 'data')}"], os.path.join(root, "data_build.log"))
  train, evaluate = commands(root, extra, num_frames, num_examples, seeds, config)
  train_seconds = _load_train_seconds(root)

  def do_train(name):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    _log(f"training {name}")
    seconds = runner(train[name], os.path.join(root, name, "train.log"))
    _log(f"trained {name} in {seconds / 60:.1f} min")
    return name, seconds

  def do_evaluate(path):
    _log(f"evaluating {os.path.relpath(path, root)}")
    seconds = runner(evaluate[path], path + ".log")
    _log(f"evaluated {os.path.relpath(path, root)} in {seconds / 60:.1f} min")
    return path, seconds

  done = lambda path: os.path.exists(os.path.join(path, "metrics.json"))
  pending_evals = {}
  for path in evaluate:
    if not done(path):
      pending_evals.setdefault(os.path.basename(os.path.dirname(path)), []).append(path)
  with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    futures = set()
    for name in train:
      if name in train_seconds:  # trained by an earlier invocation
        futures |= {pool.submit(do_evaluate, p) for p in pending_evals.pop(name, [])}
      else:  # `videomar train` resumes an interrupted training from its checkpoint
        futures.add(pool.submit(do_train, name))
    while futures:
      finished, futures = concurrent.futures.wait(
          futures, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in finished:
        key, seconds = future.result()  # a failure stops the run with its log's path
        if key in train:
          train_seconds[key] = seconds
          with open(os.path.join(root, _TRAIN_SECONDS), "w") as f:
            json.dump(train_seconds, f, indent=2)
          futures |= {pool.submit(do_evaluate, p) for p in pending_evals.pop(key, [])}
  return write_table(root, train_seconds)


def _row(e: Evaluation, metrics: dict, train_seconds: float | None) -> dict:
  per_seed = metrics.get("per_seed", {})
  return {"table": e.table, "label": e.label, "training": e.training,
          "temperature": e.temperature, "paper_vbench_i2v": e.paper_score,
          "train_seconds": train_seconds,
          "centre_error_px": metrics["centre_error_px"],
          "centre_error_px_per_seed": [per_seed[s]["centre_error_px"] for s in per_seed],
          "centre_error_vs_copy_first": metrics["centre_error_vs_copy_first"],
          "teacher_forced_centre_error_px": metrics["teacher_forced_centre_error_px"],
          "balls_found_fraction": metrics["balls_found_fraction"],
          "ssim": metrics["ssim"],
          "centre_error_px_per_frame": metrics["centre_error_px_per_frame"],
          "baseline_centre_error_px": metrics["baseline_centre_error_px"],
          "copy_previous_centre_error_px": metrics["copy_previous_centre_error_px"],
          "num_examples": metrics["num_examples"], "seeds": metrics["seeds"],
          "checkpoint_step": metrics["checkpoint_step"]}


def table(rows: list[dict]) -> str:
  head = ("| setting | VBench-I2V (paper) | free px (seeds) | x copy-first | TF px | found | "
          "SSIM |\n|---|---|---|---|---|---|---|")
  out = []
  for kind, title in (("steps", "The paper's additive ablation"),
                      ("temperature", "Temperature of the last generated frame")):
    out += [f"**{title}**", "", head]
    for r in (r for r in rows if r["table"] == kind):
      seeds = " / ".join(f"{v:.2f}" for v in r["centre_error_px_per_seed"])
      out.append(f"| {r['label']} | {r['paper_vbench_i2v']:.2f} | {r['centre_error_px']:.2f} "
                 f"({seeds}) | {r['centre_error_vs_copy_first']:.2f} | "
                 f"{r['teacher_forced_centre_error_px']:.2f} | "
                 f"{r['balls_found_fraction']:.0%} | {r['ssim']:.3f} |")
    out.append("")
  if rows:
    r = rows[0]
    out.append(f"References on the same clips: copy the first frame "
               f"{r['baseline_centre_error_px']:.2f} px, copy the true previous frame "
               f"{r['copy_previous_centre_error_px']:.2f} px. {r['num_examples']} held-out "
               f"clips, seeds {', '.join(str(s) for s in r['seeds'])}; lower px is better, "
               f"higher VBench is better.")
  return "\n".join(out)


def write_table(root: str, train_seconds: dict | None = None) -> dict:
  """Reads every finished evaluation under root; writes TABLE_FILE and NUMBERS_FILE there."""
  if train_seconds is None:
    train_seconds = _load_train_seconds(root)
  rows = []
  for e in EVALUATIONS:
    path = os.path.join(root, e.training, e.report, "metrics.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} is missing: run `python -m videomar_jax.eval.ablation "
                              f"run {root}` to finish the ablation first.")
    with open(path) as f:
      rows.append(_row(e, json.load(f), train_seconds.get(e.training)))
  text = table(rows)
  with open(os.path.join(root, TABLE_FILE), "w") as f:
    f.write(text + "\n")
  result = {"machine": experiments.machine(), "rows": rows}
  with open(os.path.join(root, NUMBERS_FILE), "w") as f:
    json.dump(result, f, indent=2)
  print(text, flush=True)
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("action", choices=("run", "table"))
  parser.add_argument("root", nargs="?", default="runs/ablation")
  parser.add_argument("--jobs", type=int, default=2, help="processes at a time")
  parser.add_argument("--num_frames", type=int, default=8, help="evaluation clip length")
  parser.add_argument("--num_examples", type=int, default=64, help="held-out clips")
  parser.add_argument("--seeds", default="0,1", help="sampling seeds")
  parser.add_argument("--config", default=BASE_CONFIG,
                      help="the recipe: `videomar:PRESET` or a file's `path[:preset]`")
  args, extra = parser.parse_known_args(argv)
  extra = [a for a in extra if a != "--"]
  if args.jobs < 1:
    parser.error(f"--jobs={args.jobs}: give at least 1.")
  try:
    if args.action == "table":
      write_table(args.root)
    else:
      run(args.root, extra, args.jobs, args.num_frames, args.num_examples, args.seeds,
          args.config)
  except (RuntimeError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
