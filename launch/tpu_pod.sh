#!/usr/bin/env bash
# Runs `videomar train` on every worker of a Cloud TPU VM slice, from your own machine
# (needs gcloud, logged in). Steps:
#   1. create the TPU VM unless it exists (a PREEMPTED or TERMINATED one is deleted and
#      created again; a running one is reused);
#   2. on all workers: clone or update the repository into ~/videomar_jax at the branch
#      (the workers' copy is reset to the branch), create ~/videomar_jax/.venv, install
#      `-e .` and `jax[tpu]`;
#   3. on all workers at once: `videomar train --workdir=runs/pod
#      --config.train.checkpoint_dir=WORKDIR/checkpoints --distributed=auto ARGS` over plain
#      ssh, so every worker's output streams back here; each worker also appends it to
#      ~/videomar_train.log. On a TPU VM `jax.distributed.initialize()` finds the
#      coordinator from the TPU metadata, hence `--distributed=auto`.
# WORKDIR must be a gs:// path that all workers share: Orbax writes the checkpoints under
# it, and the trainer resumes from the latest one there. Logs, metrics and TensorBoard
# files stay in ~/videomar_jax/runs/pod on worker 0. Ctrl-C (or a dropped connection) stops the training processes
# without a final checkpoint; run again with --resume_only to continue from the last one.
#
# Usage:
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE --workdir=gs://BUCKET/RUN [options] [-- ARGS]
#
# Options:
#   --tpu=NAME            TPU VM name (required)
#   --zone=ZONE           its zone (required)
#   --project=PROJECT     GCP project (default: gcloud's configured project)
#   --accelerator=TYPE    accelerator type, used only when creating (default: v5litepod-64)
#   --version=VERSION     TPU runtime version, used only when creating (default: the one
#                         Google documents for the accelerator: v2-alpha-tpuv5-lite for
#                         v5litepod-*, v2-alpha-tpuv5 for v5p-*, v2-alpha-tpuv6e for v6e-*,
#                         tpu-ubuntu2204-base otherwise)
#   --spot                create the TPU VM as a Spot (preemptible) VM
#   --repo=URL_OR_PATH    what the workers `git clone` (default: this checkout's origin)
#   --branch=BRANCH       branch to check out there (default: this checkout's branch)
#   --workdir=gs://B/RUN  checkpoints go to gs://B/RUN/checkpoints (required unless --delete)
#   --resume_only         skip create and install; just run training again
#   --delete              delete the TPU VM (without asking) and do nothing else
#   --dry_run             print every command (prefixed "+ "), run none, and assume the TPU
#                         VM does not exist yet
#   --help                this text
#   -- ARGS               everything after `--` goes to `videomar train`
#
# Examples:
#   launch/tpu_pod.sh --tpu=vm-base --zone=us-west4-a --spot --workdir=gs://my-bucket/base \
#     -- --config=configs/videomar.py:base --config.mesh.fsdp=4 --config.batch_size=256
#   launch/tpu_pod.sh --tpu=vm-base --zone=us-west4-a --workdir=gs://my-bucket/base \
#     --resume_only -- --config=configs/videomar.py:base --config.mesh.fsdp=4
#   launch/tpu_pod.sh --tpu=vm-base --zone=us-west4-a --delete
#
# Assumes the workers' login shell is bash (it is on Cloud TPU VM images) and that they can
# clone --repo (a public URL, or credentials set up on the workers).
set -euo pipefail

SCRIPT="${BASH_SOURCE[0]}"
REPO_ROOT="$(cd "$(dirname "$SCRIPT")/.." && pwd)"
# shellcheck source=launch/_launch_lib.sh
source "$REPO_ROOT/launch/_launch_lib.sh"
REMOTE_DIR="~/videomar_jax"  # expanded by the workers' shell, not here
REMOTE_RUN="runs/pod"  # relative to the checkout on each worker
REMOTE_LOG="~/videomar_train.log"
LIBTPU_RELEASES="https://storage.googleapis.com/jax-releases/libtpu_releases.html"

