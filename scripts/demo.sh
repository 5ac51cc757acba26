#!/usr/bin/env bash
# Run the examples: `bash scripts/demo.sh [args...]` (runs `python -m examples`).
# Creates .venv (Python >= 3.11) if missing and installs the project into it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="$PWD/.venv"

if [ ! -x "$VENV/bin/python" ]; then
    PY=""
    for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PY=$(command -v "$candidate")
            break
        fi
    done
    [ -n "$PY" ] || { echo "demo.sh: need Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
    "$PY" -m venv "$VENV"
fi

"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e .
exec "$VENV/bin/python" -m examples "$@"
