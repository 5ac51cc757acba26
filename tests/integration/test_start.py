"""Starting sagas: validation before anything is written, the caller's transaction
(``session=``), ``inline=True``, and one active saga per ``aggregation_id`` under concurrent
starts."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from itkit import Harness, Num, define_standard, reach
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

from saga_core import (
    ActiveSagaAlreadyExistsError,
    SagaError,
    SagaInputError,
    SagaNotFoundError,
)

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


@pytest.fixture
async def business(h: Harness) -> AsyncIterator[Table]:
    """An application table written in the same transaction as the saga start."""
    table = Table(
        f"biz_{h.table_name}",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("note", String(50)),
    )
    sql = h.sql_engine()
    async with sql.begin() as conn:
        await conn.run_sync(table.create)
    yield table
    async with sql.begin() as conn:
        await conn.run_sync(table.drop)
    await sql.dispose()


async def count_business(h: Harness, table: Table) -> int:
    sql = h.sql_engine()
    try:
        async with sql.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
    finally:
        await sql.dispose()


@pytest.mark.sql_only
@pytest.mark.parametrize("saga_first", [True, False], ids=["saga-first", "business-first"])
async def test_session_start_commits_with_the_callers_transaction(
    h: Harness, business: Table, saga_first: bool
) -> None:
    define_standard(h)
    w = await h.worker()

    async def in_transaction(note: str, *, commit: bool) -> uuid.UUID:
        async with w.orch.engine.session_maker() as session:
            await session.begin()
            if not saga_first:
                await session.execute(insert(business).values(note=note))
            sid = await w.orch.start(
                saga_name="flow", initial_data={"n": 1}, aggregation_id=note, session=session
            )
            if saga_first:
                await session.execute(insert(business).values(note=note))
            if commit:
                await session.commit()
            else:
                await session.rollback()
        return sid

    rolled_back = await in_transaction("rolled-back", commit=False)
    assert await h.count() == 0, "rollback: no saga"
    assert await count_business(h, business) == 0
    with pytest.raises(SagaNotFoundError):
        await w.orch.get_snapshot(rolled_back)
    assert await w.orch.run_due() == 0

    committed = await in_transaction("committed", commit=True)
    assert await h.count() == 1 and await count_business(h, business) == 1
    assert await w.orch.run_due() == 1
    assert (await w.orch.get_snapshot(committed)).status.value == "COMPLETED"


@pytest.mark.sql_only
async def test_session_start_refused_keeps_the_callers_transaction_usable(
    h: Harness, business: Table
) -> None:
    define_standard(h)
    w = await h.worker()
    first = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="order-1")
    async with w.orch.engine.session_maker() as session, session.begin():
        await session.execute(insert(business).values(note="before"))
        with pytest.raises(ActiveSagaAlreadyExistsError):
            await w.orch.start(
                saga_name="flow", initial_data={}, aggregation_id="order-1", session=session
            )
        await session.execute(insert(business).values(note="after"))
    assert await count_business(h, business) == 2
    assert [s.id for s in await w.admin.list_sagas()] == [first]


@pytest.mark.sql_only
async def test_inline_with_session_is_refused(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    async with w.orch.engine.session_maker() as session:
        with pytest.raises(SagaError, match="inline"):
            await w.orch.start(
                saga_name="flow", initial_data={}, aggregation_id="x", session=session, inline=True
            )
        await session.commit()
    assert await h.count() == 0


async def test_inline_runs_to_completion(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data=Num(n=5), aggregation_id="x", trace_id="t-1", inline=True
    )
    snap = await w.orch.get_snapshot(sid)
    assert snap.status.value == "COMPLETED" and snap.trace_id == "t-1"
    assert {
        "id",
        "saga_name",
        "aggregation_id",
        "status",
        "current_step_index",
        "retry_counter",
        "deadline_at",
        "trace_id",
        "step_execution_token",
        "last_error",
        "created_at",
        "updated_at",
    } <= set(snap.model_dump())
    assert (snap.id, snap.saga_name, snap.aggregation_id) == (sid, "flow", "x")
    assert snap.created_at <= snap.updated_at
    assert h.probe.effects == {"a": 1, "b": 1, "c": 1}
    row = await h.row(sid)
    assert row.context["initial_data"] == {"n": 5}
    assert row.context["step_outputs"] == {"a": {"n": 6}, "b": {"n": 7}, "c": {"n": 8}}
    assert {e["worker"] for e in row.step_history or []} == {w.id}


async def test_inline_returns_at_suspension(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    h.probe.fail["b"] = -1  # b retries in an hour
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    snap = await w.orch.get_snapshot(sid)
    assert (snap.status.value, snap.current_step_id, snap.lease_owner) == ("SUSPENDED", "b", None)
    assert h.probe.effects == {"a": 1, "b": 1}


async def test_generated_trace_id(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    a = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x")
    b = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="y")
    ta, tb = (await w.orch.get_snapshot(a)).trace_id, (await w.orch.get_snapshot(b)).trace_id
    assert ta and tb and ta != tb


class Opaque:
    pass


BAD_STARTS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown name", {"saga_name": "nope"}, "unknown saga name"),
    ("name not a string", {"saga_name": 5}, "unknown saga name"),
    ("a set", {"initial_data": {"s": {1, 2}}}, "JSON"),
    ("an object", {"initial_data": {"o": Opaque()}}, "JSON"),
    ("NaN", {"initial_data": {"x": math.nan}}, "JSON"),
    ("infinity", {"initial_data": {"x": -math.inf}}, "JSON"),
    ("bytes", {"initial_data": {"b": b"raw"}}, "JSON"),
    ("a list", {"initial_data": [1, 2]}, "JSON object"),
    ("a string", {"initial_data": "text"}, "JSON object"),
    ("None", {"initial_data": None}, "JSON object"),
    ("a number", {"initial_data": 3}, "JSON object"),
    ("a NUL character", {"initial_data": {"s": "a\x00b"}}, "NUL"),
    ("a NUL character in a key", {"initial_data": {"a\x00": 1}}, "NUL"),
    ("oversize", {"initial_data": {"s": "x" * 300}}, "limit"),
    ("oversize by multibyte", {"initial_data": {"s": "ż" * 130}}, "limit"),
    ("aggregation_id int", {"aggregation_id": 123}, "aggregation_id"),
    ("aggregation_id None", {"aggregation_id": None}, "aggregation_id"),
    ("aggregation_id empty", {"aggregation_id": ""}, "aggregation_id"),
    ("aggregation_id too long", {"aggregation_id": "x" * 201}, "aggregation_id"),
    ("aggregation_id bytes", {"aggregation_id": b"order"}, "aggregation_id"),
    ("aggregation_id uuid", {"aggregation_id": uuid.uuid4()}, "aggregation_id"),
    ("aggregation_id NUL", {"aggregation_id": "order\x00"}, "aggregation_id"),
    ("trace_id NUL", {"trace_id": "t\x00"}, "trace_id"),
    ("trace_id int", {"trace_id": 7}, "trace_id"),
    ("trace_id too long", {"trace_id": "t" * 129}, "trace_id"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), [c[1:] for c in BAD_STARTS], ids=[c[0] for c in BAD_STARTS]
)
@pytest.mark.parametrize("inline", [False, True], ids=["queued", "inline"])
async def test_bad_input_writes_nothing(
    h: Harness, kwargs: dict[str, Any], message: str, inline: bool
) -> None:
    define_standard(h)
    w = await h.worker(max_payload_bytes=256)
    args: dict[str, Any] = {"saga_name": "flow", "initial_data": {"n": 1}, "aggregation_id": "x"}
    args.update(kwargs)
    with pytest.raises(SagaInputError, match=message) as err:
        await w.orch.start(**args, inline=inline)
    assert isinstance(err.value, SagaError)
    assert await h.count() == 0
    assert h.probe.effects == {}


async def test_payload_limit_is_configurable(h: Harness) -> None:
    define_standard(h)
    small = await h.worker(max_payload_bytes=256)
    large = await h.worker()
    data = {"s": "x" * 1000}
    with pytest.raises(SagaInputError):
        await small.orch.start(saga_name="flow", initial_data=data, aggregation_id="x")
    await large.orch.start(saga_name="flow", initial_data=data, aggregation_id="x")
    assert await h.count() == 1


async def test_concurrent_starts_for_one_aggregation_id(h: Harness) -> None:
    define_standard(h)
    workers = [await h.worker() for _ in range(3)]  # three engines: three connection pools
    results = await asyncio.gather(
        *(
            workers[i % 3].orch.start(
                saga_name="flow", initial_data={"i": i}, aggregation_id="order-7"
            )
            for i in range(24)
        ),
        return_exceptions=True,
    )
    started = [r for r in results if isinstance(r, uuid.UUID)]
    refused = [r for r in results if isinstance(r, ActiveSagaAlreadyExistsError)]
    assert len(started) == 1, results
    assert len(refused) == len(results) - 1, [r for r in results if r not in refused]
    assert "order-7" in str(refused[0])
    assert await h.count() == 1


@pytest.mark.parametrize(
    ("case", "blocks"),
    [
        ("RUNNING", True),
        ("SUSPENDED", True),
        ("COMPENSATING", True),
        ("FAILED", True),
        ("COMPLETED", False),
        ("COMPENSATED", False),
        ("ABORTED", False),
    ],
)
async def test_active_statuses_hold_the_aggregation_id(h: Harness, case: str, blocks: bool) -> None:
    define_standard(h)
    w = await h.worker()
    reached = await reach(h, w, case)
    h.probe.fail.clear()
    h.probe.fail_comp.clear()
    if blocks:
        with pytest.raises(ActiveSagaAlreadyExistsError):
            await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="order-1")
        assert await h.count() == 1
        # Once an operator settles it, the id is free again.
        await w.admin.abort(reached.saga_id, reason="settled")
    new = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="order-1")
    assert await h.count() == 2
    assert (await w.orch.get_snapshot(new)).status.value == "RUNNING"
