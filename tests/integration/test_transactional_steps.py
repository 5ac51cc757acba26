"""Transactional steps (``transactional = True``): the step's rows, written through
``current_step().session``, commit in one transaction with the step's checkpoint. Whatever
stops the step before that commit (an error, a timeout, a lost fence, a cancelled or crashed
worker) leaves none of its rows; the run that finally records the step leaves exactly one set.

The business table is an ordinary declarative model next to the saga table, counted from a
connection of its own (only committed rows are visible there).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from itkit import (
    Harness,
    Num,
    Out,
    Work,
    Worker,
    entries,
    eventually,
    from_context,
    outcomes,
)
from pydantic import BaseModel
from sqlalchemy import Integer, String, delete, func, insert, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from saga_core import (
    BaseStep,
    FixedRetry,
    InputContext,
    RetryPolicy,
    SagaBuilder,
    SagaDefinition,
    SagaError,
    StepContext,
    current_step,
)

# --------------------------------------------------------------------------- business table


class Biz:
    """A fresh business table (``reservations_<hex>``) and a connection pool to count it."""

    def __init__(self, h: Harness) -> None:
        class Base(DeclarativeBase):
            pass

        class Reservation(Base):
            __tablename__ = f"reservations_{uuid.uuid4().hex[:10]}"
            id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
            saga_id: Mapped[str] = mapped_column(String(36))
            step_id: Mapped[str] = mapped_column(String(100))
            kind: Mapped[str] = mapped_column(String(20))
            attempt: Mapped[int] = mapped_column(Integer)
            worker: Mapped[str] = mapped_column(String(200))

        class Stock(Base):
            __tablename__ = f"stock_{uuid.uuid4().hex[:10]}"
            sku: Mapped[str] = mapped_column(String(40), primary_key=True)
            reserved: Mapped[int] = mapped_column(Integer)

        self.base = Base
        self.model = Reservation
        self.stock = Stock
        self.table = Reservation.__table__
        self.sql: AsyncEngine = h.sql_engine()

    async def create(self) -> None:
        async with self.sql.begin() as conn:
            await conn.run_sync(self.base.metadata.create_all)

    async def drop(self) -> None:
        async with self.sql.begin() as conn:
            await conn.run_sync(self.base.metadata.drop_all)
        await self.sql.dispose()

    async def rows(self, saga_id: uuid.UUID, kind: str = "reserve") -> list[Any]:
        """Committed rows of ``saga_id`` of ``kind``."""
        t = self.table
        stmt = (
            select(t.c.step_id, t.c.attempt, t.c.worker)
            .where(t.c.saga_id == str(saga_id), t.c.kind == kind)
            .order_by(t.c.id)
        )
        async with self.sql.connect() as conn:
            return list((await conn.execute(stmt)).all())

    async def count(self, saga_id: uuid.UUID, kind: str = "reserve") -> int:
        t = self.table
        stmt = (
            select(func.count()).select_from(t).where(t.c.saga_id == str(saga_id), t.c.kind == kind)
        )
        async with self.sql.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())


@pytest.fixture
async def biz(h: Harness) -> AsyncIterator[Biz]:
    b = Biz(h)
    await b.create()
    try:
        yield b
    finally:
        for w in h.workers:  # first: a transaction left open would block the DROP
            await w.close()
        await b.drop()


# --------------------------------------------------------------------------- steps


class Reserve(BaseStep[Num, Out]):
    """Transactional: ``execute`` adds a ``reserve`` row (ORM), ``compensate`` inserts a
    ``release`` row (Core), both through ``current_step().session``; then the probe's usual
    behaviour (hooks, injected failures)."""

    transactional = True

    def __init__(self, h: Harness, biz: Biz, *, flush: bool = True) -> None:
        self.probe = h.probe
        self.biz = biz
        self.flush = flush

    async def execute(self, inp: Num) -> Out:
        ctx = current_step()
        ctx.session.add(
            self.biz.model(
                saga_id=str(ctx.saga_id),
                step_id=ctx.step_id,
                kind="reserve",
                attempt=ctx.attempt,
                worker=ctx.worker,
            )
        )
        if self.flush:  # in the database (uncommitted) while the probe's hooks run
            await ctx.session.flush()
        out: Out = await self.probe.run_execute(inp)
        return out

    async def compensate(self, inp: Num, out: Out) -> None:
        ctx = current_step()
        await ctx.session.execute(
            insert(self.biz.table).values(
                saga_id=str(ctx.saga_id),
                step_id=ctx.step_id,
                kind="release",
                attempt=ctx.attempt,
                worker=ctx.worker,
            )
        )
        await self.probe.run_compensate()


def tx_flow(
    h: Harness,
    biz: Biz,
    *,
    flush: bool = True,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    comp_retry: RetryPolicy | None = None,
    input_map: Callable[[InputContext], Any] = from_context,
    b_retry: RetryPolicy | None = None,
) -> SagaDefinition:
    """``flow``: a (``Reserve``, transactional), then b (``Work``, not transactional)."""
    builder = SagaBuilder()
    builder.add_step(
        step=Reserve(h, biz, flush=flush),
        step_id="a",
        input_map=input_map,
        retry_policy=retry,
        timeout=timeout,
        compensation_retry_policy=comp_retry or FixedRetry(3, 0),
    )
    builder.add_step(
        step=Work(h.probe),
        step_id="b",
        input_map=from_context,
        retry_policy=b_retry,
        compensation_retry_policy=FixedRetry(3, 0),
    )
    return h.define("flow", builder.build())


async def start(w: Worker, *, inline: bool = False) -> uuid.UUID:
    return await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="order-1", inline=inline
    )


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize("flush", [True, False], ids=["flushed", "pending-orm-add"])
async def test_success_commits_the_row_with_the_checkpoint(
    h: Harness, biz: Biz, flush: bool
) -> None:
    p = h.probe
    tx_flow(h, biz, flush=flush)
    w = await h.worker()
    gate = p.block("a")
    sid = await start(w)
    runner = w.spawn(w.orch.run_due())
    await p.wait_started("a")
    # In flight: the row is in the step's open transaction only.
    assert await biz.count(sid) == 0
    assert entries((await h.row(sid)).step_history or [], step_id="a") == []

    gate.set()
    assert await asyncio.wait_for(runner, 20) == 1
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert outcomes(row.step_history or []) == [
        ("execute", "a", "SUCCESS"),
        ("execute", "b", "SUCCESS"),
    ]
    assert await biz.rows(sid) == [("a", 1, w.id)]
    assert p.effects["a"] == 1


async def test_fence_lost_while_the_step_runs_leaves_no_row(h: Harness, biz: Biz) -> None:
    """An operator aborts the saga (new token) while its transactional step runs: the
    checkpoint's fence matches no row, so the step's transaction, its row included, is rolled
    back and the run stops there. On SQLite the step's transaction holds the database's write
    lock, so the abort comes just before it begins (in the step's input_map)."""
    p = h.probe
    gate = asyncio.Event()
    mapped = asyncio.Event()

    async def held_input(ctx: InputContext) -> Num:
        mapped.set()
        await gate.wait()
        return from_context(ctx)

    async def held_step(_ctx: StepContext) -> None:
        await gate.wait()

    if h.is_pg:
        p.hooks["a"] = held_step
        tx_flow(h, biz)
    else:
        tx_flow(h, biz, input_map=held_input)
    w = await h.worker()
    sid = await start(w)
    runner = w.spawn(w.orch.run_due())
    if h.is_pg:
        await p.wait_started("a")  # the row is written, uncommitted
    else:
        await asyncio.wait_for(mapped.wait(), 20)
    await w.admin.abort(sid, reason="operator stops it")
    gate.set()
    await asyncio.wait_for(runner, 20)

    assert p.returned["a"] == 1, "the step did run to its end"
    assert await biz.count(sid) == 0, "its row went with the refused checkpoint"
    row = await h.row(sid)
    assert row.status == "ABORTED"
    assert [e for e in row.step_history or [] if e.get("phase") == "execute"] == []
    assert p.effects["b"] == 0, "the run stopped"


# --------------------------------------------------------------------------- failures


async def test_a_failed_attempt_leaves_no_row_and_is_retried(h: Harness, biz: Biz) -> None:
    p = h.probe
    tx_flow(h, biz, retry=FixedRetry(3, 0))
    p.fail["a"] = 1  # raised after the row was written (and flushed)
    w = await h.worker()
    sid = await start(w, inline=True)
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert [(e["status"], e["attempt"]) for e in entries(row.step_history or [], step_id="a")] == [
        ("ERROR", 1),
        ("SUCCESS", 2),
    ]
    assert p.effects["a"] == 2
    assert await biz.rows(sid) == [("a", 2, w.id)], "only the successful attempt's row"


async def test_a_timed_out_attempt_leaves_no_row(h: Harness, biz: Biz) -> None:
    p = h.probe
    tx_flow(h, biz, retry=FixedRetry(2, 0), timeout=0.5)
    never = asyncio.Event()

    async def first_hangs(ctx: StepContext) -> None:
        if ctx.attempt == 1:
            await never.wait()  # cancelled by the step's timeout, inside its transaction

    p.hooks["a"] = first_hangs
    w = await h.worker()
    sid = await start(w, inline=True)
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert [e["status"] for e in entries(row.step_history or [], step_id="a")] == [
        "TIMEOUT",
        "SUCCESS",
    ]
    assert await biz.rows(sid) == [("a", 2, w.id)]


async def test_exhausted_retries_leave_no_row(h: Harness, biz: Biz) -> None:
    p = h.probe
    tx_flow(h, biz, retry=FixedRetry(2, 0))
    p.fail["a"] = -1
    w = await h.worker()
    sid = await start(w, inline=True)
    row = await h.row(sid)
    assert row.status == "COMPENSATED"
    assert p.effects["a"] == 2
    assert await biz.count(sid) == 0
    assert await biz.count(sid, "release") == 0, "a step that never succeeded is not undone"


# --------------------------------------------------------------------------- crashes


async def test_cancelled_worker_mid_step_leaves_no_row_then_exactly_one(
    h: Harness, biz: Biz
) -> None:
    p = h.probe
    tx_flow(h, biz)
    w = await h.worker("first")
    gate = p.block("a", only_worker="first")
    sid = await start(w)
    runner = w.spawn(w.orch.run_due())
    await p.wait_started("a")
    runner.cancel()  # a graceful stop mid-step: the transaction is rolled back, lease released
    await asyncio.gather(runner, return_exceptions=True)
    gate.set()

    assert await biz.count(sid) == 0
    row = await h.row(sid)
    assert (row.status, row.lease_owner) == ("RUNNING", None)
    assert outcomes(row.step_history or [])[-1] == ("execute", "a", "INTERRUPTED")

    other = await h.worker("second")
    await other.drain()
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert p.effects["a"] == 2
    assert await biz.rows(sid) == [("a", 1, "second")]


async def test_crashed_worker_mid_step_leaves_no_row_then_exactly_one(h: Harness, biz: Biz) -> None:
    """The worker dies inside the step with its transaction open: nothing of it is
    committed; once its lease expires another worker runs the step once more."""
    p = h.probe
    tx_flow(h, biz)
    dead = await h.worker("dead", lease=1.0)
    survivor = await h.worker("survivor", lease=1.0)
    pids: list[int] = []
    inside = asyncio.Event()

    async def die(ctx: StepContext) -> None:
        if ctx.worker != "dead":
            return
        if h.is_pg:
            pids.append((await ctx.session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        inside.set()
        await asyncio.Event().wait()  # hangs until the worker is gone

    p.hooks["a"] = die
    sid = await start(dead)
    runner = dead.spawn(dead.orch.run_due())
    await asyncio.wait_for(inside.wait(), 20)
    dead.crash()
    if h.is_pg:
        # The process is gone: the server ends its session, rolling the transaction back
        # without any help from the worker.
        async with biz.sql.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]})
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert await biz.count(sid) == 0

    await h.wait_lease_expired(sid)

    async def taken_over() -> int:
        return await survivor.orch.run_due()

    await eventually(taken_over, what="the survivor to take the saga over", interval=0.05)
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert p.effects["a"] == 2
    assert await biz.rows(sid) == [("a", 1, "survivor")]