TPU=""
ZONE=""
PROJECT=""
ACCELERATOR="v5litepod-64"
VERSION=""
SPOT=0
REPO_URL=""
BRANCH=""
WORKDIR=""
RESUME_ONLY=0
DELETE=0
DRY_RUN=0
TRAIN_ARGS=()

parse_args() {
  while (( $# > 0 )); do
    case "$1" in
      --tpu=*) TPU="${1#*=}" ;;
      --zone=*) ZONE="${1#*=}" ;;
      --project=*) PROJECT="${1#*=}" ;;
      --accelerator=*) ACCELERATOR="${1#*=}" ;;
      --version=*) VERSION="${1#*=}" ;;
      --repo=*) REPO_URL="${1#*=}" ;;
      --branch=*) BRANCH="${1#*=}" ;;
      --workdir=*) WORKDIR="${1#*=}" ;;
      --spot) SPOT=1 ;;
      --resume_only) RESUME_ONLY=1 ;;
      --delete) DELETE=1 ;;
      --dry_run) DRY_RUN=1 ;;
      --help | -h) usage; exit 0 ;;
      --) shift; TRAIN_ARGS=("$@"); break ;;
      --tpu | --zone | --project | --accelerator | --version | --repo | --branch | --workdir)
        die "write $1=VALUE (with '=')" ;;
      *) die "unknown argument '$1' (arguments for videomar train go after a literal --)" ;;
    esac
    shift
  done
  [[ -n "$TPU" ]] || die "--tpu=NAME is required"
  [[ -n "$ZONE" ]] || die "--zone=ZONE is required"
  if (( ! DELETE )); then
    [[ -n "$WORKDIR" ]] || die "--workdir=gs://BUCKET/RUN is required (videomar train" \
      "writes checkpoints there)"
    [[ "$WORKDIR" == gs://* ]] || die "--workdir=$WORKDIR is not a gs:// path: the" \
      "workers must share the checkpoints (each would otherwise see its own)"
  fi
  if [[ -z "$VERSION" ]]; then
    VERSION="$(default_runtime_version "$ACCELERATOR")"
  fi
}

# The TPU software version Google documents for an accelerator type.
default_runtime_version() {
  case "$1" in
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}

# --repo and --branch default to this checkout's origin URL and current branch.
resolve_repo_and_branch() {
  if [[ -z "$REPO_URL" ]]; then
    REPO_URL="$(git -C "$REPO_ROOT" remote get-url origin 2>/dev/null)" ||
      die "this checkout has no 'origin' remote; pass --repo=URL (what the workers clone)"
    if [[ -n "$(git -C "$REPO_ROOT" status --porcelain 2>/dev/null)" ]]; then
      warn "this checkout has uncommitted changes; the workers clone $REPO_URL and" \
        "will not see them"
    fi
  fi
  if [[ -z "$BRANCH" ]]; then
    BRANCH="$(git -C "$REPO_ROOT" rev-parse --abbrev-ref HEAD 2>/dev/null)" || BRANCH=""
    [[ -n "$BRANCH" && "$BRANCH" != "HEAD" ]] ||
      die "cannot tell this checkout's branch (detached HEAD?); pass --branch=BRANCH"
  fi
}

# Sets CMD to: gcloud compute tpus tpu-vm VERB NAME --zone=ZONE [--project=PROJECT] ARGS...
tpu_vm_command() {
  local verb="$1"
  shift
  CMD=(gcloud compute tpus tpu-vm "$verb" "$TPU" --zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then
    CMD+=(--project="$PROJECT")
  fi
  CMD+=("$@")
}

tpu_vm() {
  tpu_vm_command "$@"
  run "${CMD[@]}"
}

create_tpu_vm() {
  local options=(--accelerator-type="$ACCELERATOR" --version="$VERSION")
  if (( SPOT )); then
    options+=(--spot)
  fi
  tpu_vm create "${options[@]}"
}

delete_tpu_vm() {
  tpu_vm delete --quiet
}

# Creates the TPU VM unless it exists; a preempted or terminated one is deleted first. Any
# describe error other than "not found" (no credentials, API disabled, ...) stops here.
ensure_tpu_vm() {
  local state errors
  if (( DRY_RUN )); then
    tpu_vm describe --format="value(state)"
    create_tpu_vm
    return 0
  fi
  tpu_vm_command describe --format="value(state)"
  echo "+ $(quote_words "${CMD[@]}")" >&2
  errors="$(mktemp)"
  if ! state="$("${CMD[@]}" 2>"$errors")"; then
    if grep -Eqi "not[_ ]found" "$errors"; then
      rm -f "$errors"
      echo "TPU VM $TPU does not exist in $ZONE: creating it ($ACCELERATOR, $VERSION)." >&2
      create_tpu_vm
      return 0
    fi
    cat "$errors" >&2
    rm -f "$errors"
    die "gcloud could not describe TPU VM $TPU (see above)"
  fi
  rm -f "$errors"
  case "$state" in
    PREEMPTED | TERMINATED)
      echo "TPU VM $TPU is $state: deleting and creating it again." >&2
      delete_tpu_vm
      create_tpu_vm
      ;;
    READY) echo "TPU VM $TPU exists (READY): reusing it." >&2 ;;
    *) warn "TPU VM $TPU exists in state '$state'; trying to use it anyway" ;;
  esac
}

