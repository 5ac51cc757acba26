"""Fault injection on parallel sagas: real ``sagad`` processes run ``fork`` sagas
(a -> (b, c) -> d, branches b and c side by side) whose steps fail at random (seeded), while
the test SIGKILLs workers, terminates their database connections and SIGTERMs them, as
``test_chaos`` does for sequential sagas. Afterwards :func:`faultkit.check_fork_invariants`
checks every saga: terminal; runs of one step never overlapped; no step ran before the steps
it depends on had succeeded; no compensation overlapped an execution; COMPENSATED with every
succeeded step compensated newest first by the order they finished; re-executions explained.

Knobs: ``CHAOS_FORK_SAGAS`` (600), ``CHAOS_SEED``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import pytest
from faultkit import FaultDb, SagadFactory, check_fork_invariants, child_env, wait_settled
from test_chaos import Chaos

N_SAGAS = int(os.environ.get("CHAOS_FORK_SAGAS", "600"))
SEED = int(os.environ.get("CHAOS_SEED", "20261125"))
N_WORKERS = 3
LEASE = 2.0
MAX_FAULT_PHASE = 60.0


def plan_for(rng: random.Random) -> dict[str, Any]:
    data: dict[str, Any] = {"sleep": rng.choice([0.0, 0.01, 0.03, 0.1])}
    r = rng.random()
    step = rng.choice("abcd")
    if r < 0.15:
        data["plan"] = {step: rng.randint(1, 3)}
    elif r < 0.35:
        data["plan"] = {step: "always"}
    return data


async def test_parallel_sagas_under_faults(
    sagad: SagadFactory, fault_db: FaultDb, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(SEED)
    env = child_env(
        fault_db.table,
        lease=LEASE,
        SAGA_POLL_INTERVAL="0.25",
        SAGA_DRAIN_TIMEOUT="30",
        SAGA_HEARTBEAT_INTERVAL="1",
        SAGA_STARTUP_TIMEOUT="60",
    )
    args = ["--app", "chaos_app:make", "--database-url", fault_db.url, "--concurrency", "16"]
    chaos = Chaos(sagad, fault_db, args, env)
    for _ in range(N_WORKERS):
        chaos.spawn()
    for w in chaos.workers:
        await w.wait_ready(60)
    batch = [("fork", plan_for(rng)) for _ in range(N_SAGAS)]
    starter: asyncio.Task[Any] = asyncio.create_task(fault_db.start_many(batch))
    t0 = time.monotonic()
    while time.monotonic() - t0 < MAX_FAULT_PHASE:
        chaos.replace_dead()
        if starter.done() and await fault_db.unfinished() == 0:
            break
        action = rng.choices(["kill9", "terminate", "sigterm"], weights=[4, 4, 2])[0]
        await getattr(chaos, action)(rng)
        await asyncio.sleep(rng.uniform(0.1, 0.6))
    await starter

    async def unfinished() -> int:
        chaos.replace_dead()
        return await fault_db.unfinished()

    await wait_settled(unfinished)  # those left are reported as stuck below
    for w in chaos.draining:
        assert await w.wait_exit(60) == 0, f"drained sagad {w.pid} exit code:\n{w.log}"
    report = await check_fork_invariants(fault_db, chaos.kill_times)
    states = chaos.states()  # as they were when the sagas were checked
    await chaos.wait_workers_ready()
    for w in chaos.workers:
        assert await w.stop(60) == 0, w.log

    faults = ", ".join(f"{k}={v}" for k, v in sorted(chaos.faults.items()))
    statuses = ", ".join(f"{k}={v}" for k, v in sorted(report.statuses.items()))
    lost = N_SAGAS - report.sagas
    summary = (
        f"FORK CHAOS seed={SEED} workers={N_WORKERS} sagas={report.sagas} ({statuses}); "
        f"faults: {faults}; lost={lost} stuck={report.stuck} "
        f"concurrent={report.concurrent} quarantined={report.quarantined} "
        f"re-executions={report.reexecutions} (unexplained={report.unexplained_reexecutions})"
    )
    with capsys.disabled():
        print("\n" + summary)
    assert not report.problems, "\n".join(
        [summary, *report.problems, *report.details, *chaos.unexpected, *states]
    )
    assert lost == 0 and report.stuck == 0 and report.concurrent == 0
    assert report.statuses["COMPLETED"] and report.statuses["COMPENSATED"]
    assert chaos.faults["kill9"] and chaos.faults["terminate_backend"]
    assert not chaos.faults["unexpected_exit"], "\n".join([summary, *chaos.unexpected])
