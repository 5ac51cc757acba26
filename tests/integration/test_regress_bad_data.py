"""Regression tests of issue 11, cases 5, 7, 8 and 10: data the database cannot store, a full
connection pool, a step returning the wrong model, and invalid Unicode in the API's input.

Semantics asserted (I11_SEMANTICS, "Bad data"): a step whose error text holds a lone
surrogate is a recorded failed attempt followed by its retry policy, and never fails the
other checkpoints of its group commit; a full pool when opening a transactional step's
session is an ``INTERRUPTED`` release (retry counter unchanged, never compensated for it); a
step or input map returning a pydantic model of another class than declared is a failed
attempt naming both classes; lone surrogates in any text given to the API raise
``SagaInputError`` and write nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from itkit import (
    SAFETY_TIMEOUT,
    Harness,
    Num,
    Out,
    Work,
    Worker,
    entries,
    eventually,
    from_context,
)
from pydantic import BaseModel
from regresskit import Ask, AskLog, describe, history, replies, settle
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import (
    BaseStep,
    FixedRetry,
    InputContext,
    NoRetry,
    RetryPolicy,
    SagaAdmin,
    SagaBuilder,
    SagaInputError,
    SagaOrchestrator,
    current_step,
)

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)

BAD = "\udcff"
"""A lone surrogate: what ``os.fsdecode`` makes of the byte 0xff in a file name."""

PG_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", id="pg", marks=pytest.mark.postgres)]
)


# --------------------------------------------------------------------------- case 5


class CaseIn(BaseModel):
    n: int = 0
    bad: bool = False


def case_in(ctx: InputContext) -> CaseIn:
    return CaseIn(n=int(ctx.initial_data["n"]), bad=bool(ctx.initial_data.get("bad")))


class Counted(BaseStep[CaseIn, Out]):
    """Counts its executions per saga; the first execution of ``a`` waits at ``gate`` (so
    that every saga's checkpoint is written in one group commit); a ``bad`` saga's first
    attempt of ``a`` fails with an error text that holds a lone surrogate."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate
        self.runs: Counter[tuple[uuid.UUID, str]] = Counter()
        self.arrived = 0

    async def execute(self, inp: CaseIn) -> Out:
        ctx = current_step()
        self.runs[(ctx.saga_id, ctx.step_id)] += 1
        if ctx.step_id == "a" and not self.gate.is_set():
            self.arrived += 1
            await self.gate.wait()
        if inp.bad and ctx.step_id == "a" and ctx.attempt == 1:
            raise OSError(f"cannot open report-{BAD}.csv")
        return Out(n=inp.n)


INNOCENT = 40


@pytest.mark.parametrize("policy", ["retry", "no_retry"])
@pytest.mark.parametrize("shape", ["sequential", "parallel"])
async def test_case5_one_unstorable_error_does_not_poison_the_group_commit(
    h: Harness, policy: str, shape: str
) -> None:
    """Issue 11 case 5 (one unstorable row in a group commit): 40 sagas and one whose step
    fails with a lone surrogate in its error text reach their checkpoints together (one
    batch). No innocent saga runs a step twice and all complete; the bad saga has a recorded
    ERROR attempt (its text stored escaped) followed by its policy: the retry succeeds
    (``retry``) or the saga is rolled back, COMPENSATED (``no_retry``); never FAILED."""
    gate = asyncio.Event()
    step = Counted(gate)
    retry: RetryPolicy = FixedRetry(2, 0) if policy == "retry" else NoRetry()
    builder = SagaBuilder(parallel=shape == "parallel")
    # Parallel: b is a's sibling branch.
    builder.add_step(step=step, step_id="a", input_map=case_in, retry_policy=retry)
    builder.add_step(step=step, step_id="b", input_map=case_in)
    h.define("flow", builder.build())
    w = await h.worker()
    ids = [
        await w.orch.start(saga_name="flow", initial_data={"n": i}, aggregation_id=f"ok-{i}")
        for i in range(INNOCENT)
    ]
    bad = await w.orch.start(
        saga_name="flow", initial_data={"n": -1, "bad": True}, aggregation_id="bad"
    )
    holder = w.spawn(w.orch.run_due(limit=100))

    async def all_arrived() -> bool:
        return step.arrived == INNOCENT + 1

    await eventually(all_arrived, what="every saga's step a to be running")
    gate.set()
    await asyncio.wait_for(holder, SAFETY_TIMEOUT)

    rows = {sid: await h.row(sid) for sid in ids}
    not_done = [describe(r) for r in rows.values() if r.status != "COMPLETED"]
    if not_done:  # let the workers finish them, to report the re-runs too
        for sid in ids:
            await settle(h, w, sid, timeout=60)
    again = {k: n for k, n in step.runs.items() if k[0] != bad and n != 1}
    assert not not_done and not again, (
        f"{len(not_done)} innocent saga(s) not completed by their first run, "
        f"{len({k[0] for k in again})} re-ran steps (up to {max(again.values(), default=1)} "
        f"times); first: {not_done[:1]}"
    )

    row = await settle(h, w, bad)
    want = "COMPLETED" if policy == "retry" else "COMPENSATED"
    assert row.status == want, describe(row)
    first = entries(history(row), phase="execute", step_id="a")[0]
    assert (first["status"], first["attempt"]) == ("ERROR", 1), describe(row)
    error = str(first.get("error"))
    assert "report-" in error and "udcff" in error.lower() and BAD not in error, error
    if policy == "retry":
        assert [(e["status"], e["attempt"]) for e in entries(history(row), step_id="a")] == [
            ("ERROR", 1),
            ("SUCCESS", 2),
        ]
    assert not [e for e in history(row) if e["status"] in ("QUARANTINED", "INTERRUPTED")]


# --------------------------------------------------------------------------- case 7

POOL_SIZE = 2
POOL_TIMEOUT = 1.0
HOLD = 1.5
"""The first POOL_SIZE executions keep their session this long: longer than the pool
timeout (others cannot get a connection), shorter than twice it (the checkpoints that then
queue for a connection get one)."""


class Post(BaseStep[Num, Out]):
    """Transactional: one ledger row per execution, written through the step's session; the
    first executions keep their connection for ``HOLD`` seconds."""

    transactional = True

    def __init__(self, ledger: str) -> None:
        self.ledger = ledger
        self.started = 0

    async def execute(self, inp: Num) -> Out:
        ctx = current_step()
        self.started += 1
        await ctx.session.execute(
            text(f"INSERT INTO {self.ledger} (saga_id) VALUES (:s)"), {"s": ctx.saga_id}
        )
        if self.started <= POOL_SIZE:
            await asyncio.sleep(HOLD)
        return Out(n=inp.n)


async def small_pool_worker(h: Harness) -> Worker:
    sql = create_async_engine(h.url, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=POOL_TIMEOUT)
    orch: SagaOrchestrator[Any] = SagaOrchestrator(
        model_class=h.model,
        session_maker=async_sessionmaker(sql),
        execution_lease=timedelta(seconds=30),
        worker_id="small-pool",
    )
    for name, definition in h.definitions.items():
        orch.register(name, definition)
    w = Worker(sql, orch, SagaAdmin(engine=orch.engine, actor="tester"))
    h.workers.append(w)
    return w


SAGAS = 9


@PG_ONLY
async def test_case7_a_full_pool_is_not_charged_to_the_step(h: Harness) -> None:
    """Issue 11 case 7 (a full connection pool charged to the step): nine sagas whose
    transactional step needs a pooled connection (pool of 2, no overflow, 1 s timeout) while
    two of them hold theirs for 1.5 s. The sagas that cannot get a connection are released
    with an INTERRUPTED entry naming the cause, retry counter unchanged, none COMPENSATED
    or FAILED (the default policy, NoRetry, would roll back a failed attempt); all complete
    later, each step committed exactly once."""
    ledger = f"ledger_{uuid.uuid4().hex[:10]}"
    assert h._observer_sql is not None
    async with h._observer_sql.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {ledger} (saga_id UUID NOT NULL)"))
    try:
        post = Post(ledger)
        builder = SagaBuilder()
        builder.add_step(step=post, step_id="p", input_map=from_context)
        builder.add_step(step=Work(h.probe), step_id="c", input_map=from_context)
        h.define("flow", builder.build())
        w = await small_pool_worker(h)
        ids = [
            await w.orch.start(saga_name="flow", initial_data={"n": i}, aggregation_id=f"pool-{i}")
            for i in range(SAGAS)
        ]
        assert await w.orch.run_due(limit=SAGAS) == SAGAS
        rows = [await h.row(sid) for sid in ids]
        charged = [describe(r) for r in rows if r.status in ("COMPENSATED", "FAILED")]
        assert not charged, f"{len(charged)} saga(s) charged for a full pool: {charged[:2]}"
        errors = [
            describe(r)
            for r in rows
            if any(e["status"] == "ERROR" for e in entries(history(r), step_id="p"))
        ]
        assert not errors, f"a full pool recorded as a failed attempt: {errors[:2]}"
        interrupted = [r for r in rows if r.status != "COMPLETED"]
        assert interrupted, "no saga found the pool full: the test did not provoke the case"
        for r in interrupted:
            assert r.status == "RUNNING" and r.deadline_at is not None, describe(r)
            assert r.retry_counter == 0, describe(r)
            (note,) = [e for e in history(r) if e["status"] == "INTERRUPTED"]
            why = str(note.get("reason", "")).lower()
            assert "pool" in why or "connection" in why, note

        for sid in ids:
            row = await settle(h, w, sid, timeout=60)
            assert row.status == "COMPLETED", describe(row)
        async with h._observer_sql.connect() as conn:
            posted = Counter(
                r[0] for r in (await conn.execute(text(f"SELECT saga_id FROM {ledger}"))).all()
            )
        assert posted == Counter(dict.fromkeys(ids, 1)), "each step committed exactly once"
    finally:
        async with h._observer_sql.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {ledger}"))


# --------------------------------------------------------------------------- case 8


class Receipt(BaseModel):
    n: int


class Invoice(BaseModel):
    n: int


class Bill(BaseStep[Num, Invoice]):
    """Declares ``Invoice`` but returns a ``Receipt`` (same fields)."""

    async def execute(self, inp: Num) -> Invoice:
        return Receipt(n=inp.n)  # type: ignore[return-value]


class Charge(BaseStep[Invoice, Out]):
    async def execute(self, inp: Invoice) -> Out:
        return Out(n=inp.n)


def receipt_for(ctx: InputContext):  # type: ignore[no-untyped-def]  # returns the wrong model
    return Receipt(n=1)


@pytest.mark.parametrize("shape", ["sequential", "parallel"])
@pytest.mark.parametrize("where", ["step", "input_map"])
async def test_case8_another_model_than_declared_is_a_failed_attempt(
    h: Harness, shape: str, where: str
) -> None:
    """Issue 11 case 8: a step returning a pydantic model of another class than its declared
    output (``step``), or an input map returning another model than the step's input
    (``input_map``), is a failed attempt whose error names both classes; with NoRetry the
    saga is rolled back (COMPENSATED), never silently re-validated and accepted."""
    builder = SagaBuilder(parallel=shape == "parallel")
    a = builder.add_step(step=Work(h.probe), step_id="a", input_map=from_context)
    after = a if shape == "parallel" else None
    if where == "step":
        builder.add_step(
            step=Bill(), step_id="x", input_map=lambda prev: Num(n=1), depends_on=after
        )
    else:
        builder.add_step(step=Charge(), step_id="x", input_map=receipt_for)
    names = ("Receipt", "Invoice")
    h.define("flow", builder.build())
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="order-1", inline=True
    )
    row = await settle(h, w, sid)
    xs = entries(history(row), phase="execute", step_id="x")
    assert [e["status"] for e in xs] == ["ERROR"], describe(row)
    error = str(xs[0].get("error"))
    assert all(n in error for n in names), error
    assert row.status == "COMPENSATED", describe(row)


