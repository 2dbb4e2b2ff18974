# Sourced by the launch scripts: makes sure ./.venv exists and has this package installed
# with its extras, then puts it first on PATH. Re-installs only when setup.py or the
# constraints file changes.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python3}"
# The exact versions the test suite passes with (see the file); VIDEOMAR_CONSTRAINTS=
# (empty) installs without them, e.g. with a $VIDEOMAR_TORCH whose dependencies differ.
CONSTRAINTS="${VIDEOMAR_CONSTRAINTS-launch/constraints.txt}"
# torch: the tested version, from PyTorch's CPU index (constraints.txt leaves it out).
TORCH="${VIDEOMAR_TORCH:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating virtual environment in $REPO_ROOT/.venv"
  "$PYTHON" -m venv .venv
fi
STAMP=".venv/.videomar_installed_$(cat setup.py ${CONSTRAINTS:+"$CONSTRAINTS"} | sha1sum \
  | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
  echo "[setup] installing videomar_jax with extras [test,torch,tpu] (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # The CPU build of torch (the `torch` extra accepts any >= 2.4, and PyPI's default
    # Linux build is a CUDA one of several GB): PyTorch's CPU index where it is reachable,
    # else the package index ($VIDEOMAR_TORCH: a CPU wheel on machines that serve one).
    .venv/bin/python -m pip install -q --retries 0 --timeout 20 "$TORCH" \
        --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
      || .venv/bin/python -m pip install -q "$TORCH"
  fi
  .venv/bin/python -m pip install -q ${CONSTRAINTS:+-c "$CONSTRAINTS"} -e ".[test,torch,tpu]"
  rm -f .venv/.videomar_installed_* && touch "$STAMP"
fi
export PATH="$REPO_ROOT/.venv/bin:$PATH"
# Quiet TensorFlow-less TFDS and JAX's CPU-only notice; keep real warnings.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
