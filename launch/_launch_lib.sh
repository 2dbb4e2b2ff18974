#!/usr/bin/env bash
# Shared by launch/tpu_pod.sh and launch/gpu.sh (sourced, not run): help text, messages,
# shell quoting, and `run`, which prints a command and runs it unless DRY_RUN=1.
# The sourcing script sets SCRIPT to its own path.

usage() {
  sed -n '2,/^set -euo pipefail/p' "$SCRIPT" | sed '$d' | sed -e 's/^# \{0,1\}//'
}

die() {
  echo "$(basename "$SCRIPT"): error: $*" >&2
  echo "Run launch/$(basename "$SCRIPT") --help for usage." >&2
  exit 2
}

warn() {
  echo "$(basename "$SCRIPT"): warning: $*" >&2
}

# One word for a POSIX shell: bare when it is plain, otherwise (its value) in single quotes.
shell_quote() {
  local word="$1" sq="'" escaped="'\\''"
  if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$word"
  elif [[ "$word" =~ ^(--?[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    # --flag='value': the same word, easier to read.
    printf '%s' "${BASH_REMATCH[1]}"
    shell_quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${word//$sq/$escaped}"
  fi
}

# All arguments quoted and joined with spaces: a line a shell reads back as those words.
quote_words() {
  local word line=""
  for word in "$@"; do
    line+="${line:+ }$(shell_quote "$word")"
  done
  printf '%s' "$line"
}

# Prints the command prefixed with "+ "; runs it unless --dry_run.
run() {
  if (( DRY_RUN )); then
    echo "+ $(quote_words "$@")"
    return 0
  fi
  echo "+ $(quote_words "$@")" >&2
  "$@"
}
