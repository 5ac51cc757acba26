"""A poison saga under real ``sagad`` processes: its step SIGKILLs the worker every time.

A supervisor loop (standing in for systemd's ``Restart=``) restarts sagad whenever it dies.
After ``max_recoveries`` + 1 crashes the next claim quarantines the saga (FAILED, with the
reason and a QUARANTINED history entry) instead of running the step again. Sagas that ran
before it and sagas started after it all complete.

Known limit, not exercised here: a crash counts as a recovery for every saga the dead
process held, so a saga that happens to be in flight in the same process at each of
``max_recoveries`` + 1 consecutive crashes is quarantined too (with the default of 5, six
crashes in a row while it runs). Running suspects (``recovery_count`` > 0) in isolation
would remove that; it is not built yet.
"""

from __future__ import annotations

import asyncio

from faultkit import FaultDb, Sagad, SagadFactory, child_env, wait_until

MAX_RECOVERIES = 2
LEASE = 1.0


async def test_poison_saga_is_quarantined_by_real_workers(
    sagad: SagadFactory, fault_db: FaultDb
) -> None:
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
        await current[0].wait_ready()
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
    finally:
        stop.set()
        await asyncio.gather(supervisor, return_exceptions=True)

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