# --------------------------------------------------------------------------- compensation


async def test_transactional_compensation_commits_with_its_checkpoint(h: Harness, biz: Biz) -> None:
    p = h.probe
    tx_flow(h, biz)
    p.fail["b"] = -1  # b fails for good: a is compensated
    p.fail_comp["a"] = 1  # the first compensation fails after writing its row
    w = await h.worker()
    sid = await start(w, inline=True)
    row = await h.row(sid)
    assert row.status == "COMPENSATED"
    comps = entries(row.step_history or [], phase="compensate", step_id="a")
    assert [e["status"] for e in comps] == ["ERROR", "SUCCESS"]
    assert p.comp_effects["a"] == 2
    assert await biz.rows(sid, "release") == [("a", 2, w.id)]
    assert await biz.count(sid) == 1, "the reservation itself stays (this step records undo)"


async def test_cancelled_compensation_leaves_no_row_then_exactly_one(h: Harness, biz: Biz) -> None:
    p = h.probe
    tx_flow(h, biz)
    p.fail["b"] = -1
    w = await h.worker("first")
    gate = asyncio.Event()

    async def hold(ctx: StepContext) -> None:
        if ctx.worker == "first":
            await gate.wait()

    p.comp_hooks["a"] = hold
    sid = await start(w)
    runner = w.spawn(w.orch.run_due())
    await p.wait_started("a:compensate")
    assert await biz.count(sid, "release") == 0
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    gate.set()
    assert await biz.count(sid, "release") == 0
    assert (await h.row(sid)).status == "COMPENSATING"

    other = await h.worker("second")
    await other.drain()
    row = await h.row(sid)
    assert row.status == "COMPENSATED"
    assert p.comp_effects["a"] == 2
    assert await biz.rows(sid, "release") == [("a", 1, "second")]


