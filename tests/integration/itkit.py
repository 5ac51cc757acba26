"""Building blocks of the integration suite: test steps driven by a per-test ``Probe``, saga
definitions, workers on their own SQLAlchemy engines (which can be made to crash), and the
per-test ``Harness`` that owns a fresh saga table.

Imported by the test modules as ``from itkit import ...`` (pytest puts this directory on
``sys.path``); the fixtures that build a ``Harness`` live in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from saga_core import (
    BaseStep,
    FixedRetry,
    InputContext,
    RetryPolicy,
    SagaAdmin,
    SagaBuilder,
    SagaDefinition,
    SagaOrchestrator,
    SagaStateMixin,
    StepContext,
    current_step,
)
from saga_core.store import SagaFilter, SagaRow, SagaStore
from saga_core.testing import MemoryDatabase, MemorySagaStore, memory_orchestrator

T = TypeVar("T")

SAFETY_TIMEOUT = 20.0
"""Upper bound for anything a test waits for; only ever reached when something is broken."""

# --------------------------------------------------------------------------- models


class Num(BaseModel):
    n: int = 0


class Out(BaseModel):
    n: int


class OutV2(BaseModel):
    """``Out`` with one more field: the same step ids with a changed schema."""

    n: int
    note: str = ""
    ratio: float = 0.0


# --------------------------------------------------------------------------- probe

Hook = Callable[[StepContext], Awaitable[None]]


@dataclass
class Probe:
    """What the steps of one test did, and how they are told to behave.

    ``effects`` counts executions of ``execute`` that performed their side effect (the first
    thing a step does), so a crash after it shows up as an extra count.
    """

    effects: Counter[str] = field(default_factory=Counter)
    comp_effects: Counter[str] = field(default_factory=Counter)
    returned: Counter[str] = field(default_factory=Counter)
    """Executions whose ``execute`` returned an output."""
    undone: list[str] = field(default_factory=list)
    """Compensations that finished, in the order they ran."""
    contexts: list[StepContext] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)
    """step id -> failures still to inject into ``execute`` (a negative number: always)."""
    fail_comp: dict[str, int] = field(default_factory=dict)
    hooks: dict[str, Hook] = field(default_factory=dict)
    """Awaited inside ``execute`` after the side effect (block, crash, look around)."""
    comp_hooks: dict[str, Hook] = field(default_factory=dict)
    started: dict[str, asyncio.Event] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    """step id -> what ``execute`` returns instead of ``Out`` (to break output validation)."""

    def started_event(self, step_id: str) -> asyncio.Event:
        return self.started.setdefault(step_id, asyncio.Event())

    async def wait_started(self, step_id: str) -> None:
        await asyncio.wait_for(self.started_event(step_id).wait(), SAFETY_TIMEOUT)

    @staticmethod
    def _take(table: dict[str, int], step_id: str) -> bool:
        left = table.get(step_id, 0)
        if left == 0:
            return False
        if left > 0:
            table[step_id] = left - 1
        return True

    def block(self, step_id: str, *, only_worker: str | None = None) -> asyncio.Event:
        """Make ``execute`` of ``step_id`` wait (after its side effect) until the returned
        event is set; with ``only_worker``, only on that worker."""
        gate = asyncio.Event()

        async def hook(ctx: StepContext) -> None:
            if only_worker is None or ctx.worker == only_worker:
                await gate.wait()

        self.hooks[step_id] = hook
        return gate

    async def run_execute(self, inp: Num) -> Any:
        ctx = current_step()
        self.contexts.append(ctx)
        self.effects[ctx.step_id] += 1  # the side effect
        self.started_event(ctx.step_id).set()
        hook = self.hooks.get(ctx.step_id)
        if hook is not None:
            await hook(ctx)
        if self._take(self.fail, ctx.step_id):
            raise RuntimeError(f"injected failure of {ctx.step_id}")
        self.returned[ctx.step_id] += 1
        if ctx.step_id in self.outputs:
            return self.outputs[ctx.step_id]
        return Out(n=inp.n + 1)

    async def run_compensate(self) -> None:
        ctx = current_step()
        self.contexts.append(ctx)
        self.comp_effects[ctx.step_id] += 1
        self.started_event(f"{ctx.step_id}:compensate").set()
        hook = self.comp_hooks.get(ctx.step_id)
        if hook is not None:
            await hook(ctx)
        if self._take(self.fail_comp, ctx.step_id):
            raise RuntimeError(f"injected compensation failure of {ctx.step_id}")
        self.undone.append(ctx.step_id)


# --------------------------------------------------------------------------- steps


class Work(BaseStep[Num, Out]):
    """A step with a compensation; its behaviour comes from the probe it holds."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    async def execute(self, inp: Num) -> Out:
        out: Out = await self.probe.run_execute(inp)
        return out

    async def compensate(self, inp: Num, out: Out) -> None:
        await self.probe.run_compensate()


