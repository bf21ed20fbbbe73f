#!/usr/bin/env bash
# Set up (once) and run the checks: ruff, then pytest. Offline; CPU only.
#   bash scripts/test.sh            quick suite (what CI runs, plus `slow` tests when CI=true)
#   bash scripts/test.sh --slow     also the slow tests
#   bash scripts/test.sh -k weights extra arguments go to pytest
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
MARK=(-m "not slow")
if [ "${1:-}" = "--slow" ] || [ "${CI:-}" = "true" ]; then
  MARK=()
  [ "${1:-}" = "--slow" ] && shift
fi
ruff check src tests scripts
ruff format --check src tests scripts
python -m pytest "${MARK[@]}" "$@"
