#!/usr/bin/env bash
# The project's test command: `bash scripts/test.sh [pytest args...]`.
#
# Works on a fresh machine from any directory: creates .venv (Python >= 3.11) if
# missing, installs the project with its test extras, then runs
#   ruff check . / ruff format --check . / mypy --strict saga_core / pytest "$@"
# Every step runs even if an earlier one failed; the exit status is non-zero if
# any failed (pytest's "no tests collected", exit 5, counts as a failure).
#
# Environment:
#   PYTHON=/path/to/python3.X   interpreter used to create .venv (default: first
#                               of python3, python3.13, python3.12, python3.11 that is >= 3.11)
#   SAGA_FORCE_INSTALL=1        reinstall even if pyproject.toml is unchanged
#   TEST_DATABASE_URL, SAGA_TEST_NO_LOCAL_PG, SAGA_TEST_PG_CTL: see tests/conftest.py
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$(pwd)
VENV="$ROOT/.venv"

die() { echo "test.sh: $*" >&2; exit 1; }

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
    echo "test.sh: creating $VENV with $PY ($("$PY" --version 2>&1))"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || die "could not create $VENV (Debian/Ubuntu: apt-get install python3-venv)"
fi

# Install (quietly; pip still prints errors) when pyproject.toml changed since the last install.
STAMP="$VENV/.saga-test-install"
WANT=$("$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' pyproject.toml) ||
    die "could not read pyproject.toml"
if [ "${SAGA_FORCE_INSTALL:-0}" != "0" ] || [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "test.sh: installing -e '.[test]' into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]' ||
        die "pip install -e '.[test]' failed (see errors above)"
    echo "$WANT" >"$STAMP"
fi

export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"

FAILED=()
step() {
    local name=$1
    shift
    echo "==> $name"
    "$@"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "test.sh: FAILED: $name (exit $rc)" >&2
        FAILED+=("$name")
    fi
    return 0
}

step "ruff check ." ruff check .
step "ruff format --check ." ruff format --check .
step "mypy --strict saga_core" mypy --strict saga_core

echo "==> pytest $*"
"$VENV/bin/python" -m pytest "$@"
PYTEST_RC=$?
case "$PYTEST_RC" in
    0) ;;
    5)
        echo "test.sh: FAILED: pytest collected no tests (exit 5); a test run must run tests" >&2
        FAILED+=("pytest (no tests collected)")
        ;;
    *)
        echo "test.sh: FAILED: pytest (exit $PYTEST_RC)" >&2
        FAILED+=("pytest")
        ;;
esac

if [ "${#FAILED[@]}" -ne 0 ]; then
    echo "test.sh: ${#FAILED[@]} step(s) failed:" >&2
    printf '  - %s\n' "${FAILED[@]}" >&2
    exit 1
fi
exit 0
