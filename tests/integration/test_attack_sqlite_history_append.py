"""Attack: SQLite appends history entries as nested ``json_insert(json_insert(...))`` calls,
one level per entry; from about 30 entries in one write SQLite refuses the statement
("parser stack overflow"). One write appends that many when a parallel saga with many
branches rolls back (a ``CANCELLED`` entry per running sibling, in one checkpoint), or when
a full inbox (32 events) is dropped as ``UNUSED`` at once. The refused checkpoint is retried
forever (SQLite's ``OperationalError`` counts as transient) while the keeper renews the
lease: the saga is stuck RUNNING under a worker that never gets anywhere, and the process
cannot even be stopped cleanly (its release queues behind that checkpoint). Each scenario
runs in a child process (``attack_history_child.py``) killed after a timeout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = Path(__file__).resolve().parent / "attack_history_child.py"
TIMEOUT_S = 30


def run_child(scenario: str, db: Path) -> dict[str, object]:
    try:
        out = subprocess.run(
            [sys.executable, str(CHILD), scenario, str(db)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{scenario}: the worker was still stuck after {TIMEOUT_S}s (a checkpoint SQLite "
            f"refuses, retried forever); stderr tail: {str(exc.stderr)[-600:]}"
        ) from None
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_wide_parallel_saga_rolls_back_on_sqlite(tmp_path: Path) -> None:
    result = run_child("wide", tmp_path / "wide.db")
    assert result["status"] == "COMPENSATED", result
    assert result["counts"]["CANCELLED"] == 39, result  # type: ignore[index]


def test_a_full_inbox_dropped_at_once_on_sqlite(tmp_path: Path) -> None:
    result = run_child("full_inbox", tmp_path / "inbox.db")
    assert result["status"] == "COMPLETED", result
    assert result["counts"]["UNUSED"] == 32 and not result["inbox"], result  # type: ignore[index]
