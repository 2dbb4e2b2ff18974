#!/usr/bin/env bash
# The GPU figures of the README's speed section, in one run (a machine with one NVIDIA GPU,
# e.g. an H200; nothing here runs in the tests). Stages, most wanted first; each has its own
# time limit and a failed or timed-out stage does not stop the next:
#   smoke          a seconds-long sampler run of the paper model cut to one layer, in bf16:
#                  if it fails, the stages run with XLA's attention instead of the fused
#                  one; if that fails too, the script stops (this JAX cannot run the package)
#   sampler_*      `bench sampler` with the `paper` model at the paper's stage-1 shape:
#                  1024 tokens per frame (--bench_grid=32), 64 steps per frame, 6 generated
#                  frames, bf16; one mode per stage (kv_cache, no_cache, next_token), next
#                  to the paper's 107 / 417 / 1310 s. kv_cache is also timed with a 2-step
#                  head, which splits its time into transformer and head; the other two
#                  are not (it would double their time; their head work is the same as
#                  kv_cache's: the same reveals and denoising steps). next_token runs
#                  NEXT_TOKEN_FRAMES generated frames (default 6).
#   train_base     `bench train` on `base` in bf16 with the fused attention
#                  (attention_impl=auto: cuDNN), batch TRAIN_BATCH (default 64); its timed
#                  steps are profiled (TensorBoard's profile plugin / xprof read the trace)
#   train_paper    `bench train` at `paper` width (PAPER_DEPTH layers, default 12), batch 8
# MFU is given against the measured bf16 matmul peak (8192^3) and BF16_PEAK_TFLOPS.
# Everything lands in OUT (default runs/gpu_bench): JSONs, logs, the trace, stages.txt,
# summary.txt.
#
# Usage: launch/gpu_bench.sh [--install] [--out=DIR] [--quick]
#   --install  pip-install the package and jax[cuda12] into .venv first (needs a network)
#   --quick    small shapes: a minutes-long run of the same commands (PLATFORM=cpu runs it
#              on the CPU, as a check of the script)
# Environment: PYTHON (default .venv/bin/python, else python3: any Python with jax and the
#   package importable), PLATFORM (default cuda), PAPER_DEPTH, TRAIN_BATCH, NEXT_TOKEN_FRAMES,
#   BF16_PEAK_TFLOPS (default 989: an H100/H200 SXM's dense bf16 peak), and each stage's
#   limit in seconds: LIMIT_SAMPLER (default 1800 per mode), LIMIT_TRAIN (default 900).
set -uo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT="runs/gpu_bench"; INSTALL=0; QUICK=0
for arg in "$@"; do
  case "$arg" in
    --install) INSTALL=1 ;;
    --out=*) OUT="${arg#*=}" ;;
    --quick) QUICK=1 ;;
    --help | -h) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_bench.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
if (( INSTALL )); then
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  .venv/bin/python -m pip install -q -c launch/constraints.txt -e . "jax[cuda12]" || exit 1
fi
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PAPER_DEPTH="${PAPER_DEPTH:-12}"; TRAIN_BATCH="${TRAIN_BATCH:-64}"
NEXT_TOKEN_FRAMES="${NEXT_TOKEN_FRAMES:-6}"; BF16_PEAK_TFLOPS="${BF16_PEAK_TFLOPS:-989}"
LIMIT_SAMPLER="${LIMIT_SAMPLER:-1800}"; LIMIT_TRAIN="${LIMIT_TRAIN:-900}"
export JAX_PLATFORMS="${PLATFORM:-cuda}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"; : > "$OUT/stages.txt"
{ nvidia-smi -L 2>/dev/null || true
  "$PYTHON" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
"optax", optax.__version__, jax.devices())'; } 2>&1 | tee "$OUT/machine.txt"

# stage NAME LIMIT_S ARGS...: one `videomar` command, its log in OUT/NAME.log, its outcome
# (ok, failed rc=N, or timed out after N s) and its seconds in OUT/stages.txt.
stage() {
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS rc
  echo "== $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$PYTHON" -m videomar_jax.cli.main "$@" 2>&1 \
    | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  local outcome="ok"
  if (( rc == 124 || rc == 137 )); then outcome="timed out after ${limit} s"
  elif (( rc != 0 )); then outcome="failed rc=$rc"; fi
  echo "$name: $outcome ($((SECONDS - start)) s)" | tee -a "$OUT/stages.txt"
  return "$rc"
}

GRID=32; STEPS=64; FRAMES=6; PAPER_SIZE=(--config=videomar:paper); PAPER_CLIP=()
if (( QUICK )); then
  GRID=8; STEPS=4; FRAMES=2; NEXT_TOKEN_FRAMES=1; PAPER_DEPTH=2; TRAIN_BATCH=4
  PAPER_SIZE=(--config=videomar:paper --config.model.depth=2)
  PAPER_CLIP=("--config.stages[2].num_frames=9" "--config.stages[2].resolution=64")