class WorkNoUndo(BaseStep[Num, Out]):
    """A step without ``compensate``: a rollback passes over it."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    async def execute(self, inp: Num) -> Out:
        out: Out = await self.probe.run_execute(inp)
        return out


class WorkV2(BaseStep[Num, OutV2]):
    """Like ``Work`` with the output model ``OutV2``."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    async def execute(self, inp: Num) -> OutV2:
        out = await self.probe.run_execute(inp)
        if isinstance(out, Out):
            return OutV2(n=out.n)
        return out  # type: ignore[no-any-return]  # what the probe was told to return

    async def compensate(self, inp: Num, out: OutV2) -> None:
        await self.probe.run_compensate()


def from_context(ctx: InputContext) -> Num:
    """The default input map: initial ``n`` plus the number of outputs so far."""
    return Num(n=int(ctx.initial_data.get("n", 0)) + len(ctx.step_outputs))


def chain(
    probe: Probe,
    ids: Iterable[str] = ("a", "b", "c"),
    *,
    no_undo: Iterable[str] = (),
    retry: Mapping[str, RetryPolicy] | None = None,
    comp_retry: Mapping[str, RetryPolicy] | None = None,
    timeout: Mapping[str, float] | None = None,
    comp_timeout: Mapping[str, float] | None = None,
    input_map: Mapping[str, Callable[[Any], Any]] | None = None,
    v2: Iterable[str] = (),
    compensate_on_failure: bool = True,
) -> SagaDefinition:
    """A linear saga of ``Work`` steps named ``ids``. Compensations retry at once, up to 3
    tries, unless ``comp_retry`` says otherwise (the library default backs off for seconds)."""
    no_undo, v2 = set(no_undo), set(v2)
    builder = SagaBuilder(compensate_on_failure=compensate_on_failure)
    for sid in ids:
        step: BaseStep[Any, Any]
        if sid in no_undo:
            step = WorkNoUndo(probe)
        elif sid in v2:
            step = WorkV2(probe)
        else:
            step = Work(probe)
        builder.add_step(
            step=step,
            step_id=sid,
            input_map=(input_map or {}).get(sid, from_context),
            retry_policy=(retry or {}).get(sid),
            compensation_retry_policy=(comp_retry or {}).get(sid, FixedRetry(3, 0)),
            timeout=(timeout or {}).get(sid),
            compensation_timeout=(comp_timeout or {}).get(sid),
        )
    return builder.build()


# --------------------------------------------------------------------------- workers


class WorkerCrashed(Exception):
    """Raised for every statement of a crashed worker: it never reaches the database."""


_WORKER_NUMBERS = itertools.count(1)


