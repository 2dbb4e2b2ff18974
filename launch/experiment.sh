#!/usr/bin/env bash
# One row of docs/experiments.md: train a config on the built-in data, then evaluate it on
# 64 held-out clips with two sampling seeds, and append the row to <root>/results.jsonl.
# Usage:
#   bash launch/experiment.sh NAME [ROOT] -- --config=configs/videomar.py:tiny --config.x=y ...
# ROOT defaults to runs/experiments; the data is built once in ROOT/data.
# `python -m videomar_jax.eval.experiments ROOT/results.jsonl` prints the table.
# Runs of a sweep can go side by side, one core each, e.g. on 2 cores
#   taskset -c 0 bash launch/experiment.sh A -- ... &  taskset -c 1 bash launch/experiment.sh B -- ...
# (tiny, 4 frames: 1.0 step/s each, against 1.55 steps/s for one run on both cores).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
NAME="$1"; shift
ROOT="runs/experiments"
if [ "${1:-}" != "--" ] && [ $# -gt 0 ]; then ROOT="$1"; shift; fi
[ "${1:-}" == "--" ] && shift
WORKDIR="$ROOT/$NAME"
mkdir -p "$ROOT"
# Runs started side by side share ROOT/data: the lock lets one build it while the others wait.
flock "$ROOT/.data_build.lock" \
  videomar data build --dataset=bouncing_balls --data_dir="$ROOT/data" >/dev/null
start=$(date +%s)
videomar train --workdir="$WORKDIR" "$@" --config.data.data_dir="$ROOT/data"
train_wall=$(( $(date +%s) - start ))
videomar evaluate --workdir="$WORKDIR" --num_examples="${NUM_EXAMPLES:-64}" \
  --seeds="${SEEDS:-0,1}" --num_frames="${EVAL_FRAMES:-8}" >"$WORKDIR/evaluate.log"
tail -6 "$WORKDIR/evaluate.log"
python -m videomar_jax.eval.experiments --append="$ROOT/results.jsonl" --name="$NAME" \
  --workdir="$WORKDIR" --train_wall_seconds="$train_wall" -- "$@"
