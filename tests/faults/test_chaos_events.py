"""Fault injection on parallel sagas that wait for external events.

Real ``sagad`` processes run ``evfork`` sagas (``a -> (t, n, w) -> d``, see
:mod:`chaos_events`): branch ``t`` waits for one or two events by token, ``n`` for one event
named ``approval``, while ``w`` sleeps (and may fail, with a retry delay that releases the
saga and has it claimed again) and ``d`` may fail for good (the saga rolls back). The steps
hand out ``current_step().token`` and the answers come at once, often before the step's
WAITING checkpoint has committed (the step lingers after handing it out; half of the sagas
also deliver from inside the worker, racing the wait; some waits are answered late, when
the saga may have suspended): from the test's deliverers
(:class:`evkit.Deliverers`: several orchestrators with pools of their own, concurrently,
duplicated, some duplicates late), by token and by ``aggregation_id`` + ``approval``.
Meanwhile the test SIGKILLs workers (each replaced at once), terminates their database
connections (``pg_terminate_backend``) and now and then SIGTERMs one (a drain), at random
moments (seeded).

Afterwards (:func:`evkit.check_event_sagas`), every saga:

- is terminal: COMPLETED, or COMPENSATED exactly where its plan has a step fail for good;
  none stuck, none SUSPENDED without a due time (stranded), none lost;
- every accepted event was RECEIVED and then, if queued, CONSUMED or UNUSED exactly once;
  the events consumed are exactly those in the saga's context, each once, each by the step
  it was sent to, one per wait; each waiting step that succeeded saw its rounds once, in
  order; the inbox of a finished saga is empty; a token was accepted at most once; no
  delivery raised;
- a step's token is the same for every run of one wait (claims, takeovers, a sibling's
  retry, its own failed attempt) and new for the next wait; its idempotency key never
  changes, so each side effect (keyed by it) was applied once: one row per step and per
  compensation, matching what succeeded and what was compensated;
- runs of one step never overlapped, no step ran before the steps it depends on had
  succeeded, no compensation overlapped an execution.

Knobs: ``CHAOS_EV_SAGAS`` (200), ``CHAOS_SEED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from typing import Any

import pytest
from chaos_events import EVENTS_DDL, event_tables
from evkit import Deliverers, check_event_sagas
from faultkit import FaultDb, SagadFactory, child_env, wait_settled
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from test_chaos import Chaos

from saga_core import SagaOrchestrator

N_SAGAS = int(os.environ.get("CHAOS_EV_SAGAS", "200"))
SEED = int(os.environ.get("CHAOS_SEED", "20261125"))
N_WORKERS = 3
LEASE = 2.0
START_OVER = 8.0
"""The sagas are started in batches over this many seconds (the faults start at once)."""
MAX_FAULT_PHASE = 30.0
"""Faults stop after this long even if sagas are still running (the rest settle without):
the test stays well under 90 s on a loaded two-core machine."""
MAX_CONNECTIONS = 60
"""Connections to the test database at any moment, at most (the server has 100 for all)."""


def plan_for(rng: random.Random) -> dict[str, Any]:
    data: dict[str, Any] = {
        "rounds": rng.choice([1, 1, 2]),
        "ask_delay": rng.choice([0.0, 0.0, 0.02, 0.1, 0.3]),
        "answer_after": {s: 0.0 if rng.random() < 0.7 else rng.uniform(1.0, 2.5) for s in "tn"},
        "sleep_w": rng.choice([0.05, 0.2, 0.6, 1.0]),
    }
    if rng.random() < 0.5:
        data["self_deliver"] = rng.choice(["token", "name"])
    if rng.random() < 0.15:
        data["fail_ask"] = True
    r = rng.random()
    if r < 0.2:
        data["plan"] = {rng.choice("atnw"): rng.randint(1, 2)}  # fails, recovers on a retry
    elif r < 0.35:
        data["plan"] = {rng.choice("wd"): "always"}  # fails for good: roll back
    return data


async def peak_connections(db: FaultDb, stop: asyncio.Event, peak: list[int]) -> None:
    """Sample the connections to the test database until ``stop``; the largest in ``peak``."""
    while not stop.is_set():
        (n,) = (
            await db.fetch(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            )
        )[0]
        peak[0] = max(peak[0], int(n))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def deliverer(db: FaultDb, i: int) -> SagaOrchestrator[Any]:
    engine = create_async_engine(
        db.url,
        pool_size=2,
        max_overflow=1,
        pool_timeout=120,
        connect_args={"server_settings": {"application_name": f"chaos-test-deliverer-{i}"}},
    )
    return SagaOrchestrator(
        model_class=db.orch.engine.model_class, session_maker=async_sessionmaker(engine)
    )


async def test_event_sagas_under_faults(
    sagad: SagadFactory, fault_db: FaultDb, capsys: pytest.CaptureFixture[str]
) -> None:
    t_start = time.monotonic()
    rng = random.Random(SEED)
    async with fault_db.engine.begin() as conn:
        for ddl in EVENTS_DDL:
            await conn.execute(text(ddl.format(t=fault_db.table)))
    env = child_env(
        fault_db.table,
        lease=LEASE,
        CHAOS_POOL="2,2",
        SAGA_POLL_INTERVAL="0.25",
        SAGA_DRAIN_TIMEOUT="20",
        SAGA_HEARTBEAT_INTERVAL="1",
        SAGA_STARTUP_TIMEOUT="60",
    )
    args = ["--app", "chaos_app:make", "--database-url", fault_db.url, "--concurrency", "16"]
    chaos = Chaos(sagad, fault_db, args, env)
    orchs = [deliverer(fault_db, i) for i in range(2)]
    stop_sampling, stop_delivering = asyncio.Event(), asyncio.Event()
    peak = [0]
    sampler = asyncio.create_task(peak_connections(fault_db, stop_sampling, peak))
    deliverers = Deliverers(fault_db, orchs, random.Random(SEED + 1))
    answering = asyncio.create_task(deliverers.run(stop_delivering))
    try:
        for _ in range(N_WORKERS):
            chaos.spawn()
        for w in chaos.workers:
            await w.wait_ready(60)

        plans = [("evfork", plan_for(rng)) for _ in range(N_SAGAS)]

        async def start_all() -> None:
            batches = 4
            for b in range(batches):
                await fault_db.start_many(plans[b::batches])
                if b < batches - 1:
                    await asyncio.sleep(START_OVER / batches)  # pacing the load, not a sync

        starter = asyncio.create_task(start_all())
        t0 = time.monotonic()
        while time.monotonic() - t0 < MAX_FAULT_PHASE:
            chaos.replace_dead()
            if starter.done() and await fault_db.unfinished() == 0:
                break
            action = rng.choices(["kill9", "terminate", "sigterm"], weights=[4, 4, 1])[0]
            await getattr(chaos, action)(rng)
            await asyncio.sleep(rng.uniform(0.2, 0.8))  # when the next fault strikes
        await starter
        t_faults = time.monotonic() - t0

        async def unfinished() -> int:
            chaos.replace_dead()
            return await fault_db.unfinished()

        await wait_settled(unfinished, stall=30.0, limit=120.0)  # the rest count as stuck
        t_settle = time.monotonic() - t0 - t_faults
        stop_delivering.set()
        await answering
        for w in chaos.draining:
            assert await w.wait_exit(60) == 0, f"drained sagad {w.pid} exit code:\n{w.log}"
        report = await check_event_sagas(fault_db, chaos.kill_times, deliverers.sent)
        states = chaos.states()
        await chaos.wait_workers_ready()
        for w in chaos.workers:
            assert await w.stop(60) == 0, w.log
    finally:
        stop_delivering.set()
        stop_sampling.set()
        with contextlib.suppress(Exception):
            await answering
        await sampler
        for o in orchs:
            await o.engine.sql_engine.dispose()
        if not os.environ.get("CHAOS_KEEP_TABLES"):
            async with fault_db.engine.begin() as conn:
                for t in event_tables(fault_db.table):
                    await conn.execute(text(f"DROP TABLE IF EXISTS {t}"))

    faults = ", ".join(f"{k}={v}" for k, v in sorted(chaos.faults.items()))
    statuses = ", ".join(f"{k}={v}" for k, v in sorted(report.statuses.items()))
    stats = ", ".join(f"{k}={v}" for k, v in sorted(report.stats.items()))
    lost = N_SAGAS - report.sagas
    summary = (
        f"EVENT CHAOS seed={SEED} workers={N_WORKERS} sagas={report.sagas} ({statuses}); "
        f"faults: {faults}; lost={lost} stuck={report.stuck} stranded={report.stranded} "
        f"concurrent={report.concurrent} problems={len(report.problems)}; "
        f"peak connections={peak[0]}; {time.monotonic() - t_start:.0f}s (faults "
        f"{t_faults:.0f}s, settling {t_settle:.0f}s)\n  events: {stats}"
    )
    with capsys.disabled():
        print("\n" + summary)
    assert not report.problems, "\n".join(
        [summary, *report.problems, *report.details, *chaos.unexpected, *states]
    )
    assert lost == 0 and report.stuck == 0 and report.stranded == 0 and report.concurrent == 0
    assert report.statuses["COMPLETED"] and report.statuses["COMPENSATED"]
    # The scenario happened: early events queued and late ones consumed at once, by token
    # and by name; duplicates refused.
    assert report.stats["accepted_token_queued"] and report.stats["accepted_name_queued"]
    assert report.stats["accepted_token"] and report.stats["accepted_name"]
    assert report.stats["refused"]
    assert report.stats["effects re-applied (same key)"]  # re-runs met their own effect
    assert chaos.faults["kill9"] and chaos.faults["terminate_backend"]
    assert not chaos.faults["unexpected_exit"], "\n".join([summary, *chaos.unexpected])
    assert peak[0] < MAX_CONNECTIONS, f"{peak[0]} connections at once"
