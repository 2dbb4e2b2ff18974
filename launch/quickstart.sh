#!/usr/bin/env bash
# The main job on the built-in data, on the CPU: build the bouncing_balls dataset, train the
# `tiny` VideoMAR through its two-stage curriculum, then generate held-out clips from their
# first frame and write <workdir>/report/ (GIFs generated | truth, error plot, metrics.json).
# Usage:
#   bash launch/quickstart.sh [workdir]        (default: runs/quickstart)
# Re-running on the same workdir resumes from its latest checkpoint.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
WORKDIR="${1:-runs/quickstart}"
shift $(( $# > 0 ? 1 : 0 ))
mkdir -p "$WORKDIR"
videomar data build --dataset=bouncing_balls --data_dir="$WORKDIR/data"
videomar train --config=configs/videomar.py:tiny --workdir="$WORKDIR" \
  --config.data.data_dir="$WORKDIR/data" "$@"
# The preset trains on 4-frame clips; the model generates 8 (docs/experiments.md, r16).
videomar evaluate --workdir="$WORKDIR" --num_examples=64 --seeds=0,1 --num_steps=8 \
  --num_frames=8
echo "[quickstart] done: report in $WORKDIR/report, checkpoints in $WORKDIR/checkpoints," \
  "TensorBoard logs in $WORKDIR/tensorboard"