class Worker:
    """A ``SagaOrchestrator`` on its own SQLAlchemy engine (its own connection pool), like a
    separate ``sagad`` process; on the memory backend, on its own ``MemorySagaStore`` over
    the test's shared ``MemoryDatabase`` (``sql`` is None).

    ``crash()`` models the process vanishing: from then on nothing of this worker reaches the
    database, so it can neither checkpoint, renew nor release anything. Two hooks refuse its
    work: the pool refuses to hand out a connection (this covers the PostgreSQL hot path, which
    talks to asyncpg directly) and any statement on a connection already out is refused. Tests
    crash a worker where it holds no connection (inside a step, or between a claim and the
    next statement), as the library never holds one across user code. Cancelling ``drive()``
    alone would not do: that is a graceful stop, which releases the lease on purpose.
    """

    def __init__(
        self, sql: AsyncEngine | None, orch: SagaOrchestrator[Any], admin: SagaAdmin[Any]
    ) -> None:
        self.sql = sql
        self.orch = orch
        self.admin = admin
        self.crashed = False
        self.tasks: list[asyncio.Task[Any]] = []
        if sql is not None:
            event.listen(sql.sync_engine.pool, "checkout", self._gate)
            event.listen(sql.sync_engine, "before_cursor_execute", self._gate)

    @property
    def id(self) -> str:
        return self.orch.engine.worker_id

    def _gate(self, *_args: Any) -> None:
        if self.crashed:
            raise WorkerCrashed(f"worker {self.id} has crashed")

    def _memory(self) -> MemorySagaStore | None:
        store = self.orch.engine.store
        return store if isinstance(store, MemorySagaStore) else None

    def crash(self) -> None:
        self.crashed = True
        memory = self._memory()
        if memory is not None:
            memory.crash()

    def heal(self) -> None:
        self.crashed = False
        memory = self._memory()
        if memory is not None:
            memory.crashed = False

    def spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        async def run() -> T:
            return await coro

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.append(task)
        return task

    async def drain(self, *, rounds: int = 50) -> int:
        """``run_due`` until nothing is due; how many claims it made."""
        total = 0
        for _ in range(rounds):
            n = await self.orch.run_due()
            if n == 0:
                return total
            total += n
        raise AssertionError(f"still claiming sagas after {rounds} rounds")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.heal()
        try:
            await asyncio.wait_for(self.orch.engine.writer.flush(), SAFETY_TIMEOUT)
        finally:
            if self.sql is not None:
                await self.sql.dispose()


# --------------------------------------------------------------------------- harness

_TABLE_NUMBERS = itertools.count(1)


def make_model(table_name: str) -> type[SagaStateMixin]:
    """A fresh declarative model mixing in ``SagaStateMixin`` on ``table_name``."""

    class Base(DeclarativeBase):
        pass

    cls_name = "Saga_" + table_name
    model: type[SagaStateMixin] = type(
        cls_name, (SagaStateMixin, Base), {"__tablename__": table_name}
    )
    return model


def unique_table_name(prefix: str = "it") -> str:
    return f"{prefix}_{next(_TABLE_NUMBERS)}_{uuid.uuid4().hex[:10]}"


