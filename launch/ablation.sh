#!/usr/bin/env bash
# The paper's ablation on the built-in data (docs/experiments.md): three trainings of the
# `tiny` recipe (MAR masking + bidirectional attention, next-frame loss + bidirectional,
# next-frame loss + causal) and six evaluations (temperatures), then ROOT/ablation.md and
# ROOT/ablation.json. Rerunning it continues where it stopped.
# Usage:
#   bash launch/ablation.sh [ROOT] [--jobs=N] [--num_examples=N] [-- extra training overrides]
# ROOT defaults to runs/ablation; JOBS processes run at a time (default 2, one per core here).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ROOT="runs/ablation"
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then ROOT="$1"; shift; fi
python -m videomar_jax.eval.ablation run "$ROOT" "$@"
