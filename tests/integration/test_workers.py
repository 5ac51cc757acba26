"""Several workers on one table: claims never overlap, a step never runs twice at once, and a
long step keeps its lease (renewal) while another worker keeps polling."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import defaultdict
from datetime import datetime

import asyncpg
import pytest
from dbutil import plain_dsn
from itkit import SAFETY_TIMEOUT, Harness, Worker, chain, entries, skip_on_sqlite
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, insert, select

from saga_core import FixedRetry, StepContext
from saga_core.store import SagaFilter

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)

SAGAS = 30


@pytest.mark.sql_only
async def test_two_run_due_loops_never_run_a_step_twice_or_at_once(h: Harness) -> None:
    """Two workers, each with its own SQLAlchemy engine (disjoint connections), loop on
    ``run_due`` over the same sagas. Every step execution records its interval in a table;
    no two intervals of one saga overlap and every step ran exactly once. On PostgreSQL the
    claims go through ``FOR UPDATE SKIP LOCKED``; on SQLite through its single writer."""
    intervals = Table(
        f"iv_{h.table_name}",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("saga_id", String(36), nullable=False),
        Column("step_id", String(10), nullable=False),
        Column("worker", String(50), nullable=False),
        Column("started", Float, nullable=False),
        Column("ended", Float, nullable=False),
    )
    recorder = h.sql_engine()
    async with recorder.begin() as conn:
        await conn.run_sync(intervals.create)

    async def work(ctx: StepContext) -> None:
        started = time.monotonic()
        await asyncio.sleep(0.005)  # the step's own work, long enough for a race to show
        ended = time.monotonic()
        async with recorder.begin() as conn:
            await conn.execute(
                insert(intervals).values(
                    saga_id=str(ctx.saga_id),
                    step_id=ctx.step_id,
                    worker=ctx.worker,
                    started=started,
                    ended=ended,
                )
            )

    p = h.probe
    for sid in ("a", "b", "c"):
        p.hooks[sid] = work
    h.define("flow", chain(p))
    w1, w2 = await h.worker("w1"), await h.worker("w2")
    ids = [
        await w1.orch.start(saga_name="flow", initial_data={}, aggregation_id=f"o{i}")
        for i in range(SAGAS)
    ]

    async def loop(w: Worker) -> int:
        claims = 0
        deadline = time.monotonic() + SAFETY_TIMEOUT
        while time.monotonic() < deadline:
            n = await w.orch.run_due(limit=4)
            claims += n
            if n == 0:
                if await h.store.saga_count(SagaFilter(statuses=["COMPLETED"])) == SAGAS:
                    return claims
                await asyncio.sleep(0.01)  # poll interval of an idle worker
        raise AssertionError("the sagas did not all complete")

    claims1, claims2 = await asyncio.gather(loop(w1), loop(w2))
    async with recorder.connect() as conn:
        rows = (await conn.execute(select(intervals))).mappings().all()
    async with recorder.begin() as conn:
        await conn.run_sync(intervals.drop)
    await recorder.dispose()

    # Every saga was claimed exactly once (each runs to completion in one claim): the two
    # workers' claims were disjoint. Both took part.
    assert claims1 + claims2 == SAGAS
    assert claims1 > 0 and claims2 > 0, (claims1, claims2)

    by_saga: dict[str, list[tuple[float, float, str, str]]] = defaultdict(list)
    for r in rows:
        by_saga[r["saga_id"]].append((r["started"], r["ended"], r["step_id"], r["worker"]))
    assert set(by_saga) == {str(i) for i in ids}
    for saga_id, runs in by_saga.items():
        runs.sort()
        assert [r[2] for r in runs] == ["a", "b", "c"], f"saga {saga_id}: each step once"
        for prev, nxt in itertools.pairwise(runs):
            assert prev[1] <= nxt[0], f"saga {saga_id}: {prev} overlaps {nxt}"
        assert len({r[3] for r in runs}) == 1, "one claim, one worker"
    assert p.effects == {"a": SAGAS, "b": SAGAS, "c": SAGAS}
    for saga in ids:
        row = await h.row(saga)
        assert (row.status, row.takeover_count) == ("COMPLETED", 0)


async def test_long_step_renews_its_lease_against_a_polling_worker(h: Harness) -> None:
    """Lease 1 s, a step of 2.5 s: the worker renews the lease while the step runs, so a second
    worker polling ``run_due`` all along never takes the saga over."""
    p = h.probe
    observed: list[datetime] = []

    async def long_work(ctx: StepContext) -> None:
        await asyncio.sleep(2.5)  # the step's own (long) work

    p.hooks["b"] = long_work
    h.define("flow", chain(p))
    holder, poller = await h.worker("holder", lease=1.0), await h.worker("poller", lease=1.0)
    sid = await holder.orch.start(saga_name="flow", initial_data={}, aggregation_id="o")
    running = holder.spawn(holder.orch.run_due())
    await p.wait_started("b")
    first = await h.row(sid)
    poller_claims = 0
    while not running.done():
        poller_claims += await poller.orch.run_due()
        deadline = (await h.row(sid)).deadline_at
        if deadline is not None:
            observed.append(deadline)
        await asyncio.sleep(0.05)  # poll interval
    assert await running == 1
    assert poller_claims == 0, "the poller took over a saga whose holder was alive"
    row = await h.row(sid)
    assert (row.status, row.takeover_count) == ("COMPLETED", 0)
    assert p.effects == {"a": 1, "b": 1, "c": 1}
    assert {e["worker"] for e in entries(row.step_history or [])} == {"holder"}
    assert first.deadline_at is not None
    assert max(observed) > first.deadline_at, "the lease was renewed while the step ran"


async def test_run_due_limit_and_unknown_names(h: Harness) -> None:
    p = h.probe
    h.define("flow", chain(p, ["a"]))
    h.define("other", chain(p, ["a"]))
    w = await h.worker()
    narrow = await h.worker(definitions={"flow": h.definitions["flow"]})
    for i in range(3):
        await w.orch.start(saga_name="flow", initial_data={}, aggregation_id=f"f{i}")
    other = await w.orch.start(saga_name="other", initial_data={}, aggregation_id="o")
    assert await narrow.orch.run_due(limit=2) == 2
    assert await narrow.orch.run_due(limit=5) == 1
    assert await narrow.orch.run_due() == 0, "a worker claims only sagas it can run"
    assert (await h.row(other)).status == "RUNNING"
    assert await w.orch.run_due() == 1
    assert (await h.row(other)).status == "COMPLETED"
    assert isinstance(other, uuid.UUID)


@pytest.mark.sql_only
async def test_claims_skip_rows_locked_by_another_transaction(h: Harness) -> None:
    """``FOR UPDATE SKIP LOCKED``: a row another transaction holds is passed over at once, not
    waited for, and claimed once it is free."""
    skip_on_sqlite(h, "no row locks and no SKIP LOCKED (one writer at a time; claims serialise)")
    h.define("flow", chain(h.probe, ["a"]))
    w = await h.worker()
    locked = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="locked")
    free = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="free")
    other = await asyncpg.connect(plain_dsn(h.url))
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(f'SELECT 1 FROM "{h.table_name}" WHERE id = $1 FOR UPDATE', locked)
        assert await asyncio.wait_for(w.orch.run_due(), SAFETY_TIMEOUT) == 1
        # Reads never lock: they see the locked row at once.
        snap = await asyncio.wait_for(w.orch.get_snapshot(locked), SAFETY_TIMEOUT)
        assert snap.status.value == "RUNNING"
        full = await asyncio.wait_for(w.admin.get_saga(locked), SAFETY_TIMEOUT)
        assert full.id == locked
        assert (await h.row(free)).status == "COMPLETED"
        row = await h.row(locked)
        assert (row.status, row.lease_owner) == ("RUNNING", None), "passed over, untouched"
        await tx.rollback()
    finally:
        await other.close()
    assert await w.orch.run_due() == 1
    assert (await h.row(locked)).status == "COMPLETED"


@pytest.mark.sql_only
async def test_wakeups_are_sent_with_committed_work(h: Harness) -> None:
    """PostgreSQL ``NOTIFY`` on the wake-up channel when a saga is started, notified or
    resumed by an operator; transactional, so a rolled-back start wakes nobody."""
    skip_on_sqlite(h, "no NOTIFY: SQLite workers find due sagas by polling")
    from saga_core.store.postgres import WAKEUP_CHANNEL

    p = h.probe
    h.define("flow", chain(p, ["a", "b"], retry={"b": FixedRetry(3, 3600)}))
    w = await h.worker()
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(plain_dsn(h.url))

    async def next_wakeup() -> str:
        return await asyncio.wait_for(heard.get(), SAFETY_TIMEOUT)

    try:
        await listener.add_listener(WAKEUP_CHANNEL, lambda *args: heard.put_nowait(args[3]))

        async with w.orch.engine.session_maker() as session:
            await session.begin()
            await w.orch.start(
                saga_name="flow", initial_data={}, aggregation_id="x", session=session
            )
            await session.rollback()
        await listener.execute(f"NOTIFY {WAKEUP_CHANNEL}, 'sentinel'")
        assert await next_wakeup() == "sentinel", "the rolled-back start sent nothing"

        p.fail["b"] = 1
        sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x")
        assert await next_wakeup() == h.table_name
        await w.orch.run_due()
        row = await h.row(sid)
        assert row.status == "SUSPENDED"
        assert await w.orch.notify(saga_id=sid, token=row.step_execution_token, event={})
        assert await next_wakeup() == h.table_name
        p.fail["b"] = 1
        await w.orch.run_due()
        await w.admin.retry_step(sid)
        assert await next_wakeup() == h.table_name
        await w.orch.run_due()
        assert (await h.row(sid)).status == "COMPLETED"
    finally:
        await listener.close()


async def test_worker_forget_removes_only_that_registry_row(h: Harness) -> None:
    """What ``sagad`` does when a stop comes while it registers (before it is ready): the row
    goes, other workers' rows stay; forgetting an absent row changes nothing."""
    store = h.store
    ids = [f"forget-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for wid in ids:
        await store.worker_heartbeat(
            {
                "id": wid,
                "host": "box",
                "pid": 1,
                "version": "test",
                "in_flight": 0,
                "concurrency": 1,
                "saga_names": ["s"],
                "info": {},
            }
        )
    await store.worker_forget(ids[0])
    await store.worker_forget(ids[0])
    await store.worker_forget("never-registered")
    listed = {w.id for w in await store.worker_list()}
    assert ids[0] not in listed and ids[1] in listed
