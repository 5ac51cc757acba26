"""Regression test of issue 11, case 6: a suspect saga (its worker was lost twice in a row
while it ran) is run alone by sagad, and for a parallel saga that isolated run really starts
its branches instead of only recording INTERRUPTED ("worker draining").

A suspect is made for real: the test SIGKILLs ``sagad`` twice while the saga's step runs
(lease 1 s), then starts a third ``sagad``, which claims the suspect on its own ("running saga
alone" in its log). The first thing that run records must be the outcome of the step(s) it
ran alone, by that process.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from regresskit_sagad import RegressDb, brief
from sagad_kit import Sagad, SagadFactory, wait_until

LEASE = 1.0
STEP_S = 2.5
"""How long every step takes: long enough to kill its worker while it runs."""


@pytest.fixture
async def regress_db(pg_url: str) -> AsyncIterator[RegressDb]:
    db = RegressDb(pg_url, lease=LEASE)
    await db.setup()
    try:
        yield db
    finally:
        await db.close()


async def _kill_while_running(
    sagad: SagadFactory, db: RegressDb, sid: uuid.UUID, steps: set[str], runs_before: int
) -> int:
    """Start a sagad, wait until it runs one of ``steps`` of the saga (a run newer than the
    first ``runs_before``), SIGKILL it; the number of runs then."""
    proc = sagad.start(*db.sagad_args("--concurrency", "4"), env=db.sagad_env())

    async def running() -> int:
        runs = await db.runs(sid)
        fresh = [r for r in runs[runs_before:] if r.pid == proc.pid and r.step_id in steps]
        return len(runs) if fresh and any(r.ended_at is None for r in fresh) else 0

    n = await wait_until(running, timeout=60, what=f"sagad {proc.pid} to run {sorted(steps)}")
    proc.proc.kill()
    await proc.wait_exit()
    return n


def _worker_pid(entry: dict[str, object]) -> int | None:
    parts = str(entry.get("worker") or "").split(":")
    return int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else None


@pytest.mark.parametrize(
    ("saga", "steps"),
    [
        pytest.param("fork", {"a"}, id="parallel-first-step"),
        pytest.param("fork", {"b", "c"}, id="parallel-branches"),
        pytest.param("seq", {"a"}, id="sequential"),
    ],
)
async def test_case6_a_suspect_run_alone_starts_its_steps(
    sagad: SagadFactory, regress_db: RegressDb, saga: str, steps: set[str]
) -> None:
    """Issue 11 case 6 (suspect isolation does nothing for parallel sagas): the saga is lost
    twice while ``steps`` run; the third sagad runs it alone, and that isolated run records
    the outcome of ``steps`` (run by that process) before anything else: not an INTERRUPTED
    "worker draining" release that starts no branch. The saga then completes. The sequential
    saga is the control (isolated correctly before the fix too)."""
    db = regress_db
    (sid,) = [
        await db.orch.start(
            saga_name=saga, initial_data={"sleep": STEP_S}, aggregation_id=f"suspect-{saga}"
        )
    ]
    n = await _kill_while_running(sagad, db, sid, steps, 0)
    await _kill_while_running(sagad, db, sid, steps, n)
    row = await db.row(sid)
    assert row.takeover_count == 1 and row.lease_owner is not None, brief(row)

    alone: Sagad = sagad.start(*db.sagad_args("--concurrency", "4"), env=db.sagad_env())

    async def completed() -> bool:
        return (await db.row(sid)).status == "COMPLETED"

    await wait_until(completed, timeout=90, what=f"saga {sid} to complete")
    assert await alone.stop() == 0
    assert "running saga alone" in alone.log, alone.log[-3000:]

    row = await db.row(sid)
    mine = [e for e in row.step_history or [] if _worker_pid(e) == alone.pid]
    assert mine, brief(row)
    first = mine[: len(steps)]
    assert [(e["phase"], e["status"]) for e in first] == [("execute", "SUCCESS")] * len(steps), (
        f"the isolated run did not run {sorted(steps)} first: {brief(row)}"
    )
    assert {e["step_id"] for e in first} == steps, brief(row)
    ran_alone = {r.step_id for r in await db.runs(sid) if r.pid == alone.pid}
    assert steps <= ran_alone, brief(row)