fi
# The smoke run is the paper model cut to one layer, in bf16: the fused attention, the text
# context. If it fails with attention_impl=auto, every stage runs with XLA's attention.
ATTN=()
SMOKE=(bench sampler "${PAPER_SIZE[@]}" --config.model.depth=1 --config.model.dtype=bfloat16
       --bench_grid=4 --bench_steps=2 --bench_frames=1 --bench_repeats=1 --bench_modes=kv_cache
       --nobench_time_split)
if ! stage smoke 300 "${SMOKE[@]}" --json="$OUT/smoke.json"; then
  ATTN=(--config.model.attention_impl=xla)
  echo "gpu_bench.sh: the smoke run failed with attention_impl=auto; trying xla." >&2
  stage smoke_xla 300 "${SMOKE[@]}" "${ATTN[@]}" --json="$OUT/smoke.json" \
    || { echo "gpu_bench.sh: the smoke run failed (see $OUT/smoke*.log); stopping." >&2; exit 1; }
fi

# The sampler at the paper's shape (1.4B transformer, 1024-wide head, 100 head steps).
SAMPLER=(bench sampler "${PAPER_SIZE[@]}" --config.model.dtype=bfloat16 --bench_grid="$GRID"
         --bench_steps="$STEPS" --bench_repeats=1 "${ATTN[@]}")
stage sampler_kv_cache "$LIMIT_SAMPLER" "${SAMPLER[@]}" --bench_frames="$FRAMES" \
  --bench_modes=kv_cache --json="$OUT/sampler_kv_cache.json"
stage sampler_no_cache "$LIMIT_SAMPLER" "${SAMPLER[@]}" --bench_frames="$FRAMES" \
  --bench_modes=no_cache --nobench_time_split --json="$OUT/sampler_no_cache.json"
# Training throughput and MFU in bf16 (fused attention: attention_impl=auto).
stage train_base "$LIMIT_TRAIN" bench train --config=videomar:base "${ATTN[@]}" \
  --config.model.dtype=bfloat16 --config.batch_size="$TRAIN_BATCH" --bench_repeats=10 \
  --bench_profile="$OUT/profile_base" --json="$OUT/train_base.json"
stage sampler_next_token "$LIMIT_SAMPLER" "${SAMPLER[@]}" --bench_frames="$NEXT_TOKEN_FRAMES" \
  --bench_modes=next_token --nobench_time_split --json="$OUT/sampler_next_token.json"
stage train_paper "$LIMIT_TRAIN" bench train --config=videomar:paper "${ATTN[@]}" \
  --config.model.dtype=bfloat16 --config.model.depth="$PAPER_DEPTH" --config.batch_size=8 \
  "${PAPER_CLIP[@]}" --bench_repeats=5 --json="$OUT/train_paper.json"

"$PYTHON" - "$OUT" "$BF16_PEAK_TFLOPS" <<'PY' | tee "$OUT/summary.txt"
import json, os, sys
out, peak = sys.argv[1], float(sys.argv[2]) * 1e12
def load(name):
  path = os.path.join(out, f"{name}.json")
  return json.load(open(path)) if os.path.exists(path) else None
print(open(os.path.join(out, "machine.txt")).read().strip())
print(open(os.path.join(out, "stages.txt")).read().strip())
if os.path.exists(os.path.join(out, "smoke_xla.log")):
  print("attention: xla (the fused attention failed in the smoke run)")
for mode, paper in (("kv_cache", 107), ("no_cache", 417), ("next_token", 1310)):
  s = load(f"sampler_{mode}")
  if s is None:
    print(f"sampler {mode}: no result (see stages above)")
    continue
  split = (f" (transformer {s[f'{mode}_transformer_s']:.1f} s, head {s[f'{mode}_head_s']:.1f} s)"
           if f"{mode}_head_s" in s else "")
  print(f"sampler {mode:10s} {s[f'{mode}_s']:8.1f} s{split}, compile {s[f'{mode}_compile_s']:.0f} s;"
        f" {s['tokens_per_frame']} tokens/frame, {s['steps_per_frame']} steps, "
        f"{s['generated_frames']} frames, {s['device']}; paper (6 frames): {paper} s")
for name in ("train_base", "train_paper"):
  t = load(name)
  if t is None:
    print(f"{name}: no result (see stages above)")
    continue
  print(f"{name}: depth {t.get('depth', '?')}, batch {t['batch_size']} x {t['sequence_length']} "
        f"tokens, step {t['step_s']:.3f} s, {t['tokens_per_s']:.0f} tokens/s, "
        f"{t['achieved_flops'] / 1e12:.1f} TFLOP/s = MFU {t['mfu']:.3f} of the measured "
        f"matmul peak ({t['peak_flops'] / 1e12:.0f} TFLOP/s), "
        f"{t['achieved_flops'] / peak:.3f} of {peak / 1e12:.0f} TFLOP/s bf16")
PY
