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
from sqlalchemy import text
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


# --------------------------------------------------------------------------- helpers (SQL)


async def named_worker(h: Harness, name: str, *, lease: float = 30.0, pool: int = 2) -> Worker:
    """A worker whose connections carry ``application_name`` = ``name``."""
    sql = create_async_engine(
        make_url(h.url),
        pool_size=pool,
        max_overflow=0,
        connect_args={"server_settings": {"application_name": name}},
    )
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


async def observer_scalar(h: Harness, sql: str, **params: Any) -> Any:
    assert h._observer_sql is not None
    async with h._observer_sql.connect() as conn:
        res = await conn.execute(text(sql), params)
        await conn.commit()
        return res.scalar_one()


async def waiting_on_a_lock(h: Harness, name: str) -> bool:
    n = await observer_scalar(
        h,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :n "
        "AND wait_event_type = 'Lock'",
        n=name,
    )
    return bool(n)


class RowLock:
    """The saga's row locked by an open transaction of the observer (FOR UPDATE): a
    checkpoint of it waits until :meth:`free`."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.conn: Any = None

    async def take(self, saga_id: Any) -> None:
        assert self.h._observer_sql is not None
        self.conn = await self.h._observer_sql.connect()
        await self.conn.begin()
        await self.conn.execute(
            text(f"SELECT 1 FROM {self.h.table_name} WHERE id = :id FOR UPDATE"), {"id": saga_id}
        )

    async def free(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await conn.rollback()
            await conn.close()


def successes(row: Any, step_id: str) -> int:
    return sum(1 for e in history(row) if e.get("step_id") == step_id and e["status"] == "SUCCESS")


# --------------------------------------------------------------------------- cancellation


async def test_attack2_cancelled_during_its_checkpoint_the_step_is_recorded_once(
    h: Harness,
) -> None:
    """sagad's shutdown cancels a run while the checkpoint of its finished step is in flight
    (held up by a row lock). The checkpoint must still land (no shield any more: only the
    caller's future is cancelled), then the release; the step never runs again."""
    step = Tracked()
    define(h, step)
    lock = RowLock(h)
    name = "a2-cancel-w"
    w = await named_worker(h, name)
    sid = await w.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="c")
    step.gates["a"] = gate = asyncio.Event()
    run = w.spawn(w.orch.run_due())
    try:
        await asyncio.wait_for(step.started_event("a").wait(), SAFETY_TIMEOUT)
        await lock.take(sid)
        gate.set()  # a returns: its checkpoint waits for the row lock
        await eventually(lambda: waiting_on_a_lock(h, name), what="the checkpoint to block")
        run.cancel()  # the shutdown
        await asyncio.sleep(0)  # (let the cancellation reach the run before the lock goes)
        assert not run.done()
        await lock.free()
        await asyncio.gather(run, return_exceptions=True)
        await asyncio.wait_for(w.orch.engine.writer.flush(), SAFETY_TIMEOUT)
        row = await h.row(sid)
        assert successes(row, "a") == 1, describe(row)
        assert row.lease_owner is None and row.deadline_at is not None, describe(row)
        assert [e["status"] for e in history(row)][-1] == "INTERRUPTED", describe(row)
        row = await settle(h, w, sid)
        assert row.status == "COMPLETED", describe(row)
        assert [s for s, _ in step.starts] == ["a", "b"], step.starts
        assert successes(row, "a") == 1 and successes(row, "b") == 1, describe(row)
    finally:
        await lock.free()


