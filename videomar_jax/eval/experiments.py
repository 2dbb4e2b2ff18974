"""The experiment record: rows of (name, config difference, time, metrics) and their table.

`launch/experiment.sh` appends one JSON row per run to a `results.jsonl`; running this module
on that file prints the markdown table of docs/experiments.md:

    python -m videomar_jax.eval.experiments runs/experiments/results.jsonl
"""

import argparse
import json
import os
import platform
import sys

COLUMNS = (
    ("free px", "centre_error_px", "{:.2f}"),
    ("x copy-first", "centre_error_vs_copy_first", "{:.2f}"),
    ("TF px", "teacher_forced_centre_error_px", "{:.2f}"),
    ("found", "balls_found_fraction", "{:.0%}"),
    ("TF found", "teacher_forced_balls_found_fraction", "{:.0%}"),
    ("SSIM", "ssim", "{:.3f}"),
    ("TF SSIM", "teacher_forced_ssim", "{:.3f}"),
)


def machine() -> str:
  return f"{os.cpu_count()}-core {platform.machine()} CPU"


def append_row(path: str, name: str, workdir: str, train_wall_seconds: float,
               overrides: list[str]) -> dict:
  with open(os.path.join(workdir, "report", "metrics.json")) as f:
    metrics = json.load(f)
  row = {"name": name, "overrides": overrides, "train_wall_seconds": train_wall_seconds,
         "machine": machine(), "metrics": metrics}
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")
  return row


def table(rows: list[dict]) -> str:
  head = ["run", "config (differences)", "train min"] + [c[0] for c in COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    m = row["metrics"]
    cells = [row["name"], " ".join(f"`{o}`" for o in row["overrides"]),
             f"{row['train_wall_seconds'] / 60:.1f}"]
    cells += [fmt.format(m[key]) if m.get(key) is not None else "-" for _, key, fmt in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", nargs="?", help="results.jsonl to print as a table")
  parser.add_argument("--append", help="results.jsonl to append a row to")
  parser.add_argument("--name")
  parser.add_argument("--workdir")
  parser.add_argument("--train_wall_seconds", type=float, default=0.0)
  parser.add_argument("overrides", nargs="*", default=[])
  args, rest = parser.parse_known_args(argv)
  overrides = [a for a in list(args.overrides) + rest if a != "--"]
  if args.append:
    append_row(args.append, args.name, args.workdir, args.train_wall_seconds, overrides)
    return 0
  if not args.results:
    parser.error("give a results.jsonl, or --append with --name and --workdir")
  with open(args.results) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
