# Sourced by demo.sh and test.sh: make .venv with the project installed, once.
# The dependencies come from requirements-lock.txt, the exact versions the tests ran with (scripts/lock.py makes it
# from pyproject.toml's ranges, on purpose only), and transfuse itself is installed editable without them. A stamp
# holding the hash of pyproject.toml and the lock makes a second call install nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
LOCK=requirements-lock.txt
if [ ! -x "$VENV/bin/python" ]; then
  PYTHON="$(command -v python3.11 || command -v python3)"
  echo "creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.transfuse-install"
WANT="$(cat pyproject.toml "$LOCK" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "installing transfuse and the versions of $LOCK into $VENV (pip)"
  "$VENV/bin/python" -m pip install --quiet -r "$LOCK"
  # a dependency added to pyproject.toml without regenerating the lock stops here, saying so
  "$VENV/bin/python" scripts/lock.py --check
  "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