# --------------------------------------------------------------------------- case 10


def _bad_starts() -> list[tuple[str, dict[str, Any]]]:
    ok: dict[str, Any] = {
        "saga_name": "flow",
        "initial_data": {"n": 1},
        "aggregation_id": "fresh-1",
    }
    return [
        ("initial_data key", {**ok, "initial_data": {f"k{BAD}": 1}}),
        ("initial_data value", {**ok, "initial_data": {"k": f"v{BAD}"}}),
        ("initial_data nested", {**ok, "initial_data": {"k": {"deep": [1, {"x": BAD}]}}}),
        ("aggregation_id", {**ok, "aggregation_id": f"order-{BAD}"}),
        ("idempotency_key", {**ok, "idempotency_key": f"key-{BAD}"}),
        ("trace_id", {**ok, "trace_id": f"trace-{BAD}"}),
    ]


@pytest.mark.parametrize("case", [c for c, _ in _bad_starts()])
async def test_case10_surrogates_in_start_input_are_refused(h: Harness, case: str) -> None:
    """Issue 11 case 10 (start): a lone surrogate in ``initial_data`` (a key, a value, a
    nested value), ``aggregation_id``, ``idempotency_key`` or ``trace_id`` raises
    SagaInputError and writes nothing (inline or not)."""
    builder = SagaBuilder()
    builder.add_step(step=Work(h.probe), step_id="a", input_map=from_context)
    h.define("flow", builder.build())
    w = await h.worker()
    kwargs = dict(_bad_starts())[case]
    for inline in (False, True):
        before = await h.count()
        with pytest.raises(SagaInputError):
            await w.orch.start(**kwargs, inline=inline)
        assert await h.count() == before, "nothing written"
    assert h.probe.effects == Counter()