# --------------------------------------------------------------------------- misuse


async def test_session_of_a_non_transactional_step_raises(h: Harness, biz: Biz) -> None:
    p = h.probe
    tx_flow(h, biz)
    seen: list[str] = []

    async def look(ctx: StepContext) -> None:
        with pytest.raises(SagaError, match="transactional = True") as info:
            _ = ctx.session
        seen.append(str(info.value))

    p.hooks["b"] = look
    w = await h.worker()
    sid = await start(w, inline=True)
    assert (await h.row(sid)).status == "COMPLETED"
    assert len(seen) == 1 and "'b'" in seen[0]


class Committer(BaseStep[Num, Out]):
    """Transactional, but ends its own transaction (``how``): always a failed attempt."""

    transactional = True

    def __init__(self, biz: Biz, how: str) -> None:
        self.biz = biz
        self.how = how

    async def execute(self, inp: Num) -> Out:
        ctx = current_step()
        s = ctx.session

        async def add(kind: str) -> None:
            await s.execute(
                insert(self.biz.table).values(
                    saga_id=str(ctx.saga_id), step_id=ctx.step_id, kind=kind, attempt=1, worker="x"
                )
            )

        await add("reserve")
        if self.how == "commit":
            await s.commit()
        elif self.how == "commit-swallowed":
            with contextlib.suppress(SagaError):
                await s.commit()
        elif self.how == "rollback":
            await s.rollback()
            await add("after-rollback")
        return Out(n=inp.n)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("commit", "must not commit its session"),
        ("commit-swallowed", "tried to commit its session"),
        ("rollback", "rolled back or closed its session"),
    ],
)
async def test_a_step_that_ends_its_transaction_fails(
    h: Harness, biz: Biz, how: str, message: str
) -> None:
    builder = SagaBuilder(compensate_on_failure=False)
    builder.add_step(step=Committer(biz, how), step_id="a", input_map=from_context)
    h.define("flow", builder.build())
    w = await h.worker()
    sid = await start(w, inline=True)
    row = await h.row(sid)
    assert row.status == "FAILED"
    (entry,) = entries(row.step_history or [], step_id="a")
    assert entry["status"] == "ERROR" and entry["error_type"] == "SagaError"
    assert message in entry["error"]
    assert row.last_error is not None and message in row.last_error
    assert await biz.count(sid) == 0
    assert await biz.count(sid, "after-rollback") == 0


