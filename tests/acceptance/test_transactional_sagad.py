"""Transactional steps under real ``sagad`` processes: a worker killed with SIGKILL in the
middle of a transactional step (its transaction open, its ledger row written but not
committed) leaves nothing behind; the worker that takes the saga over posts exactly once."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import app_sagas
from sagad_kit import SagaDb, SagadFactory, wait_until
from sqlalchemy import text

TERMINAL = {"COMPLETED", "COMPENSATED", "ABORTED", "FAILED"}


async def test_kill9_mid_transactional_steps_each_posts_exactly_once(
    sagad: SagadFactory, saga_db: SagaDb
) -> None:
    async with saga_db.engine.begin() as conn:
        await conn.execute(text(app_sagas.ledger_ddl("postgresql", saga_db.table)))
    args = saga_db.sagad_args("--concurrency", "8", "--batch-size", "4")
    env = saga_db.sagad_env(lease=2.0)
    victim = sagad.start(*args, env=env)
    await victim.wait_ready()
    forward: list[Any] = []
    backward: list[Any] = []
    for _ in range(6):
        forward += await saga_db.start("ledger", 2, {"sleep_p": 1.0})
        backward += await saga_db.start("ledger_rollback", 2, {"comp_sleep": 1.0})
    others = [sagad.start(*args, env=env) for _ in range(2)]

    async def victim_in_p_both_ways() -> bool:
        rows = await saga_db.fetch(
            "SELECT DISTINCT phase FROM {t}_runs "
            "WHERE pid = :pid AND step_id = 'p' AND ended_at IS NULL",
            pid=victim.pid,
        )
        return {r.phase for r in rows} == {"execute", "compensate"}

    await wait_until(victim_in_p_both_ways, timeout=30, what="the victim inside p both ways")
    in_flight = await saga_db.fetch(
        "SELECT saga_id, phase FROM {t}_runs WHERE pid = :pid AND step_id = 'p' "
        "AND ended_at IS NULL",
        pid=victim.pid,
    )
    victim.proc.kill()
    assert await victim.wait_exit() == -signal.SIGKILL
    await asyncio.gather(*(w.wait_ready() for w in others))

    await saga_db.wait_all(TERMINAL, len(forward) + len(backward), timeout=90)
    status = dict(await saga_db.fetch("SELECT id, status FROM {t}"))
    assert {status[i] for i in forward} == {"COMPLETED"}
    assert {status[i] for i in backward} == {"COMPENSATED"}

    ledger = Counter(
        (r.saga_id, r.kind) for r in await saga_db.fetch("SELECT saga_id, kind FROM {t}_ledger")
    )
    expected = Counter({(i, "post"): 1 for i in forward + backward})
    expected.update({(i, "reverse"): 1 for i in backward})
    assert ledger == expected, "every post (and reversal) exactly once"

    # The killed executions did run (and write) before the kill, and ran again elsewhere.
    runs = await saga_db.runs()
    p_runs = Counter((r.saga_id, r.phase) for r in runs if r.step_id == "p")
    assert in_flight and all(p_runs[(r.saga_id, r.phase)] >= 2 for r in in_flight)
