"""Schema upgrades a DBA can review and run concurrently: ``upgrade_schema_sql`` plans the
DDL without running it (and the script it makes brings the schema up to date), concurrent
upgrades all succeed, and an upgrade adds (PostgreSQL: also replaces) CHECK constraints of
newer versions on existing tables."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from dbutil import plain_dsn
from itkit import make_model, unique_table_name
from sqlalchemy import MetaData, Table, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateIndex

from saga_core import schema_status, upgrade_schema
from saga_core.schema import upgrade_schema_sql, upgrade_script, upgrade_tables
from saga_core.state import SagaWorker


async def _run_script(backend: str, db_url: str, script: str) -> None:
    """As a DBA would: the script as it is, outside saga_core."""
    if backend == "postgresql":
        conn = await asyncpg.connect(plain_dsn(db_url))
        try:
            await conn.execute(script)
        finally:
            await conn.close()
    else:
        with sqlite3.connect(make_url(db_url).database or "", isolation_level=None) as db:
            db.executescript(script)


async def test_sql_plan_changes_nothing_and_its_script_brings_the_schema_up(
    backend: str, db_url: str
) -> None:
    model = make_model(unique_table_name("sql"))
    name = model.__tablename__  # type: ignore[attr-defined]
    engine = create_async_engine(db_url)
    try:
        statements = await upgrade_schema_sql(engine, [model])
        assert any(s.startswith(f"CREATE TABLE {name}") for s in statements)
        assert (await upgrade_schema_sql(engine, [model])) == statements, "stable"
        status = await schema_status(engine, [model])
        assert status["tables"][name]["exists"] is False, "planning changed nothing"

        script = upgrade_script(backend, statements)
        if backend == "postgresql":
            assert "pg_advisory_xact_lock" in script and script.count("BEGIN;") == 1
        else:
            assert script.count("BEGIN IMMEDIATE;") == 1
        await _run_script(backend, db_url, script)

        status = await schema_status(engine, [model])
        assert status["up_to_date"] is True, status
        assert status["tables"][name]["version"] == status["expected_version"]
        assert await upgrade_schema_sql(engine, [model]) == []
        assert upgrade_script(backend, []) == "-- the schema is up to date: nothing to do\n"
        assert await upgrade_schema(engine, [model]) == [], "nothing left for an upgrade"
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        await engine.dispose()


async def test_concurrent_upgrades_all_succeed(backend: str, db_url: str) -> None:
    model = make_model(unique_table_name("race"))
    name = model.__tablename__  # type: ignore[attr-defined]
    engines = [create_async_engine(db_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(upgrade_schema(e, [model]) for e in engines))
        created = [r for r in results if f"created table {name}" in r]
        assert len(created) == 1, results
        assert (await schema_status(engines[0], [model]))["up_to_date"] is True
    finally:
        async with engines[0].begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        for e in engines:
            await e.dispose()


def _row(status: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": uuid.uuid4(),
        "saga_name": "flow",
        "aggregation_id": f"agg-{uuid.uuid4().hex[:8]}",
        "status": status,
        "phase": "execute",
        "current_step_index": 0,
        "steps_state": [],
        "step_execution_token": uuid.uuid4(),
        "context": {},
        "step_history": [],
        "retry_counter": 0,
        "takeover_count": 0,
        "recovery_count": 0,
        "definition_fingerprint": "",
        "created_at": now,
        "updated_at": now,
    }


async def _insert(engine: AsyncEngine, table: Table, status: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(table).values(**_row(status)))


async def test_upgrade_adds_the_check_constraint_of_a_newer_version(
    backend: str, db_url: str
) -> None:
    model = make_model(unique_table_name("ck"))
    current: Table = model.__table__  # type: ignore[attr-defined]
    name, ck = current.name, f"ck_{current.name}_status"
    # The table as a version without the constraint made it: same columns and indexes.
    old = Table(name, MetaData(), *[c._copy() for c in current.columns])
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(old.create)
            for idx in current.indexes:
                await conn.execute(CreateIndex(idx))
        await upgrade_tables(engine, [SagaWorker.__table__])  # type: ignore[list-item]
        await _insert(engine, current, "RUNNING")
        entry = (await schema_status(engine, [model]))["tables"][name]
        if backend == "sqlite":
            # SQLite cannot add a constraint to a table: not reported, nothing planned.
            assert entry["missing_constraints"] == [] and entry["up_to_date"] is True
            assert await upgrade_tables(engine, [current]) == []
            return
        assert entry["missing_constraints"] == [ck] and entry["up_to_date"] is False
        sql = await upgrade_schema_sql(engine, [model])
        assert any(s.startswith(f"ALTER TABLE {name} ADD CONSTRAINT {ck} CHECK") for s in sql)

        assert f"added constraint {ck}" in await upgrade_schema(engine, [model])
        assert (await schema_status(engine, [model]))["up_to_date"] is True
        with pytest.raises(IntegrityError, match=ck):
            await _insert(engine, current, "BOGUS")

        # A newer version allowing more values: the narrower constraint is replaced.
        async with engine.begin() as conn:
            await conn.execute(text(f"ALTER TABLE {name} DROP CONSTRAINT {ck}"))
            await conn.execute(
                text(f"ALTER TABLE {name} ADD CONSTRAINT {ck} CHECK (status IN ('RUNNING'))")
            )
        entry = (await schema_status(engine, [model]))["tables"][name]
        assert entry["outdated_constraints"] == [ck] and entry["up_to_date"] is False
        assert f"replaced constraint {ck}" in await upgrade_schema(engine, [model])
        await _insert(engine, current, "ABORTED")
        assert await upgrade_schema(engine, [model]) == []
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        await engine.dispose()
