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


def _differences(overrides: list[str], base: list[str]) -> list[str]:
  """`overrides` that `base` lacks or sets otherwise (key=value flags compared by key)."""
  key = lambda o: o.split("=", 1)[0]
  base_values = {key(o): o for o in base}
  return [o for o in overrides if base_values.get(key(o)) != o] + [
      f"{key(o)}=(default)" for o in base if key(o) not in {key(x) for x in overrides}]


def table(rows: list[dict], base: str | None = None) -> str:
  """Markdown table of the rows; with `base` (a row's name) the config column shows each
  row's overrides relative to that row's."""
  base_overrides = next((r["overrides"] for r in rows if r["name"] == base), None)
  if base is not None and base_overrides is None:
    raise ValueError(f"no row named {base!r}")
  title = f"config (vs {base})" if base else "config"
  head = ["run", title, "train min"] + [c[0] for c in COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    m = row["metrics"]
    overrides = row["overrides"]
    if base_overrides is not None and row["name"] != base:
      overrides = _differences(overrides, base_overrides)
    cells = [row["name"], " ".join(f"`{o}`" for o in overrides),
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
  parser.add_argument("--base", help="show configs relative to the row of this name")
  parser.add_argument("overrides", nargs="*", default=[])
  args, rest = parser.parse_known_args(argv)
  if args.append:  # with --append every positional is an override of the run's command
    head = [args.results] if args.results else []
    overrides = [a for a in head + list(args.overrides) + rest if a != "--"]
    append_row(args.append, args.name, args.workdir, args.train_wall_seconds, overrides)
    return 0
  if not args.results:
    parser.error("give a results.jsonl, or --append with --name and --workdir")
  with open(args.results) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  print(table(rows, args.base))
  return 0


if __name__ == "__main__":
  sys.exit(main())