# --------------------------------------------------------------------------- concurrency


async def test_lease_renewals_during_a_long_step_and_its_checkpoint(h: Harness, biz: Biz) -> None:
    """PostgreSQL: the lease keeper renews (its own short transactions on the saga row)
    while the step's transaction is open, and the checkpoint then commits without a
    deadlock or losing either write. SQLite: the renewal waits for the step's transaction
    (it holds the write lock) and goes through after it."""
    p = h.probe
    tx_flow(h, biz)
    w = await h.worker(lease=1.0)
    gate = p.block("a")
    sid = await start(w)
    runner = w.spawn(w.orch.run_due())
    await p.wait_started("a")
    first = (await h.row(sid)).deadline_at
    assert first is not None
    if h.is_pg:

        async def renewed() -> bool:
            d = (await h.row(sid)).deadline_at
            return d is not None and d > first

        await eventually(renewed, what="a lease renewal during the step")
    else:
        await h.wait_lease_expired(sid)  # no renewal can happen meanwhile...
    gate.set()
    await asyncio.wait_for(runner, 20)
    row = await h.row(sid)
    assert (row.status, row.lease_owner) == ("COMPLETED", None)
    assert await biz.rows(sid) == [("a", 1, w.id)]
    assert [e["status"] for e in row.step_history or []] == ["SUCCESS", "SUCCESS"]