class Harness:
    """One test's world: a backend URL, a fresh saga table, a probe, and workers. The
    ``memory`` backend keeps the table in a ``MemoryDatabase`` (``saga_core.testing``), with
    the wall clock as its database clock: no SQL at all."""

    def __init__(self, backend: str, url: str | None) -> None:
        self.backend = backend
        self.url = url
        self.memory: MemoryDatabase | None = MemoryDatabase() if backend == "memory" else None
        self.table_name = unique_table_name()
        self.model = make_model(self.table_name)
        self.probe = Probe()
        self.definitions: dict[str, SagaDefinition] = {}
        self.workers: list[Worker] = []
        self._observer_sql: AsyncEngine | None = None
        self._observer: SagaOrchestrator[Any] | None = None

    @property
    def is_pg(self) -> bool:
        return self.backend == "postgresql"

    def sql_engine(self) -> AsyncEngine:
        assert self.url is not None, "the memory backend has no SQL engine"
        return create_async_engine(self.url)

    async def setup(self) -> None:
        if self.memory is not None:
            self._observer = memory_orchestrator(
                database=self.memory, table_name=self.table_name, worker_id="observer"
            )
            return
        self._observer_sql = self.sql_engine()
        self._observer = SagaOrchestrator(
            model_class=self.model,
            session_maker=async_sessionmaker(self._observer_sql),
            worker_id="observer",
        )
        done = await self._observer.create_tables()
        assert f"created table {self.table_name}" in done

    @property
    def observer(self) -> SagaOrchestrator[Any]:
        assert self._observer is not None
        return self._observer

    @property
    def store(self) -> SagaStore:
        """The store of an observer that never runs or crashes: for reads and raw writes."""
        return self.observer.engine.store

    def define(self, name: str, definition: SagaDefinition) -> SagaDefinition:
        self.definitions[name] = definition
        return definition

    async def worker(
        self,
        name: str | None = None,
        *,
        lease: float = 30.0,
        definitions: Mapping[str, SagaDefinition] | None = None,
        actor: str = "tester",
        **options: Any,
    ) -> Worker:
        sql: AsyncEngine | None = None
        orch: SagaOrchestrator[Any]
        worker_id = name or f"worker-{next(_WORKER_NUMBERS)}"
        if self.memory is not None:
            orch = memory_orchestrator(
                database=self.memory,
                table_name=self.table_name,
                execution_lease=timedelta(seconds=lease),
                worker_id=worker_id,
                **options,
            )
        else:
            sql = self.sql_engine()
            orch = SagaOrchestrator(
                model_class=self.model,
                session_maker=async_sessionmaker(sql),
                execution_lease=timedelta(seconds=lease),
                worker_id=worker_id,
                **options,
            )
        for saga_name, definition in (
            self.definitions if definitions is None else definitions
        ).items():
            orch.register(saga_name, definition)
        w = Worker(sql, orch, SagaAdmin(engine=orch.engine, actor=actor))
        self.workers.append(w)
        return w

    async def row(self, saga_id: uuid.UUID) -> SagaRow:
        """The whole stored row, history included."""
        row = await self.store.saga_get(saga_id, with_history=True)
        assert row is not None, f"no row for saga {saga_id}"
        return row

    async def count(self) -> int:
        if self.memory is not None:
            return await self.store.saga_count(SagaFilter())
        assert self._observer_sql is not None
        table = self.model.__table__  # type: ignore[attr-defined]
        async with self._observer_sql.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

    async def db_now(self) -> datetime:
        return await self.store.db_now()

    async def wait_lease_expired(self, saga_id: uuid.UUID) -> None:
        """Poll the database clock until the saga's lease (its deadline) has passed."""
        row = await self.row(saga_id)
        assert row.deadline_at is not None and row.lease_owner is not None

        async def passed() -> bool:
            return await self.db_now() > row.deadline_at  # type: ignore[operator]

        await eventually(passed, what=f"lease of saga {saga_id} to expire")

    async def close(self) -> None:
        try:
            for w in self.workers:
                await w.close()
        finally:
            await self._drop()

    async def _drop(self) -> None:
        if self._observer_sql is not None:
            if self.is_pg:
                table = self.model.__table__  # type: ignore[attr-defined]
                async with self._observer_sql.begin() as conn:
                    await conn.run_sync(table.drop, checkfirst=True)
            await self._observer_sql.dispose()


# --------------------------------------------------------------------------- helpers


async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    what: str = "a condition",
    timeout: float = SAFETY_TIMEOUT,
    interval: float = 0.02,
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds (a
    safety net for a broken system, never part of what a test asserts)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


def entries(
    history: list[dict[str, Any]], *, phase: str | None = None, step_id: str | None = None
) -> list[dict[str, Any]]:
    return [
        e
        for e in history
        if (phase is None or e.get("phase") == phase)
        and (step_id is None or e.get("step_id") == step_id)
    ]


