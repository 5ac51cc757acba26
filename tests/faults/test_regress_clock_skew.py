"""Regression test of issue 11, case 4: the event waits of parallel branches are kept in
database time, so a worker whose wall clock is an hour fast does not time a 10-minute wait
out within seconds.

The test process (a correct clock) starts a ``skewwait`` saga inline: branch ``wait`` begins
a 10-minute wait for an event named ``go``; sibling ``flaky`` fails and is retried after 2 s,
longer than ``in_place_retry_max``, so the saga is released. A ``sagad`` whose
``time.time()`` and ``datetime.now()`` are one hour fast (the ``sitecustomize`` of
``test_clock_skew``) claims it for that retry. The wait must survive that claim: no
``TIMEOUT``, the saga SUSPENDED waiting, and ``go`` delivered afterwards completes it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from faultkit import ACCEPT_DIR, SagadFactory, wait_until
from regresskit_sagad import RegressDb, brief
from test_clock_skew import SITECUSTOMIZE

LEASE = 2.0
FAST = 3600


@pytest.fixture
async def regress_db(pg_url: str) -> AsyncIterator[RegressDb]:
    db = RegressDb(pg_url, lease=LEASE)
    await db.setup()
    try:
        yield db
    finally:
        await db.close()


@pytest.mark.parametrize("skew", [FAST, 0], ids=["one-hour-fast", "control-no-skew"])
async def test_case4_a_fast_worker_clock_does_not_time_out_a_parallel_wait(
    sagad: SagadFactory, regress_db: RegressDb, tmp_path: Path, skew: int
) -> None:
    """Issue 11 case 4 (parallel waits use the worker's wall clock): a worker one hour fast
    claims a parallel saga whose branch waits 10 minutes for an event (to retry a sibling);
    the wait is not recorded as TIMEOUT within seconds, the saga stays SUSPENDED waiting for
    the event, and the event then completes it. ``control-no-skew``: the same with a correct
    clock (passes before the fix too: it checks the test itself)."""
    db = regress_db
    sid = await db.orch.start(
        saga_name="skewwait", initial_data={}, aggregation_id="skew-1", inline=True
    )
    row = await db.row(sid)
    assert row.status == "SUSPENDED" and row.deadline_at is not None, brief(row)
    assert [e["status"] for e in row.step_history or [] if e["step_id"] == "wait"] == ["WAITING"], (
        brief(row)
    )

    skew_dir = tmp_path / "skew"
    skew_dir.mkdir()
    (skew_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = db.sagad_env(
        PYTHONPATH=os.pathsep.join([str(skew_dir), str(ACCEPT_DIR)]), SKEW_SECONDS=str(skew)
    )
    fast = sagad.start(*db.sagad_args("--concurrency", "2"), env=env)
    await fast.wait_ready()

    async def claimed_again() -> bool:
        """flaky retried and the saga released, or (the bug) the wait timed out."""
        r = await db.row(sid)
        hist = r.step_history or []
        retried = any(e["step_id"] == "flaky" and e["status"] == "SUCCESS" for e in hist)
        timed_out = any(e["status"] == "TIMEOUT" for e in hist)
        return (retried and r.lease_owner is None) or timed_out

    await wait_until(claimed_again, timeout=30, what="the fast worker to retry flaky")
    row = await db.row(sid)
    timeouts = [e for e in row.step_history or [] if e["status"] == "TIMEOUT"]
    assert not timeouts, f"a 10-minute wait timed out within seconds: {brief(row)}"
    assert row.status == "SUSPENDED", brief(row)
    now = await db.db_now()
    assert row.deadline_at is None or row.deadline_at > now + timedelta(minutes=9), (
        f"due at {row.deadline_at}, database time {now}: {brief(row)}"
    )

    assert await db.orch.notify(aggregation_id="skew-1", event_name="go", event={"kind": "go"})

    async def completed() -> bool:
        return (await db.row(sid)).status == "COMPLETED"

    await wait_until(completed, timeout=30, what="the saga to complete after go")
    assert await fast.stop() == 0
    row = await db.row(sid)
    assert [e["status"] for e in row.step_history or [] if e["step_id"] == "wait"][-1] == (
        "SUCCESS"
    ), brief(row)