async def test_other_sagas_progress_around_a_transactional_step(h: Harness, biz: Biz) -> None:
    """Another saga on the same worker runs and checkpoints while (PostgreSQL) or right
    after (SQLite: its checkpoints queue behind the step's write lock) a transactional step
    holds its transaction; nothing deadlocks."""
    p = h.probe
    tx_flow(h, biz)
    plain = SagaBuilder()
    plain.add_step(step=Work(p), step_id="x", input_map=from_context)
    h.define("plain", plain.build())
    w = await h.worker()
    gate = p.block("a")
    sid = await start(w)
    other = await w.orch.start(saga_name="plain", initial_data={"n": 1}, aggregation_id="o-2")
    runner = w.spawn(w.orch.run_due())
    await p.wait_started("a")
    await p.wait_started("x")
    if h.is_pg:
        assert await w.orch.wait(other, timeout=20) is not None
        assert (await h.row(other)).status == "COMPLETED"
    gate.set()
    assert await asyncio.wait_for(runner, 20) == 2
    assert (await h.row(sid)).status == "COMPLETED"
    assert (await h.row(other)).status == "COMPLETED"
    assert await biz.count(sid) == 1


async def test_start_in_the_steps_session_commits_with_it(h: Harness, biz: Biz) -> None:
    """A transactional step may start another saga through its session: the child exists
    only if the step's checkpoint commits. On SQLite, starting it without ``session=``
    would wait for the step's own write lock: refused with a clear error instead."""
    p = h.probe
    tx_flow(h, biz, retry=FixedRetry(3, 0))
    child = SagaBuilder()
    child.add_step(step=Work(p), step_id="x", input_map=from_context)
    h.define("child", child.build())
    w = await h.worker()
    errors: list[BaseException] = []

    async def spawn_child(ctx: StepContext) -> None:
        if h.backend == "sqlite":
            try:
                await w.orch.start(saga_name="child", initial_data={}, aggregation_id="c-x")
            except SagaError as exc:
                errors.append(exc)
        await w.orch.start(
            saga_name="child",
            initial_data={},
            aggregation_id=f"child-{ctx.attempt}",
            session=ctx.session,
        )

    p.hooks["a"] = spawn_child
    p.fail["a"] = 1  # the first attempt's child goes with its rollback
    sid = await start(w, inline=True)
    assert (await h.row(sid)).status == "COMPLETED"
    children = [r.aggregation_id for r in await h.observer.engine.store.saga_list(_children())]
    assert children == ["child-2"]
    if h.backend == "sqlite":
        assert len(errors) == 2 and "session=current_step().session" in str(errors[0])


def _children() -> Any:
    from saga_core.store import SagaFilter

    return SagaFilter(saga_names=["child"])


# ------------------------------------------------------------- the example of docs/concepts.md


class ReserveIn(BaseModel):
    sku: str
    quantity: int


class ReserveOut(BaseModel):
    sku: str


