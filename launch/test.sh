#!/usr/bin/env bash
# Runs the test suite on the CPU (sets up .venv on first use). Extra arguments go to pytest,
# e.g. `bash launch/test.sh -m "not slow"` for the fast tests only.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec python -m pytest -q --timeout=900 --durations=15 tests "$@"