async def test_attack2_cancelled_while_its_checkpoint_is_queued_the_step_is_recorded_once(
    h: Harness,
) -> None:
    """The same, with the checkpoint still queued in the writer (another saga's batch is in
    flight, held up by a row lock) when the run is cancelled: only the caller's future is
    cancelled; the queued checkpoint is written when its turn comes, then the release."""
    step = Tracked()
    for name, ids in (("x", ("xa", "xb")), ("y", ("ya", "yb"))):
        builder = SagaBuilder()
        for sid in ids:
            builder.add_step(step=step, step_id=sid, input_map=from_context)
        h.define(name, builder.build())
    lock = RowLock(h)
    name = "a2-queued-w"
    w = await named_worker(h, name)
    eng = w.orch.engine
    x = await w.orch.start(saga_name="x", initial_data={"n": 1}, aggregation_id="x")
    y = await w.orch.start(saga_name="y", initial_data={"n": 1}, aggregation_id="y")
    step.gates["xa"] = gate_x = asyncio.Event()
    step.gates["ya"] = gate_y = asyncio.Event()
    rows = {r.id: r for r in await eng.claim(2)}
    assert set(rows) == {x, y}
    run_x = w.spawn(eng.drive(rows[x]))
    run_y = w.spawn(eng.drive(rows[y]))
    try:
        for sid in ("xa", "ya"):
            await asyncio.wait_for(step.started_event(sid).wait(), SAFETY_TIMEOUT)
        await lock.take(x)
        gate_x.set()  # x's checkpoint: in flight, blocked on the lock
        await eventually(lambda: waiting_on_a_lock(h, name), what="x's checkpoint to block")
        gate_y.set()  # y's checkpoint: queued behind it

        async def queued() -> bool:
            return eng.writer.pending == 1

        await eventually(queued, what="y's checkpoint to be queued")
        run_y.cancel()  # the shutdown, for y
        await asyncio.sleep(0)
        await lock.free()
        await asyncio.wait_for(asyncio.gather(run_x, run_y, return_exceptions=True), 20)
        await asyncio.wait_for(eng.writer.flush(), SAFETY_TIMEOUT)
        row = await h.row(y)
        assert successes(row, "ya") == 1, describe(row)
        assert row.lease_owner is None and history(row)[-1]["status"] == "INTERRUPTED", describe(
            row
        )
        assert (await h.row(x)).status == "COMPLETED"
        row = await settle(h, w, y)
        assert row.status == "COMPLETED", describe(row)
        assert sorted(s for s, _ in step.starts) == ["xa", "xb", "ya", "yb"], step.starts
    finally:
        await lock.free()


async def test_attack2_connection_killed_while_a_checkpoint_waits_does_not_rerun_the_step(
    h: Harness,
) -> None:
    """The worker's connection is killed (``pg_terminate_backend``) while its autocommitted
    checkpoint statement waits on a row lock: nothing was written, the writer retries on a
    new connection, the step is recorded once and not run again."""
    step = Tracked()
    define(h, step)
    lock = RowLock(h)
    name = "a2-kill-w"
    w = await named_worker(h, name)
    sid = await w.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="k")
    step.gates["a"] = gate = asyncio.Event()
    run = w.spawn(w.orch.run_due())
    try:
        await asyncio.wait_for(step.started_event("a").wait(), SAFETY_TIMEOUT)
        await lock.take(sid)
        gate.set()
        await eventually(lambda: waiting_on_a_lock(h, name), what="the checkpoint to block")
        killed = await observer_scalar(
            h,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = :n AND wait_event_type = 'Lock'",
            n=name,
        )
        assert killed == 1

        async def retried() -> bool:  # the retry is blocked on the lock again
            return await waiting_on_a_lock(h, name)

        await eventually(retried, what="the checkpoint's retry")
        await lock.free()
        assert await asyncio.wait_for(run, SAFETY_TIMEOUT) == 1
        row = await h.row(sid)
        assert row.status == "COMPLETED", describe(row)
        assert [s for s, _ in step.starts] == ["a", "b"], step.starts
        assert successes(row, "a") == 1 and successes(row, "b") == 1, describe(row)
        assert not [e for e in history(row) if e["status"] == "INTERRUPTED"], describe(row)
    finally:
        await lock.free()