def _bad_deliveries(sid: uuid.UUID, token: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    by_token: dict[str, Any] = {"saga_id": sid, "token": token, "event": {"ok": 1}}
    by_name: dict[str, Any] = {
        "aggregation_id": "order-1",
        "event_name": "approval",
        "event": {"ok": 1},
    }
    return [
        ("event value (token)", {**by_token, "event": {"note": f"x{BAD}"}}),
        ("event key (token)", {**by_token, "event": {f"k{BAD}": 1}}),
        ("event nested (name)", {**by_name, "event": {"k": [{"x": BAD}]}}),
        ("event_name", {**by_name, "event_name": f"approval{BAD}"}),
        ("aggregation_id (name)", {**by_name, "aggregation_id": f"order-1{BAD}"}),
        ("reason (token)", {**by_token, "reason": f"why{BAD}"}),
        ("actor (token)", {**by_token, "actor": f"ops{BAD}"}),
        ("reason (name)", {**by_name, "reason": f"why{BAD}"}),
        ("actor (name)", {**by_name, "actor": f"ops{BAD}"}),
        ("stale token, bad event", {**by_token, "token": uuid.uuid4(), "event": {"k": BAD}}),
        ("wrong name, bad reason", {**by_name, "event_name": "other", "reason": BAD}),
    ]


DELIVERY_CASES = [c for c, _ in _bad_deliveries(uuid.UUID(int=0), uuid.UUID(int=0))]


@pytest.mark.parametrize("case", DELIVERY_CASES)
async def test_case10_surrogates_in_a_delivery_are_refused(h: Harness, case: str) -> None:
    """Issue 11 case 10 (notify): a lone surrogate in the event (value, key, nested), the
    event name, the aggregation id, the reason or the actor raises SagaInputError, whether the
    delivery would be accepted or refused, and changes nothing (not even a refusal entry);
    the right delivery is still accepted afterwards."""
    log = AskLog()
    builder = SagaBuilder()
    builder.add_step(step=Ask(log, name="approval"), step_id="ask", input_map=replies)
    h.define("flow", builder.build())
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="order-1", inline=True
    )
    before = await h.row(sid)
    assert before.status == "SUSPENDED", describe(before)
    kwargs = dict(_bad_deliveries(sid, log.of(sid)[0].token))[case]
    with pytest.raises(SagaInputError):
        await w.orch.notify(**kwargs)
    after = await h.row(sid)
    assert after == before, "nothing written"
    assert await w.orch.notify(
        aggregation_id="order-1", event_name="approval", event={"kind": "reply"}
    )


