"""The schema command: create or upgrade saga tables idempotently, and report their state.

``metadata.create_all`` is enough for a new table. ``upgrade_tables`` also brings an older
table up to date (adds missing columns and indexes, sets storage parameters on PostgreSQL)
and records the schema version, so ``sagactl db upgrade`` can be run on every deploy.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Connection, Index, Table, inspect, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateIndex

from saga_core.errors import SagaStoreError

SCHEMA_VERSION = 5
"""Bumped whenever the saga tables change (2: ``recovery_count``, for poison sagas;
3: ``idempotency_key`` and its unique index, the ``finished_at`` index for retention;
4: ``definition_version``, and the workers' ``saga_versions``; 5: ``lease_token`` (fencing
apart from the step tokens) and ``inbox`` (early events))."""

# Checkpoints rewrite rows in place: leave room in each page so updates stay on the same page
# (HOT updates, no index churn), and vacuum the hot table early.
PG_STORAGE = {
    "fillfactor": "80",
    "autovacuum_vacuum_scale_factor": "0.02",
    "autovacuum_analyze_scale_factor": "0.02",
}


def _add_column_sql(conn: Connection, table: Table, col: Column[Any]) -> str:
    type_sql = col.type.compile(dialect=conn.dialect)
    default = ""
    server_default = getattr(col.server_default, "arg", None)
    if not col.nullable and server_default is not None:
        # The column's own server default (e.g. definition_version 1) fills existing rows.
        sql = server_default.text if hasattr(server_default, "text") else str(server_default)
        default = f" DEFAULT {sql} NOT NULL"
    elif not col.nullable:
        # Existing rows need a value: a neutral default of the column's kind.
        py = getattr(col.type, "python_type", None)
        try:
            kind = col.type.python_type if py is not None else None
        except NotImplementedError:
            kind = None
        if kind is int:
            default = " DEFAULT 0"
        elif kind is bool:
            default = " DEFAULT false"
        elif kind in (dict, list):
            default = " DEFAULT '{}'" if kind is dict else " DEFAULT '[]'"
        else:
            default = " DEFAULT ''"
        default += " NOT NULL"
    q = conn.dialect.identifier_preparer
    return f"ALTER TABLE {q.format_table(table)} ADD COLUMN {q.quote(col.name)} {type_sql}{default}"


def _upgrade_sync(conn: Connection, tables: list[Table]) -> list[str]:
    done: list[str] = []
    insp = inspect(conn)
    for table in tables:
        if not insp.has_table(table.name, schema=table.schema):
            table.create(conn)
            done.append(f"created table {table.name}")
        else:
            have = {c["name"] for c in insp.get_columns(table.name, schema=table.schema)}
            for col in table.columns:
                if col.name not in have:
                    conn.execute(text(_add_column_sql(conn, table, col)))
                    done.append(f"added column {table.name}.{col.name}")
            idx_have = {i["name"] for i in insp.get_indexes(table.name, schema=table.schema)}
            for idx in table.indexes:
                if isinstance(idx, Index) and idx.name not in idx_have:
                    conn.execute(CreateIndex(idx))
                    done.append(f"created index {idx.name}")
        if conn.dialect.name == "postgresql" and "step_execution_token" in table.c:
            opts = ", ".join(f"{k} = {v}" for k, v in PG_STORAGE.items())
            q = conn.dialect.identifier_preparer
            conn.execute(text(f"ALTER TABLE {q.format_table(table)} SET ({opts})"))
    conn.execute(
        text(
            "CREATE TABLE IF NOT EXISTS saga_schema_version "
            "(table_name VARCHAR(200) PRIMARY KEY, version INTEGER NOT NULL)"
        )
    )
    for table in tables:
        conn.execute(
            text("DELETE FROM saga_schema_version WHERE table_name = :t"), {"t": table.name}
        )
        conn.execute(
            text("INSERT INTO saga_schema_version (table_name, version) VALUES (:t, :v)"),
            {"t": table.name, "v": SCHEMA_VERSION},
        )
    return done


def _status_sync(conn: Connection, tables: list[Table]) -> dict[str, Any]:
    insp = inspect(conn)
    versions: dict[str, int] = {}
    if insp.has_table("saga_schema_version"):
        for name, version in conn.execute(
            text("SELECT table_name, version FROM saga_schema_version")
        ):
            versions[name] = int(version)
    report: dict[str, Any] = {"expected_version": SCHEMA_VERSION, "tables": {}, "up_to_date": True}
    for table in tables:
        entry: dict[str, Any] = {"exists": insp.has_table(table.name, schema=table.schema)}
        if entry["exists"]:
            have = {c["name"] for c in insp.get_columns(table.name, schema=table.schema)}
            idx_have = {i["name"] for i in insp.get_indexes(table.name, schema=table.schema)}
            entry["missing_columns"] = sorted(c.name for c in table.columns if c.name not in have)
            entry["missing_indexes"] = sorted(
                str(i.name) for i in table.indexes if i.name not in idx_have
            )
            entry["version"] = versions.get(table.name)
            ok = not entry["missing_columns"] and not entry["missing_indexes"]
        else:
            ok = False
        entry["up_to_date"] = ok
        report["tables"][table.name] = entry
        report["up_to_date"] = report["up_to_date"] and ok
    return report


async def upgrade_tables(engine: AsyncEngine, tables: list[Table]) -> list[str]:
    """Create or upgrade ``tables``; returns what was done (empty when nothing was needed)."""
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(_upgrade_sync, tables)
    except (OperationalError, DBAPIError, OSError) as exc:
        raise SagaStoreError(f"schema upgrade failed: {exc}") from exc


async def tables_status(engine: AsyncEngine, tables: list[Table]) -> dict[str, Any]:
    """Whether ``tables`` exist and carry every column and index of this version."""
    async with engine.connect() as conn:
        return await conn.run_sync(_status_sync, tables)


async def upgrade_schema(engine: AsyncEngine, models: list[type[Any]] | None = None) -> list[str]:
    """Create or upgrade the tables of ``models`` (default: ``SagaState``) and the worker
    registry. Safe to run repeatedly."""
    from saga_core.state import SagaState, SagaWorker

    tables: list[Table] = [m.__table__ for m in (models or [SagaState])]
    tables.append(SagaWorker.__table__)  # type: ignore[arg-type]
    return await upgrade_tables(engine, tables)


async def schema_status(
    engine: AsyncEngine, models: list[type[Any]] | None = None
) -> dict[str, Any]:
    """Report on the tables of ``models`` (default: ``SagaState``) and the worker registry."""
    from saga_core.state import SagaState, SagaWorker

    tables: list[Table] = [m.__table__ for m in (models or [SagaState])]
    tables.append(SagaWorker.__table__)  # type: ignore[arg-type]
    return await tables_status(engine, tables)
