"""Attack 2 on main's worker-CPU changes, lease side: the renewing task now starts only once
half the lease has passed (a timer until then), a lost lease cancels the step's task, and a
checkpoint's caller awaits its future without ``asyncio.shield``.

PostgreSQL only (a TCP proxy that holds one worker's traffic, ``pg_terminate_backend``, row
locks). Invariant asserted throughout: a step never runs on two workers at once, a finished
step's record is never lost, and no write of a run that lost its lease lands.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from itkit import SAFETY_TIMEOUT, Harness, Num, Out, Worker, eventually, from_context
from regresskit import describe, history, settle
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import BaseStep, SagaAdmin, SagaBuilder, SagaOrchestrator, current_step

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "acceptance"))
from holdproxy import HoldProxy

pytestmark = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", id="pg", marks=pytest.mark.postgres)]
)


class Tracked(BaseStep[Num, Out]):
    """Counts overlapping executions per step; a step with a gate waits for it. ``ended``:
    executions that stopped (returned, failed or were cancelled), per (step, worker)."""

    def __init__(self) -> None:
        self.inflight: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.starts: list[tuple[str, str]] = []
        self.ended: list[tuple[str, str, str]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}

    def started_event(self, step_id: str) -> asyncio.Event:
        return self.started.setdefault(step_id, asyncio.Event())

    async def execute(self, inp: Num) -> Out:
        ctx = current_step()
        sid = ctx.step_id
        self.inflight[sid] += 1
        self.most[sid] = max(self.most[sid], self.inflight[sid])
        self.starts.append((sid, ctx.worker))
        self.started_event(sid).set()
        how = "returned"
        try:
            gate = self.gates.get(sid)
            if gate is not None:
                await gate.wait()
        except asyncio.CancelledError:
            how = "cancelled"
            raise
        finally:
            self.inflight[sid] -= 1
            self.ended.append((sid, ctx.worker, how))
        return Out(n=inp.n + 1)


def define(h: Harness, step: Tracked, ids: tuple[str, ...] = ("a", "b")) -> None:
    builder = SagaBuilder()
    for sid in ids:
        builder.add_step(step=step, step_id=sid, input_map=from_context)
    h.define("flow", builder.build())


async def start_proxy(h: Harness) -> HoldProxy:
    real = make_url(h.url)
    proxy = HoldProxy(real.host or "127.0.0.1", real.port or 5432)
    await proxy.restore()
    return proxy


async def proxied_worker(h: Harness, proxy: HoldProxy, *, lease: float, name: str) -> Worker:
    url = make_url(h.url).set(host="127.0.0.1", port=proxy.port)
    sql = create_async_engine(url, pool_size=2, max_overflow=2)
    orch: SagaOrchestrator[Any] = SagaOrchestrator(
        model_class=h.model,
        session_maker=async_sessionmaker(sql),
        execution_lease=timedelta(seconds=lease),
        worker_id=name,
    )
    for saga_name, definition in h.definitions.items():
        orch.register(saga_name, definition)
    w = Worker(sql, orch, SagaAdmin(engine=orch.engine, actor="tester"))
    h.workers.append(w)
    return w


async def shut(proxy: HoldProxy, worker: Worker) -> None:
    """Let the proxied worker finish (its writes go through), then drop every link: the
    proxy server's ``wait_closed`` waits for open connections."""
    proxy.release_all()
    await asyncio.wait_for(worker.close(), SAFETY_TIMEOUT)
    for writer in list(proxy.writers):
        writer.transport.abort()
    await asyncio.wait_for(proxy.close(), SAFETY_TIMEOUT)


LEASE = 2.0


@pytest.mark.parametrize("when", ["before_half", "after_half"])
async def test_attack2_a_step_outliving_its_lease_behind_a_silent_network_is_cancelled(
    h: Harness, when: str
) -> None:
    """Worker 1's network goes silent (packets held, no reset: a partition, a hung proxy)
    while its step runs, before or after the lazy keeper's timer fired. Its renewals then
    hang instead of failing. Once the lease has run out by the database clock, worker 2
    claims the saga and runs the step again: by then worker 1 must have stopped its own
    execution, as it does when renewals fail at once (``test_regress_leases``)."""
    step = Tracked()
    define(h, step)
    proxy = await start_proxy(h)
    w1 = await proxied_worker(h, proxy, lease=LEASE, name="a2-silent-w1")
    try:
        w2 = await h.worker("a2-silent-w2", lease=LEASE)
        sid = await w2.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="s")
        step.gates["a"] = gate = asyncio.Event()
        run1 = w1.spawn(w1.orch.run_due())
        await asyncio.wait_for(step.started_event("a").wait(), SAFETY_TIMEOUT)
        if when == "after_half":
            first = (await h.row(sid)).deadline_at

            async def renewed() -> bool:
                return (await h.row(sid)).deadline_at != first

            await eventually(renewed, what="the keeper's first renewal")
        proxy.hold("both")
        await h.wait_lease_expired(sid)
        run2 = w2.spawn(w2.orch.run_due())

        async def w2_runs_a() -> bool:
            return ("a", w2.id) in step.starts or run2.done()

        await eventually(w2_runs_a, what="worker 2 to take the saga over")
        overlap = step.most["a"]
        w1_ended = [e for e in step.ended if e[1] == w1.id]
        gate.set()
        await asyncio.wait_for(run2, SAFETY_TIMEOUT)
        assert overlap == 1 and w1_ended == [("a", w1.id, "cancelled")], (
            f"step a ran on two workers at once (worker 1's execution ended: {w1_ended}); "
            f"starts={step.starts}"
        )
        proxy.release_all()
        await asyncio.wait_for(asyncio.gather(run1, return_exceptions=True), SAFETY_TIMEOUT)
        row = await settle(h, w2, sid)
        assert row.status == "COMPLETED", describe(row)
        assert [e["worker"] for e in history(row) if e["status"] == "SUCCESS"] == [w2.id] * 2, (
            describe(row)
        )
    finally:
        await shut(proxy, w1)