# Runs one shell command line on all workers at once.
on_all_workers() {
  tpu_vm ssh --worker=all --command="$1"
}

install_on_workers() {
  local repo branch venv_apt cmd
  repo="$(shell_quote "$REPO_URL")"
  branch="$(shell_quote "$BRANCH")"
  # Ubuntu's python3 has no ensurepip until python3-venv is installed.
  venv_apt="sudo apt-get -qq -o DPkg::Lock::Timeout=600"
  cmd="set -euo pipefail"
  cmd+="; if [ -d $REMOTE_DIR/.git ]; then"
  cmd+=" git -C $REMOTE_DIR remote set-url origin $repo;"
  cmd+=" git -C $REMOTE_DIR fetch --quiet origin $branch;"
  cmd+=" git -C $REMOTE_DIR checkout --quiet --force -B $branch FETCH_HEAD;"
  cmd+=" else git clone --quiet --branch $branch $repo $REMOTE_DIR; fi"
  cmd+="; cd $REMOTE_DIR"
  cmd+="; if [ ! -x .venv/bin/python ]; then python3 -m venv .venv || {"
  cmd+=" $venv_apt update; $venv_apt install -y python3-venv; python3 -m venv --clear .venv; };"
  cmd+=" fi"
  cmd+="; .venv/bin/python -m pip install -q --upgrade pip"
  cmd+="; .venv/bin/python -m pip install -q -e . \"jax[tpu]\" -f $LIBTPU_RELEASES"
  on_all_workers "$cmd"
}

train_on_workers() {
  local train
  train="$(quote_words .venv/bin/videomar train --workdir="$REMOTE_RUN" \
    --config.train.checkpoint_dir="${WORKDIR%/}/checkpoints" --distributed=auto \
    ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})"
  on_all_workers \
    "set -euo pipefail; cd $REMOTE_DIR; PYTHONUNBUFFERED=1 $train 2>&1 | tee -a $REMOTE_LOG"
}

main() {
  parse_args "$@"
  if (( DELETE )); then
    delete_tpu_vm
    return 0
  fi
  if (( ! RESUME_ONLY )); then
    resolve_repo_and_branch
    ensure_tpu_vm
    install_on_workers
  fi
  train_on_workers
}

main "$@"
