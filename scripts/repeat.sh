#!/usr/bin/env bash
# Flakiness check: run the same tests N times in a row and count the runs that passed.
#
#   bash scripts/repeat.sh N [pytest args...]     (default: tests/acceptance tests/faults)
#
# Every run's output is kept in .repeat/run-K.log; the summary line at the end reads
# "repeat: P of N runs passed". Exit status 0 only if all N passed. A failure is a bug to
# explain and fix, not a reason to re-run.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
N=${1:-10}
shift || true
[ $# -gt 0 ] || set -- tests/acceptance tests/faults
mkdir -p .repeat
passed=0
for k in $(seq 1 "$N"); do
    start=$(date +%s)
    if .venv/bin/python -m pytest -q -p no:cacheprovider -rfE "$@" >".repeat/run-$k.log" 2>&1; then
        passed=$((passed + 1))
        verdict=passed
    else
        verdict=FAILED
    fi
    echo "repeat: run $k/$N $verdict in $(($(date +%s) - start))s: $(tail -n 1 ".repeat/run-$k.log")"
done
echo "repeat: $passed of $N runs passed"
[ "$passed" -eq "$N" ]
