"""Schema: ``create_tables``/``upgrade_schema`` are idempotent, saga tables carry their partial
indexes, several saga tables live side by side (no shared PostgreSQL types) and drop cleanly,
and an older table missing columns and indexes is brought up to date."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from itkit import Harness, chain, make_model, unique_table_name
from sqlalchemy import MetaData, Table, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from saga_core import SagaOrchestrator, schema_status, upgrade_schema
from saga_core.rows import initial_steps_state


@pytest.fixture
async def sql(h: Harness) -> AsyncIterator[AsyncEngine]:
    engine = h.sql_engine()
    yield engine
    await engine.dispose()


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def index_sql(engine: AsyncEngine, backend: str, table: str) -> dict[str, str]:
    """Index name -> its definition, as the database reports it."""
    query = (
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t"
        if backend == "postgresql"
        else "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t"
    )
    async with engine.connect() as conn:
        return {r[0]: r[1] or "" for r in (await conn.execute(text(query), {"t": table})).all()}


async def test_create_tables_and_upgrade_are_idempotent(h: Harness, sql: AsyncEngine) -> None:
    # The harness ran create_tables() once already.
    before = await index_sql(sql, h.backend, h.table_name)
    assert await h.observer.create_tables() == []
    assert await upgrade_schema(sql, [h.model]) == []
    assert await index_sql(sql, h.backend, h.table_name) == before
    status = await schema_status(sql, [h.model])
    assert status["up_to_date"] is True
    assert status["tables"][h.table_name]["version"] == status["expected_version"]


async def test_partial_indexes(h: Harness, sql: AsyncEngine) -> None:
    t = h.table_name
    indexes = await index_sql(sql, h.backend, t)
    assert {f"ix_{t}_due", f"ux_{t}_active_aggregation", f"ix_{t}_created"} <= set(indexes)
    due, active = indexes[f"ix_{t}_due"], indexes[f"ux_{t}_active_aggregation"]
    assert "WHERE" in due.upper() and "deadline_at" in due
    assert "UNIQUE" in active.upper() and "WHERE" in active.upper()
    assert "'FAILED'" in active and "'COMPLETED'" not in active, "FAILED counts as active"


async def test_two_saga_tables_side_by_side_drop_cleanly(h: Harness, sql: AsyncEngine) -> None:
    h.define("flow", chain(h.probe, ["a"]))
    second_model = make_model(unique_table_name("side"))
    second_name: str = second_model.__table__.name  # type: ignore[attr-defined]
    second = SagaOrchestrator(model_class=second_model, session_maker=async_sessionmaker(sql))
    second.register("flow", h.definitions["flow"])
    assert f"created table {second_name}" in await second.create_tables()
    first = await h.worker()

    # Independent tables: the same aggregation_id may be active in both.
    a = await first.orch.start(saga_name="flow", initial_data={}, aggregation_id="same")
    b = await second.start(saga_name="flow", initial_data={}, aggregation_id="same", inline=True)
    assert await first.orch.run_due() == 1
    assert (await first.orch.get_snapshot(a)).status.value == "COMPLETED"
    assert (await second.get_snapshot(b)).status.value == "COMPLETED"
    assert await h.count() == 1

    if h.is_pg:
        assert await scalar(sql, "SELECT count(*) FROM pg_type WHERE typtype = 'e'") == 0, (
            "no ENUM types: status is a string with a CHECK constraint"
        )
    for model in (second_model, h.model):
        table = model.__table__  # type: ignore[attr-defined]
        async with sql.begin() as conn:
            await conn.run_sync(table.drop)
    for name in (second_name, h.table_name):
        if h.is_pg:
            left = await scalar(
                sql, "SELECT count(*) FROM pg_class WHERE relname LIKE :p", p=f"%{name}%"
            )
            types = await scalar(
                sql, "SELECT count(*) FROM pg_type WHERE typname LIKE :p", p=f"%{name}%"
            )
            assert (left, types) == (0, 0), f"{name} left relations or types behind"
        else:
            left = await scalar(
                sql, "SELECT count(*) FROM sqlite_master WHERE tbl_name = :t", t=name
            )
            assert left == 0


REMOVED = (
    "takeover_count",
    "recovery_count",
    "trace_id",
    "finished_at",
    "definition_fingerprint",
)


async def test_an_older_table_is_upgraded(h: Harness, sql: AsyncEngine) -> None:
    model = make_model(unique_table_name("old"))
    current: Table = model.__table__  # type: ignore[attr-defined]
    # The table as an older version might have made it: fewer columns, no indexes.
    old = Table(
        current.name, MetaData(), *[c._copy() for c in current.columns if c.name not in REMOVED]
    )
    async with sql.begin() as conn:
        await conn.run_sync(old.create)
    h.define("flow", chain(h.probe, ["a"]))
    definition = h.definitions["flow"]
    old_id = uuid.uuid4()
    now = datetime.now(UTC)
    async with sql.begin() as conn:
        await conn.execute(
            insert(old).values(
                id=old_id,
                saga_name="flow",
                aggregation_id="old-1",
                status="RUNNING",
                phase="execute",
                current_step_index=0,
                steps_state=initial_steps_state(definition),
                step_execution_token=uuid.uuid4(),
                context={"initial_data": {}, "step_outputs": {}, "step_inputs": {}},
                step_history=[],
                deadline_at=now,
                retry_counter=0,
                created_at=now,
                updated_at=now,
            )
        )
    status = await schema_status(sql, [model])
    entry = status["tables"][current.name]
    assert status["up_to_date"] is False
    assert entry["missing_columns"] == sorted(REMOVED)
    assert len(entry["missing_indexes"]) == len(current.indexes)

    orch = SagaOrchestrator(model_class=model, session_maker=async_sessionmaker(sql))
    orch.register("flow", definition)
    try:
        done = await orch.create_tables()
        for column in REMOVED:
            assert f"added column {current.name}.{column}" in done
        assert sum(d.startswith("created index") for d in done) == len(current.indexes)
        assert await orch.create_tables() == [], "a second run does nothing"
        assert (await schema_status(sql, [model]))["up_to_date"] is True
        assert set(await index_sql(sql, h.backend, current.name)) >= {
            str(i.name) for i in current.indexes
        }

        # The old row reads back with neutral values, and runs (its fingerprint is the empty
        # string: the definition changed under it, with the same steps).
        snap = await orch.get_snapshot(old_id)
        assert (snap.takeover_count, snap.recovery_count, snap.trace_id, snap.finished_at) == (
            0,
            0,
            None,
            None,
        )
        assert await orch.run_due() == 1
        assert (await orch.get_snapshot(old_id)).status.value == "COMPLETED"
        new = await orch.start(saga_name="flow", initial_data={}, aggregation_id="new-1")
        assert await orch.run_due() == 1
        assert (await orch.get_snapshot(new)).status.value == "COMPLETED"
    finally:
        async with sql.begin() as conn:
            await conn.run_sync(current.drop)
