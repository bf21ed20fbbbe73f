#!/usr/bin/env bash
# Set up (once) and run the checks: ruff, then pytest in two worker processes. Offline; CPU only.
#   bash scripts/test.sh            quick suite (what CI runs, plus `slow` tests when CI=true)
#   bash scripts/test.sh --slow     also the slow tests
#   bash scripts/test.sh -k weights extra arguments go to pytest
# TRANSFUSE_TEST_WORKERS=N sets the number of pytest-xdist workers (default 2; 0 runs in this process).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
MARK=(-m "not slow")
if [ "${1:-}" = "--slow" ] || [ "${CI:-}" = "true" ]; then
  MARK=()
  [ "${1:-}" = "--slow" ] && shift
fi
WORKERS="${TRANSFUSE_TEST_WORKERS:-2}"
PARALLEL=()
if [ "$WORKERS" != "0" ]; then
  # loadscope keeps a module's tests (and its module-scoped fixtures, e.g. trained members) in one worker; modules
  # go out in collection order (tests/conftest.py puts the minutes-long ones first), not xdist's by test count
  PARALLEL=(-n "$WORKERS" --dist loadscope --no-loadscope-reorder)
fi
ruff check src tests scripts
ruff format --check src tests scripts
python -m pytest "${PARALLEL[@]}" "${MARK[@]}" --durations=15 "$@"