@pytest.mark.parametrize("who", ["reason", "actor", "admin_actor"])
async def test_case10_surrogates_in_an_operator_action_are_refused(h: Harness, who: str) -> None:
    """Issue 11 case 10 (admin): a lone surrogate in an operator's reason or actor (given to
    the action, or to ``SagaAdmin``) raises SagaInputError and changes nothing."""
    builder = SagaBuilder()
    builder.add_step(
        step=Work(h.probe),
        step_id="a",
        input_map=from_context,
        retry_policy=FixedRetry(3, 3600),
    )
    h.define("flow", builder.build())
    h.probe.fail["a"] = 1
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="order-1", inline=True
    )
    before = await h.row(sid)
    assert before.status == "SUSPENDED", describe(before)
    with pytest.raises(SagaInputError):
        if who == "reason":
            await w.admin.retry_step(sid, reason=f"because{BAD}")
        elif who == "actor":
            await w.admin.retry_step(sid, actor=f"ops{BAD}")
        else:
            await SagaAdmin(engine=w.orch.engine, actor=f"ops{BAD}").retry_step(sid)
    assert await h.row(sid) == before, "nothing written"
    await w.admin.retry_step(sid, reason="fine")
    row = await settle(h, w, sid)
    assert row.status == "COMPLETED", describe(row)
