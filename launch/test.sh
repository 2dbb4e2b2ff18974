#!/usr/bin/env bash
# Runs the test suite on the CPU (sets up .venv on first use). Extra arguments go to pytest,
# e.g. `bash launch/test.sh -m "not slow"` for the fast tests only.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
# Test files are spread over $VIDEOMAR_TEST_WORKERS processes (default: one per core; each
# file stays on one worker, so module fixtures are built once); `-n 0` runs them in one.
WORKERS="${VIDEOMAR_TEST_WORKERS:-$(nproc)}"
exec python -m pytest -q --timeout=900 --durations=15 -n "$WORKERS" --dist=loadfile tests "$@"
