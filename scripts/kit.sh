#!/usr/bin/env bash
# conta_kit's two entry points. Each one sets up .venv (once; later calls reuse it) and then runs.
#   bash scripts/kit.sh main [conta-kit run options]   # the notebook sequence on the embedded benchmark
#   bash scripts/kit.sh test [pytest options]          # the test suite
#   bash scripts/kit.sh setup                          # only the environment
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${CONTA_KIT_VENV:-.venv}

setup() {
  "$PYTHON" - <<'PY' || { echo "conta_kit needs Python >= 3.10 (set PYTHON=/path/to/python3.x)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  local stamp
  stamp="$VENV/.conta_kit-$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "[kit] installing the pinned environment into $VENV (first time: a few minutes)" >&2
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.txt
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -e .
    rm -f "$VENV"/.conta_kit-*
    touch "$stamp"
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  main) setup; exec "$VENV/bin/conta-kit" run "$@" ;;
  test) setup; exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash scripts/kit.sh {main|test|setup} [options]" >&2; exit 2 ;;
esac