def outcomes(history: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
    """(phase, step id, status) of every history entry, oldest first."""
    return [(e["phase"], e.get("step_id"), e["status"]) for e in history]


def skip_on_sqlite(h: Harness, reason: str) -> None:
    """Skip a test that is inherently about several processes or row locks on SQLite."""
    import pytest

    if h.backend == "sqlite":
        pytest.skip(f"SQLite: {reason}")


# --------------------------------------------------------------------------- reaching a status

STATUS_CASES = (
    "RUNNING",
    "RUNNING_LEASED",
    "SUSPENDED",
    "COMPENSATING",
    "COMPLETED",
    "COMPENSATED",
    "FAILED",
    "ABORTED",
)
"""Every status of the table in SEMANTICS.md; ``RUNNING`` is split into a saga that is due with
no worker holding it and one a live worker holds under its lease."""

LONG_WAIT = 3600.0


def define_standard(h: Harness) -> None:
    """``flow``: steps a, b, c (all compensable); b suspends for an hour when it fails, and so
    does b's compensation. ``flow_noroll``: the same steps without rollback on failure."""
    p = h.probe
    h.define(
        "flow",
        chain(
            p,
            retry={"b": FixedRetry(3, LONG_WAIT)},
            comp_retry={"b": FixedRetry(3, LONG_WAIT)},
        ),
    )
    h.define("flow_noroll", chain(p, compensate_on_failure=False))


@dataclass
class Reached:
    saga_id: uuid.UUID
    holder: asyncio.Task[int] | None = None
    """The run_due task of the worker holding a RUNNING_LEASED saga."""
    gate: asyncio.Event | None = None
    """Set it to let that worker's step return."""

    async def let_go(self) -> None:
        if self.gate is not None and self.holder is not None:
            self.gate.set()
            await asyncio.wait_for(self.holder, SAFETY_TIMEOUT)


async def reach(h: Harness, w: Worker, status: str, *, aggregation_id: str = "order-1") -> Reached:
    """Bring a fresh saga to ``status`` (a case of ``STATUS_CASES``) by running it for real on
    worker ``w`` (the standard definitions must be registered on it)."""
    p = h.probe
    orch = w.orch

    async def start(name: str = "flow", inline: bool = True) -> uuid.UUID:
        return await orch.start(
            saga_name=name, initial_data={"n": 1}, aggregation_id=aggregation_id, inline=inline
        )

    if status == "RUNNING":
        return Reached(await start(inline=False))
    if status == "RUNNING_LEASED":
        gate = p.block("a")
        sid = await start(inline=False)
        holder = w.spawn(orch.run_due())
        await p.wait_started("a")
        return Reached(sid, holder, gate)
    if status == "SUSPENDED":
        p.fail["b"] = -1
        return Reached(await start())
    if status == "COMPENSATING":
        p.fail["c"] = -1
        p.fail_comp["b"] = -1
        return Reached(await start())
    if status == "COMPLETED":
        return Reached(await start())
    if status == "COMPENSATED":
        p.fail["c"] = -1
        return Reached(await start())
    if status == "FAILED":
        p.fail["c"] = -1
        return Reached(await start("flow_noroll"))
    if status == "ABORTED":
        sid = await start(inline=False)
        await w.admin.abort(sid, reason="setting up")
        return Reached(sid)
    raise ValueError(status)


def heal_probe(p: Probe) -> None:
    """Stop injecting failures."""
    p.fail.clear()
    p.fail_comp.clear()


# --------------------------------------------------------------------------- refused deliveries


def assert_refused(
    before: SagaRow, after: SagaRow, *reasons: str, event: Any = None, name: str | None = None
) -> list[dict[str, Any]]:
    """``after`` is ``before`` plus one ``REFUSED`` history entry per reason (in order), and
    nothing else changed (updated_at included); those entries."""
    from dataclasses import replace

    old = before.step_history or []
    new = after.step_history or []
    assert replace(after, step_history=None) == replace(before, step_history=None)
    assert new[: len(old)] == old, "the history is only appended to"
    added = new[len(old) :]
    assert [(e["phase"], e["status"], e["reason"]) for e in added] == [
        ("event", "REFUSED", r) for r in reasons
    ]
    from saga_core.history import event_size

    size, preview = event_size(event)
    for e in added:
        assert e["attempt"] == 0 and e["event_name"] == name
        assert "event" not in e, "a refusal keeps a bounded summary, never the whole event"
        assert (e["event_bytes"], e["event_preview"]) == (size, preview)
    return added