class ReserveStock(BaseStep[ReserveIn, ReserveOut]):
    """The docs' example (docs/concepts.md): an ORM read with a row lock, a change to it, a new row."""

    transactional = True

    def __init__(self, biz: Biz) -> None:
        self.biz = biz

    async def execute(self, inp: ReserveIn) -> ReserveOut:
        ctx = current_step()
        session = ctx.session
        item = await session.get(self.biz.stock, inp.sku, with_for_update=True)
        assert item is not None
        item.reserved += inp.quantity  # flushed after the step returns
        session.add(
            self.biz.model(
                saga_id=str(ctx.saga_id), step_id=ctx.step_id, kind="reserve", attempt=1, worker=""
            )
        )
        return ReserveOut(sku=inp.sku)

    async def compensate(self, inp: ReserveIn, out: ReserveOut) -> None:
        ctx = current_step()
        session = ctx.session
        item = await session.get(self.biz.stock, inp.sku, with_for_update=True)
        assert item is not None
        item.reserved -= inp.quantity
        t = self.biz.table
        await session.execute(delete(t).where(t.c.saga_id == str(ctx.saga_id)))


@pytest.mark.parametrize("fails_after", [False, True], ids=["completed", "compensated"])
async def test_the_readme_example(h: Harness, biz: Biz, fails_after: bool) -> None:
    p = h.probe
    async with biz.sql.begin() as conn:
        await conn.execute(insert(biz.stock.__table__).values(sku="sku-1", reserved=0))
    builder = SagaBuilder()
    builder.add_step(
        step=ReserveStock(biz),
        input_map=lambda ctx: ReserveIn(sku="sku-1", quantity=3),
        compensation_retry_policy=FixedRetry(3, 0),
    )
    builder.add_step(step=Work(p), step_id="b", input_map=from_context)
    h.define("flow", builder.build())
    if fails_after:
        p.fail["b"] = -1
    w = await h.worker()
    sid = await start(w, inline=True)

    assert (await h.row(sid)).status == ("COMPENSATED" if fails_after else "COMPLETED")
    async with biz.sql.connect() as conn:
        reserved = (await conn.execute(select(biz.stock.__table__.c.reserved))).scalar_one()
    assert reserved == (0 if fails_after else 3)
    assert await biz.count(sid) == (0 if fails_after else 1)


async def test_checkpoint_times_are_taken_when_it_is_written(h: Harness, biz: Biz) -> None:
    """PostgreSQL's now() is the start of the step's transaction; the checkpoint's times
    (here finished_at, likewise a renewed lease's expiry) are those of the checkpoint."""
    p = h.probe
    builder = SagaBuilder()
    builder.add_step(step=Reserve(h, biz), step_id="a", input_map=from_context)
    h.define("flow", builder.build())
    late: list[datetime] = []

    async def wait_a_little(ctx: StepContext) -> None:
        first = await h.db_now()

        async def later() -> datetime | None:
            now = await h.db_now()
            return now if now > first + timedelta(milliseconds=200) else None

        late.append(await eventually(later, what="the database clock to move on"))

    p.hooks["a"] = wait_a_little
    w = await h.worker()
    sid = await start(w, inline=True)
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert row.finished_at is not None and row.finished_at >= late[0]
    assert row.updated_at >= late[0]


async def test_sqlite_step_holds_the_write_lock_from_its_start(h: Harness, biz: Biz) -> None:
    """SQLite: the step's transaction is BEGIN IMMEDIATE, so it holds the database's write
    lock before the step has written anything (its reads are inside the transaction too);
    another connection cannot begin a write until the checkpoint commits."""
    only_on_sqlite(h)
    p = h.probe
    tx_flow(h, biz, flush=False)  # the row stays a pending ORM add until the step returns
    w = await h.worker()
    gate = p.block("a")
    sid = await start(w)
    runner = w.spawn(w.orch.run_due())
    await p.wait_started("a")
    other = create_async_engine(h.url, connect_args={"timeout": 0.2})
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            async with other.connect() as conn:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
        gate.set()
        await asyncio.wait_for(runner, 20)
        async with other.connect() as conn:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")  # free again
            await conn.exec_driver_sql("ROLLBACK")
    finally:
        await other.dispose()
    assert (await h.row(sid)).status == "COMPLETED"
    assert await biz.count(sid) == 1


def only_on_sqlite(h: Harness) -> None:
    if h.is_pg:
        pytest.skip(
            "PostgreSQL: this test is about SQLite's database-wide write lock (no such lock here)"
        )
