"""A poison saga under real ``sagad`` processes: its step SIGKILLs the worker every time.

A supervisor loop (standing in for systemd's ``Restart=``) restarts sagad whenever it dies.
After ``max_recoveries`` + 1 crashes the next claim quarantines the saga (FAILED, with the
reason and a QUARANTINED history entry) instead of running the step again. Sagas that ran
before it and sagas started after it all complete.

A crash counts as a recovery for every saga the dead process held. Sagas lost twice in a
row (suspects) are run one at a time, alone in their process: the second test starts slow
sagas beside the poison, so that they die with it at its first crashes, and checks that they
complete while only the poison is quarantined.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faultkit import FaultDb, Sagad, SagadFactory, child_env, wait_until

MAX_RECOVERIES = 2
LEASE = 1.0


@asynccontextmanager
async def supervised(
    sagad: SagadFactory, fault_db: FaultDb
) -> AsyncIterator[tuple[list[Sagad], list[int]]]:
    """One sagad at a time, restarted whenever it dies (as systemd's ``Restart=`` would):
    yields the processes started so far and the exit codes of those that died."""
    env = child_env(fault_db.table, lease=LEASE, CHAOS_MAX_RECOVERIES=str(MAX_RECOVERIES))
    args = ["--app", "chaos_app:make", "--database-url", fault_db.url, "--concurrency", "8"]
    env["SAGA_POLL_INTERVAL"] = "0.2"
    crashes: list[int] = []
    current: list[Sagad] = [sagad.start(*args, env=env)]
    stop = asyncio.Event()

    async def supervise() -> None:
        while not stop.is_set():
            proc = current[-1]
            if not proc.running():
                crashes.append(proc.proc.returncode)
                current.append(sagad.start(*args, env=env))
            await asyncio.sleep(0.05)

    supervisor = asyncio.create_task(supervise())
    try:
        yield current, crashes
    finally:
        stop.set()
        await asyncio.gather(supervisor, return_exceptions=True)


async def status_of(fault_db: FaultDb, saga_id: object) -> str:
    rows = await fault_db.fetch("SELECT status FROM {t} WHERE id = :i", i=saga_id)
    return str(rows[0][0])


async def test_poison_saga_is_quarantined_by_real_workers(
    sagad: SagadFactory, fault_db: FaultDb
) -> None:
    async with supervised(sagad, fault_db) as (current, crashes):
        before = await fault_db.start_many([("chaos", {}) for _ in range(10)])

        async def completed() -> int:
            rows = await fault_db.fetch(
                "SELECT count(*) FROM {t} WHERE saga_name = 'chaos' AND status = 'COMPLETED'"
            )
            return int(rows[0][0])

        async def before_done() -> bool:
            return await completed() == len(before)

        await wait_until(before_done, timeout=60, what="the first sagas to complete")
        (poison,) = await fault_db.start_many([("poison", {})])

        async def quarantined() -> bool:
            rows = await fault_db.fetch("SELECT status FROM {t} WHERE id = :i", i=poison)
            return bool(rows[0][0] == "FAILED")

        await wait_until(quarantined, timeout=120, what="the poison saga to be quarantined")
        after = await fault_db.start_many([("chaos", {}) for _ in range(10)])

        async def others_done() -> bool:
            return await completed() == len(before) + len(after)

        await wait_until(others_done, timeout=120, what="the later sagas to complete")

    row = await fault_db.orch.engine.store.saga_get(poison)
    assert row is not None
    n = MAX_RECOVERIES + 1
    assert row.last_error == (
        f"quarantined: the run of step b ended abnormally {n} times in a row "
        "(worker crashed or killed, or an unexpected error); see history"
    )
    assert row.recovery_count == n and row.takeover_count == n
    assert row.lease_owner is None and row.deadline_at is None
    quarantine = [e for e in row.step_history or [] if e.get("status") == "QUARANTINED"]
    assert [(e["phase"], e["step_id"]) for e in quarantine] == [("admin", "b")]
    runs = await fault_db.fetch(
        "SELECT step_id, count(*) FROM {t}_runs WHERE saga_id = :i GROUP BY step_id", i=poison
    )
    assert dict((r[0], r[1]) for r in runs) == {"a": 1, "b": n}, "b ran once per crash"
    assert crashes == [-9] * n, "each crash was the step's SIGKILL, nothing else"

    last = current[-1]
    assert last.running()
    assert await last.stop() == 0


async def test_sagas_lost_with_a_poison_saga_complete_alone(
    sagad: SagadFactory, fault_db: FaultDb
) -> None:
    async with supervised(sagad, fault_db) as (current, crashes):
        # Slow sagas first (each step takes 1.5 s), then the poison: the first crashes take
        # them down too, until they are suspects and run alone.
        slow = await fault_db.start_many([("chaos", {"sleep": 1.5}) for _ in range(3)])
        (poison,) = await fault_db.start_many([("poison", {})])

        async def settled() -> bool:
            statuses = [await status_of(fault_db, s) for s in (*slow, poison)]
            return all(st in ("COMPLETED", "FAILED") for st in statuses)

        await wait_until(settled, timeout=150, what="the sagas to settle")
    assert await status_of(fault_db, poison) == "FAILED"
    row = await fault_db.orch.engine.store.saga_get(poison)
    assert row is not None and (row.last_error or "").startswith("quarantined:")
    for sid in slow:
        row = await fault_db.orch.engine.store.saga_get(sid)
        assert row is not None and row.status == "COMPLETED", row and row.last_error
    takeovers = await fault_db.fetch(
        "SELECT max(takeover_count) FROM {t} WHERE saga_name = 'chaos'"
    )
    # Lost twice with the poison (a suspect), then run alone: without that, the third crash
    # would have taken them too and quarantined them.
    assert takeovers[0][0] >= 2, "the slow sagas died with the poison"
    assert crashes == [-9] * (MAX_RECOVERIES + 1)
    assert await current[-1].stop() == 0
