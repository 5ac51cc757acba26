"""Idempotent starts (``start(idempotency_key=...)``): a repeated key returns the saga the
first start created, under concurrency too, whatever its status; a key is bound to its saga
name and aggregation id; the column and its unique index come with a schema upgrade."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from itkit import Harness, chain, define_standard, make_model, unique_table_name
from sqlalchemy import MetaData, Table, insert, text
from sqlalchemy.ext.asyncio import async_sessionmaker

from saga_core import (
    ActiveSagaAlreadyExistsError,
    SagaInputError,
    SagaOrchestrator,
    schema_status,
)
from saga_core.rows import initial_steps_state

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


async def test_a_repeated_key_returns_the_first_saga_even_while_it_is_active(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    first = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="order-1", idempotency_key="k-1"
    )
    # Still RUNNING (not yet run): no ActiveSagaAlreadyExistsError, the same saga.
    again = await w.orch.start(
        saga_name="flow", initial_data={"n": 2}, aggregation_id="order-1", idempotency_key="k-1"
    )
    assert again == first and await h.count() == 1
    snap = await w.orch.get_snapshot(first)
    assert snap.idempotency_key == "k-1"
    assert (await h.row(first)).context["initial_data"] == {"n": 1}, "the first start's data"

    assert await w.orch.run_due() == 1
    assert (await w.orch.get_snapshot(first)).status.value == "COMPLETED"
    # Finished: the key still names it, and nothing new is started or run.
    assert (
        await w.orch.start(
            saga_name="flow", initial_data={}, aggregation_id="order-1", idempotency_key="k-1"
        )
        == first
    )
    assert await h.count() == 1 and await w.orch.run_due() == 0

    # Another key (or none) for a finished aggregation id starts a new saga as usual.
    other = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="order-1", idempotency_key="k-2"
    )
    assert other != first and await h.count() == 2
    # ...and the one-active rule still holds between different keys.
    with pytest.raises(ActiveSagaAlreadyExistsError):
        await w.orch.start(
            saga_name="flow", initial_data={}, aggregation_id="order-1", idempotency_key="k-3"
        )
    with pytest.raises(ActiveSagaAlreadyExistsError):
        await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="order-1")


async def test_concurrent_starts_with_one_key_make_one_saga(h: Harness) -> None:
    define_standard(h)
    workers = [await h.worker() for _ in range(3)]

    async def start(i: int) -> uuid.UUID:
        orch = workers[i % len(workers)].orch
        return await orch.start(
            saga_name="flow",
            initial_data={"n": i},
            aggregation_id="order-7",
            idempotency_key="same-key",
        )

    ids = await asyncio.gather(*(start(i) for i in range(24)))
    assert len(set(ids)) == 1
    assert await h.count() == 1
    assert (await h.row(ids[0])).idempotency_key == "same-key"


async def test_concurrent_starts_with_distinct_keys_and_aggregations(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    ids = await asyncio.gather(
        *(
            w.orch.start(
                saga_name="flow",
                initial_data={},
                aggregation_id=f"order-{i % 4}",
                idempotency_key=f"key-{i % 4}",
            )
            for i in range(16)
        )
    )
    assert len(set(ids)) == 4 and await h.count() == 4


async def test_a_key_is_bound_to_its_saga_name_and_aggregation_id(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    first = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="order-1", idempotency_key="k"
    )
    with pytest.raises(SagaInputError, match="idempotency_key 'k' was already used"):
        await w.orch.start(
            saga_name="flow", initial_data={}, aggregation_id="order-2", idempotency_key="k"
        )
    with pytest.raises(SagaInputError, match=str(first)):
        await w.orch.start(
            saga_name="flow_noroll", initial_data={}, aggregation_id="order-1", idempotency_key="k"
        )
    assert await h.count() == 1


@pytest.mark.parametrize("key", ["", "x" * 201, "nul\x00", 42])
async def test_invalid_keys_are_refused_before_anything_is_written(h: Harness, key: object) -> None:
    define_standard(h)
    w = await h.worker()
    with pytest.raises(SagaInputError, match="idempotency_key"):
        await w.orch.start(
            saga_name="flow",
            initial_data={},
            aggregation_id="a",
            idempotency_key=key,  # type: ignore[arg-type]
        )
    assert await h.count() == 0


@pytest.mark.sql_only
async def test_keys_with_the_callers_session(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    # Rolled back: the key is free again.
    async with w.orch.engine.session_maker() as session:
        await session.begin()
        await w.orch.start(
            saga_name="flow",
            initial_data={},
            aggregation_id="s-1",
            idempotency_key="sk",
            session=session,
        )
        await session.rollback()
    assert await h.count() == 0

    async with w.orch.engine.session_maker() as session, session.begin():
        first = await w.orch.start(
            saga_name="flow",
            initial_data={},
            aggregation_id="s-1",
            idempotency_key="sk",
            session=session,
        )
        # The same transaction sees its own uncommitted start.
        again = await w.orch.start(
            saga_name="flow",
            initial_data={},
            aggregation_id="s-1",
            idempotency_key="sk",
            session=session,
        )
        assert again == first
    assert await h.count() == 1
    async with w.orch.engine.session_maker() as session, session.begin():
        later = await w.orch.start(
            saga_name="flow",
            initial_data={},
            aggregation_id="s-1",
            idempotency_key="sk",
            session=session,
        )
    assert later == first and await h.count() == 1


@pytest.mark.sql_only
async def test_a_session_start_waits_for_and_returns_a_concurrent_uncommitted_one(
    h: Harness,
) -> None:
    if h.backend == "sqlite":
        pytest.skip("SQLite: one writer at a time, no concurrent uncommitted inserts")
    define_standard(h)
    a, b = await h.worker(), await h.worker()
    async with a.orch.engine.session_maker() as session:
        await session.begin()
        first = await a.orch.start(
            saga_name="flow",
            initial_data={},
            aggregation_id="c-1",
            idempotency_key="ck",
            session=session,
        )
        # b's insert blocks on the uncommitted key, then finds the committed saga.
        pending = asyncio.ensure_future(
            b.orch.start(
                saga_name="flow", initial_data={}, aggregation_id="c-1", idempotency_key="ck"
            )
        )
        await asyncio.sleep(0.3)
        assert not pending.done()
        await session.commit()
    assert await asyncio.wait_for(pending, 20) == first
    assert await h.count() == 1


async def test_inline_with_a_repeated_key_returns_without_running(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    first = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="i-1", idempotency_key="ik"
    )
    again = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="i-1", idempotency_key="ik", inline=True
    )
    assert again == first
    assert (await w.orch.get_snapshot(first)).status.value == "RUNNING"
    assert h.probe.effects["a"] == 0, "a repeated start never drives the existing saga"


@pytest.mark.sql_only
async def test_an_older_table_gets_the_column_and_unique_index(h: Harness) -> None:
    sql = h.sql_engine()
    model = make_model(unique_table_name("old"))
    current: Table = model.__table__  # type: ignore[attr-defined]
    name = current.name
    old = Table(
        name, MetaData(), *[c._copy() for c in current.columns if c.name != "idempotency_key"]
    )
    try:
        async with sql.begin() as conn:
            await conn.run_sync(old.create)
        h.define("flow", chain(h.probe, ["a"]))
        definition = h.definitions["flow"]
        now = datetime.now(UTC)
        old_id = uuid.uuid4()
        async with sql.begin() as conn:
            await conn.execute(
                insert(old).values(
                    id=old_id,
                    saga_name="flow",
                    aggregation_id="old-1",
                    status="COMPLETED",
                    phase="execute",
                    current_step_index=1,
                    steps_state=initial_steps_state(definition),
                    step_execution_token=uuid.uuid4(),
                    context={"initial_data": {}, "step_outputs": {}, "step_inputs": {}},
                    step_history=[],
                    retry_counter=0,
                    takeover_count=0,
                    definition_fingerprint="",
                    created_at=now,
                    updated_at=now,
                    finished_at=now,
                )
            )
        status = await schema_status(sql, [model])
        entry = status["tables"][name]
        assert "idempotency_key" in entry["missing_columns"]
        assert f"ux_{name}_idempotency_key" in entry["missing_indexes"]
        assert f"ix_{name}_finished" in entry["missing_indexes"]

        orch = SagaOrchestrator(model_class=model, session_maker=async_sessionmaker(sql))
        orch.register("flow", definition)
        done = await orch.create_tables()
        assert f"added column {name}.idempotency_key" in done
        assert f"created index ux_{name}_idempotency_key" in done
        assert f"created index ix_{name}_finished" in done
        assert (await schema_status(sql, [model]))["up_to_date"] is True
        assert (await orch.get_snapshot(old_id)).idempotency_key is None

        first = await orch.start(
            saga_name="flow", initial_data={}, aggregation_id="new-1", idempotency_key="up"
        )
        again = await orch.start(
            saga_name="flow", initial_data={}, aggregation_id="new-1", idempotency_key="up"
        )
        assert again == first
        # The index is unique in the database itself, not only in the library.
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            async with sql.begin() as conn:
                await conn.execute(
                    text(f"UPDATE {name} SET idempotency_key = 'up' WHERE id = :i"),
                    {"i": old_id if h.is_pg else old_id.hex},
                )
    finally:
        async with sql.begin() as conn:
            await conn.run_sync(current.drop, checkfirst=True)
        await sql.dispose()
