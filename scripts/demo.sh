#!/usr/bin/env bash
# The demo: `bash scripts/demo.sh [--database-url URL] [--deadline S] [-v]`.
#
# Works on a fresh machine from any directory: creates .venv (Python >= 3.11) if
# missing, installs the project into it (pip's output only if it fails), then runs
#   python -m examples "$@"
# which starts the example sagas on a throwaway SQLite file (or URL), runs them, prints
# what happened and exits non-zero if any saga did not end as expected. Relative paths
# in the arguments are taken from the directory you run it in.
#
# Environment:
#   PYTHON=/path/to/python3.X   interpreter used to create .venv (default: first
#                               of python3, python3.13, python3.12, python3.11 that is >= 3.11)
#   SAGA_FORCE_INSTALL=1        reinstall even if pyproject.toml is unchanged
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || exit 1
VENV="$ROOT/.venv"

die() { echo "demo.sh: $*" >&2; exit 1; }

find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=$(find_python) || die "need Python >= 3.11 (set PYTHON=/path/to/python3.11 or install python3.11)"
    echo "demo.sh: creating $VENV with $PY ($("$PY" --version 2>&1))"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || die "could not create $VENV (Debian/Ubuntu: apt-get install python3-venv)"
fi

# Install when pyproject.toml changed since the last install.
STAMP="$VENV/.saga-demo-install"
WANT=$("$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$ROOT/pyproject.toml") ||
    die "could not read $ROOT/pyproject.toml"
if [ "${SAGA_FORCE_INSTALL:-0}" != "0" ] || [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "demo.sh: installing the project into $VENV (a minute or so the first time)"
    # pip's output is shown only when it fails (setuptools warns even under --quiet).
    if ! LOG=$("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT" 2>&1); then
        printf '%s\n' "$LOG" >&2
        die "pip install -e $ROOT failed (see errors above)"
    fi
    echo "$WANT" >"$STAMP"
fi

# The demo's closing hint repeats this command as it was typed.
export SAGA_DEMO_COMMAND="bash $(printf '%q' "$0")"

# `examples` is not installed: import it from the checkout. -P keeps the current directory
# off sys.path, so a directory of yours named `examples` cannot shadow it.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$VENV/bin/python" -P -m examples "$@"
