#!/usr/bin/env bash
# Trains on one host with all of its NVIDIA GPUs: one process drives every local GPU (no
# distributed initialisation, `--distributed=none`); the mesh in the config spreads the work.
# Steps:
#   1. unless --skip_install: create ./.venv if missing and install `-e .` and `jax[cuda12]`
#      into it (in the repository root);
#   2. print `nvidia-smi -L`;
#   3. run `.venv/bin/videomar train --workdir=DIR --distributed=none ARGS` from the
#      repository root (so relative paths, --workdir's included, are relative to it) with
#      JAX_PLATFORMS=cuda (no silent fall-back to the CPU),
#      XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 (unless set) and
#      XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true $XLA_FLAGS" (yours win).
# Running it again on the same workdir resumes from the latest checkpoint there.
#
# Usage:
#   launch/gpu.sh --workdir=DIR [--skip_install] [--dry_run] [-- ARGS for videomar train]
#
# Options:
#   --workdir=DIR   passed to `videomar train --workdir` (required)
#   --skip_install  use ./.venv as it is
#   --dry_run       print every command (prefixed "+ ") and run none
#   --help          this text
#   -- ARGS         everything after `--` goes to `videomar train`
#
# Examples:
#   launch/gpu.sh --workdir=runs/base -- --config=configs/videomar.py:base
#   launch/gpu.sh --workdir=runs/small --skip_install -- --config=configs/videomar.py:small \
#     --config.batch_size=64 --config.mesh.data=-1
#   launch/gpu.sh --workdir=/data/runs/base -- --config=configs/videomar.py:base \
#     --config.mesh.fsdp=8 --config.batch_size=128
set -euo pipefail

SCRIPT="${BASH_SOURCE[0]}"
REPO_ROOT="$(cd "$(dirname "$SCRIPT")/.." && pwd)"
# shellcheck source=launch/_launch_lib.sh
source "$REPO_ROOT/launch/_launch_lib.sh"
PYTHON="${PYTHON:-python3}"
GPU_XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true"

WORKDIR=""
SKIP_INSTALL=0
DRY_RUN=0
TRAIN_ARGS=()

parse_args() {
  while (( $# > 0 )); do
    case "$1" in
      --workdir=*) WORKDIR="${1#*=}" ;;
      --skip_install) SKIP_INSTALL=1 ;;
      --dry_run) DRY_RUN=1 ;;
      --help | -h) usage; exit 0 ;;
      --) shift; TRAIN_ARGS=("$@"); break ;;
      --workdir) die "write --workdir=DIR (with '=')" ;;
      *) die "unknown argument '$1' (arguments for videomar train go after a literal --)" ;;
    esac
    shift
  done
  [[ -n "$WORKDIR" ]] || die "--workdir=DIR is required (videomar train writes checkpoints there)"
}

install_package() {
  if [[ ! -x .venv/bin/python ]]; then
    run "$PYTHON" -m venv .venv
  fi
  run .venv/bin/python -m pip install -q -e . "jax[cuda12]"
}

show_gpus() {
  if (( DRY_RUN )); then
    echo "+ nvidia-smi -L"
  elif command -v nvidia-smi > /dev/null; then
    echo "+ nvidia-smi -L" >&2
    nvidia-smi -L || echo "gpu.sh: nvidia-smi -L failed" >&2
  else
    echo "gpu.sh: no nvidia-smi on PATH; JAX will fail if it finds no CUDA GPU" >&2
  fi
}

train() {
  if (( ! DRY_RUN )) && [[ ! -x .venv/bin/videomar ]]; then
    die ".venv/bin/videomar is missing; run without --skip_install first"
  fi
  run env JAX_PLATFORMS=cuda \
    XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}" \
    XLA_FLAGS="$GPU_XLA_FLAGS${XLA_FLAGS:+ $XLA_FLAGS}" \
    .venv/bin/videomar train --workdir="$WORKDIR" --distributed=none \
    ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}
}

main() {
  parse_args "$@"
  cd "$REPO_ROOT"
  if (( ! SKIP_INSTALL )); then
    install_package
  fi
  show_gpus
  train
}

main "$@"