async def test_attack2_checkpoint_committed_but_its_reply_lost_is_not_applied_twice(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The autocommitted checkpoint statement commits but its reply never arrives (the
    connection drops in between, seen through a proxy holding the reply): the writer sends
    it again. Re-applied, it must change nothing: one SUCCESS entry, the step run once."""
    step = Tracked()
    define(h, step)
    proxy = await start_proxy(h)
    url = make_url(h.url).set(host="127.0.0.1", port=proxy.port)
    sql = create_async_engine(url, pool_size=1, max_overflow=0)
    orch: SagaOrchestrator[Any] = SagaOrchestrator(
        model_class=h.model,
        session_maker=async_sessionmaker(sql),
        execution_lease=timedelta(seconds=60),
        worker_id="a2-reply-w",
    )
    for saga_name, definition in h.definitions.items():
        orch.register(saga_name, definition)
    w = Worker(sql, orch, SagaAdmin(engine=orch.engine, actor="tester"))
    h.workers.append(w)
    try:
        # A first saga, run to its end: the checkpoint statement is prepared on the (only)
        # connection, so the next checkpoint is one message and one reply.
        warm = await orch.start(
            saga_name="flow", initial_data={"n": 1}, aggregation_id="w", inline=True
        )
        assert (await h.row(warm)).status == "COMPLETED"
        step.starts.clear()
        step.started.clear()
        sid = await orch.start(
            saga_name="flow", initial_data={"n": 1}, aggregation_id="r", inline=False
        )
        step.gates["a"] = gate = asyncio.Event()
        run = w.spawn(orch.run_due())
        await asyncio.wait_for(step.started_event("a").wait(), SAFETY_TIMEOUT)
        (link,) = proxy.open_links()
        proxy.hold_reply_to_next(link)
        gate.set()  # a returns: its checkpoint is sent; the reply is held

        async def committed() -> bool:
            return successes(await h.row(sid), "a") == 1 and bool(proxy.held_down())

        await eventually(committed, what="the checkpoint to commit with its reply held")
        for writer in list(proxy.writers):  # the connection drops; the reply is lost
            writer.transport.abort()
        proxy.release_all()
        assert await asyncio.wait_for(run, SAFETY_TIMEOUT) == 1
        row = await h.row(sid)
        assert row.status == "COMPLETED", describe(row)
        assert [s for s, _ in step.starts] == ["a", "b"], step.starts
        assert successes(row, "a") == 1 and successes(row, "b") == 1, describe(row)
        assert "database unavailable while writing 1 checkpoint(s)" in caplog.text, (
            "the checkpoint was not sent again"
        )
    finally:
        await shut(proxy, w)


# --------------------------------------------------------------------------- lease lost


async def test_attack2_an_operator_abort_mid_step_cancels_it_and_nothing_lands(
    h: Harness,
) -> None:
    """An operator aborts a saga while its step runs (the token rotates): the lazy keeper's
    first renewal (half a lease in) finds the token changed, the step's task is cancelled,
    and no write of that run lands on the ABORTED saga."""
    step = Tracked()
    define(h, step)
    w = await h.worker("a2-abort-w", lease=LEASE)
    sid = await w.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="ab")
    step.gates["a"] = asyncio.Event()  # never set: only the lease can end the step
    run = w.spawn(w.orch.run_due())
    await asyncio.wait_for(step.started_event("a").wait(), SAFETY_TIMEOUT)
    await w.admin.abort(sid, reason="attack")
    aborted = await h.row(sid)
    assert await asyncio.wait_for(run, SAFETY_TIMEOUT) == 1
    assert step.ended == [("a", w.id, "cancelled")], step.ended
    row = await h.row(sid)
    assert row.status == "ABORTED", describe(row)
    assert row.step_history == aborted.step_history, describe(row)
    assert row.updated_at == aborted.updated_at and row.context == aborted.context


# --------------------------------------------------------------------------- the lazy keeper


@pytest.mark.parametrize("how_long", ["past_half_the_lease", "past_the_whole_lease"])
async def test_attack2_a_long_step_keeps_its_lease_against_a_polling_worker(
    h: Harness, how_long: str
) -> None:
    """The keeper now starts from a timer at half the lease. A step running past that point
    (until the keeper's renewal is seen), or past the whole lease the claim gave (until the
    database clock is beyond it): a second worker polling ``run_due`` all along never takes
    the saga over, and the step runs once."""
    step = Tracked()
    define(h, step)
    holder = await h.worker("a2-keep-holder", lease=LEASE)
    poller = await h.worker("a2-keep-poller", lease=LEASE)
    sid = await holder.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="k")
    step.gates["a"] = gate = asyncio.Event()
    run = holder.spawn(holder.orch.run_due())
    await asyncio.wait_for(step.started_event("a").wait(), SAFETY_TIMEOUT)
    claimed = (await h.row(sid)).deadline_at
    assert claimed is not None
    poller_claims = 0

    async def far_enough() -> bool:
        nonlocal poller_claims
        poller_claims += await poller.orch.run_due()
        if how_long == "past_half_the_lease":
            return (await h.row(sid)).deadline_at != claimed
        return await h.db_now() > claimed + timedelta(seconds=LEASE / 2)

    await eventually(far_enough, what=f"the step to run {how_long}")
    gate.set()
    assert await asyncio.wait_for(run, SAFETY_TIMEOUT) == 1
    assert poller_claims == 0, "the poller took over a saga whose holder was alive"
    row = await h.row(sid)
    assert (row.status, row.takeover_count) == ("COMPLETED", 0), describe(row)
    assert step.starts == [("a", holder.id), ("b", holder.id)], step.starts
