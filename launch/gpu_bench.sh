#!/usr/bin/env bash
# The GPU figures of the README's speed section, in one run (a machine with one NVIDIA GPU,
# e.g. an H200; nothing here runs in the tests):
#   a. `bench sampler` with the `paper` model at the paper's stage-1 shape: 1024 tokens per
#      frame (--bench_grid=32), 64 steps per frame, 6 generated frames, bf16; prints
#      kv_cache / no_cache / next_token seconds next to the paper's 107 / 417 / 1310 s;
#   b. `bench train` on `base` and at `paper` width (PAPER_DEPTH layers, fewer than 36 if
#      memory requires) in bf16 with the fused attention (attention_impl=auto: cuDNN), MFU
#      against the GPU's bf16 peak (the JSON's measured matmul peak, and BF16_PEAK_TFLOPS);
#   c. a profile of the timed `base` training steps (bench train --bench_profile) for
#      TensorBoard's profile plugin / xprof.
# Everything lands in OUT (default runs/gpu_bench): JSONs, logs, the trace, summary.txt.
#
# Usage: launch/gpu_bench.sh [--skip_install] [--out=DIR] [--quick]
#   --quick  smaller shapes (a minutes-long smoke run of the same commands)
# Environment: PAPER_DEPTH (default 12), BF16_PEAK_TFLOPS (default 989: an H100/H200 SXM's
#   dense bf16 peak), SAMPLER_TIMEOUT (seconds per sampler mode run, default 1800).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT="runs/gpu_bench"; SKIP_INSTALL=0; QUICK=0
for arg in "$@"; do
  case "$arg" in
    --skip_install) SKIP_INSTALL=1 ;;
    --out=*) OUT="${arg#*=}" ;;
    --quick) QUICK=1 ;;
    --help | -h) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu_bench.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
PAPER_DEPTH="${PAPER_DEPTH:-12}"
BF16_PEAK_TFLOPS="${BF16_PEAK_TFLOPS:-989}"
mkdir -p "$OUT"
if (( ! SKIP_INSTALL )); then
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  .venv/bin/python -m pip install -q -c launch/constraints.txt -e . "jax[cuda12]"
fi
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
VIDEOMAR=.venv/bin/videomar
nvidia-smi -L | tee "$OUT/gpu.txt" || true

GRID=32; STEPS=64; FRAMES=6
if (( QUICK )); then GRID=16; STEPS=16; FRAMES=2; PAPER_DEPTH=2; fi
# a. The sampler at the paper's shape (1.4B transformer, 1024-wide head, 100 head steps).
"$VIDEOMAR" bench sampler --config=videomar:paper --config.model.dtype=bfloat16 \
  --bench_grid="$GRID" --bench_steps="$STEPS" --bench_frames="$FRAMES" --bench_repeats=1 \
  --json="$OUT/sampler_paper.json" 2>&1 | tee "$OUT/sampler_paper.log"
# b. Training throughput and MFU in bf16 (fused attention: attention_impl=auto).
"$VIDEOMAR" bench train --config=videomar:base --config.model.dtype=bfloat16 \
  --bench_repeats=10 --bench_profile="$OUT/profile_base" --json="$OUT/train_base.json" \
  2>&1 | tee "$OUT/train_base.log"
"$VIDEOMAR" bench train --config=videomar:paper --config.model.dtype=bfloat16 \
  --config.model.depth="$PAPER_DEPTH" --config.batch_size=8 --bench_repeats=5 \
  --json="$OUT/train_paper_width.json" 2>&1 | tee "$OUT/train_paper_width.log"

.venv/bin/python - "$OUT" "$BF16_PEAK_TFLOPS" <<'PY' | tee "$OUT/summary.txt"
import json, sys
out, peak = sys.argv[1], float(sys.argv[2]) * 1e12
s = json.load(open(f"{out}/sampler_paper.json"))
print(f"sampler (paper, {s['tokens_per_frame']} tokens/frame, {s['steps_per_frame']} steps, "
      f"{s['generated_frames']} frames, bf16) on {s['device']}:")
for mode, paper in (("kv_cache", 107), ("no_cache", 417), ("next_token", 1310)):
  print(f"  {mode:10s} {s[f'{mode}_s']:8.1f} s (transformer {s.get(f'{mode}_transformer_s', 0):.1f} s,"
        f" head {s.get(f'{mode}_head_s', 0):.1f} s)   paper: {paper} s")
for name in ("train_base", "train_paper_width"):
  t = json.load(open(f"{out}/{name}.json"))
  print(f"{name}: step {t['step_s']:.3f} s, {t['tokens_per_s']:.0f} tokens/s, "
        f"{t['achieved_flops'] / 1e12:.1f} TFLOP/s = MFU {t['mfu']:.3f} of the measured "
        f"matmul peak, {t['achieved_flops'] / peak:.3f} of {peak / 1e12:.0f} TFLOP/s bf16")
PY
