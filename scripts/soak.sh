#!/usr/bin/env bash
# Soak test: the fault-injection run of tests/faults/test_chaos.py, for longer.
#
#   bash scripts/soak.sh [DURATION_SECONDS] [pytest args...]
#
# Keeps injecting faults (kill -9 of workers, pg_terminate_backend of their connections,
# SIGTERM drains, a database outage through a TCP proxy) for at least DURATION_SECONDS
# (default 600), starting a new batch of sagas whenever most of the previous one finished,
# then checks every saga and prints the summary line ("CHAOS seed=... lost=0 stuck=0
# concurrent_executions=0 ...").
#
# Environment (defaults in parentheses): CHAOS_SAGAS per batch (2000), CHAOS_WORKERS (4),
# CHAOS_SEED (20261125; vary it between soaks), TEST_DATABASE_URL (see tests/conftest.py).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION=${1:-600}
shift || true
export CHAOS_SECONDS="$DURATION"
exec .venv/bin/pytest -q -s tests/faults/test_chaos.py "$@"
