"""The schema command: create or upgrade saga tables idempotently, and report their state.

``upgrade_tables`` compares the tables with the database and brings them up to date: it
creates missing tables, adds missing columns, indexes and CHECK constraints (on PostgreSQL it
also replaces a CHECK constraint whose allowed values changed, and sets the storage
parameters), and records the schema version, so ``sagactl db upgrade`` can run on every
deploy. Adding a column to a model is all a new schema version needs (plus bumping
``SCHEMA_VERSION``): a nullable column is added as it is, a ``NOT NULL`` one with its server
default or a neutral one for existing rows.

Upgrades are serialised: on PostgreSQL by a transaction-level advisory lock
(``SCHEMA_LOCK_KEY``), on SQLite by ``BEGIN IMMEDIATE`` (the database's write lock), so two
upgrades started at once (two deploys, two ``sagad --create-schema``) both succeed: the
second finds the work done. ``upgrade_sql`` prints the same plan as a script for a DBA to
review and run, without changing anything.

SQLite cannot add a constraint to an existing table; there, CHECK constraints are those the
table was created with, and the status report leaves them out.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Index,
    Integer,
    String,
    Table,
    bindparam,
    inspect,
    text,
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import (
    AddConstraint,
    CreateIndex,
    CreateTable,
    DropConstraint,
    ExecutableDDLElement,
)
from sqlalchemy.sql.elements import TextClause

from saga_core.errors import SagaStoreError

SCHEMA_VERSION = 5
"""Bumped whenever the saga tables change (2: ``recovery_count``, for poison sagas;
3: ``idempotency_key`` and its unique index, the ``finished_at`` index for retention;
4: ``definition_version``, and the workers' ``saga_versions``; 5: ``lease_token`` (fencing
apart from the step tokens) and ``inbox`` (early events))."""

SCHEMA_LOCK_KEY = 7_391_250_004_912
"""The PostgreSQL advisory lock (``pg_advisory_xact_lock``) every upgrade holds."""

VERSION_TABLE = "saga_schema_version"

# Checkpoints rewrite rows in place: leave room in each page so updates stay on the same page
# (HOT updates, no index churn), and vacuum the hot table early.
PG_STORAGE = {
    "fillfactor": "80",
    "autovacuum_vacuum_scale_factor": "0.02",
    "autovacuum_analyze_scale_factor": "0.02",
}

Statement = ExecutableDDLElement | TextClause
Step = tuple[str | None, Statement]
"""One statement of an upgrade and what to report for it (``None``: nothing to report)."""


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


def _literals(sql: str) -> set[str]:
    """The quoted values of a CHECK constraint (``status IN ('A', 'B')`` -> {A, B}): how two
    spellings of one constraint (ours, and PostgreSQL's normalised one) are compared."""
    return set(re.findall(r"'([^']*)'", sql))


def _checks(table: Table) -> list[CheckConstraint]:
    return sorted(
        (c for c in table.constraints if isinstance(c, CheckConstraint) and c.name),
        key=lambda c: str(c.name),
    )


def _constraint_drift(conn: Connection, table: Table) -> tuple[list[str], list[str]]:
    """(missing, outdated) CHECK constraint names of an existing table (PostgreSQL only)."""
    if conn.dialect.name != "postgresql":
        return [], []
    have = {
        c["name"]: str(c.get("sqltext") or "")
        for c in inspect(conn).get_check_constraints(table.name, schema=table.schema)
    }
    missing, outdated = [], []
    for check in _checks(table):
        name = str(check.name)
        if name not in have:
            missing.append(name)
        elif _literals(have[name]) != _literals(str(check.sqltext)):
            outdated.append(name)
    return missing, outdated


def _indexes(table: Table) -> list[Index]:
    """The table's indexes by name (a set otherwise: the --sql script would vary)."""
    return sorted((i for i in table.indexes if isinstance(i, Index)), key=lambda i: str(i.name))


def _storage_differs(conn: Connection, table: Table) -> bool:
    q = conn.dialect.identifier_preparer
    row = conn.execute(
        text("SELECT reloptions FROM pg_class WHERE oid = CAST(:t AS regclass)"),
        {"t": q.format_table(table)},
    ).first()
    have = set(row[0] or []) if row is not None else set()
    return not {f"{k}={v}" for k, v in PG_STORAGE.items()} <= have


def _versions(conn: Connection) -> dict[str, int] | None:
    """table -> recorded schema version; ``None`` when the version table does not exist."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(text(f"SELECT table_name, version FROM {VERSION_TABLE}"))
    return {str(name): int(version) for name, version in rows}


def _plan_table(conn: Connection, table: Table) -> list[Step]:
    insp = inspect(conn)
    pg = conn.dialect.name == "postgresql"
    steps: list[Step] = []
    if not insp.has_table(table.name, schema=table.schema):
        steps.append((f"created table {table.name}", CreateTable(table)))
        steps.extend((None, CreateIndex(idx)) for idx in _indexes(table))
    else:
        have = {c["name"] for c in insp.get_columns(table.name, schema=table.schema)}
        for col in table.columns:
            if col.name not in have:
                steps.append(
                    (
                        f"added column {table.name}.{col.name}",
                        text(_add_column_sql(conn, table, col)),
                    )
                )
        idx_have = {i["name"] for i in insp.get_indexes(table.name, schema=table.schema)}
        for idx in _indexes(table):
            if idx.name not in idx_have:
                steps.append((f"created index {idx.name}", CreateIndex(idx)))
        missing, outdated = _constraint_drift(conn, table)
        for check in _checks(table):
            if check.name in outdated:
                steps.append((None, DropConstraint(check)))
                steps.append((f"replaced constraint {check.name}", AddConstraint(check)))
            elif check.name in missing:
                steps.append((f"added constraint {check.name}", AddConstraint(check)))
    if pg and "step_execution_token" in table.c and (steps or _storage_differs(conn, table)):
        opts = ", ".join(f"{k} = {v}" for k, v in PG_STORAGE.items())
        q = conn.dialect.identifier_preparer
        steps.append((None, text(f"ALTER TABLE {q.format_table(table)} SET ({opts})")))
    return steps


def _plan(conn: Connection, tables: list[Table]) -> list[Step]:
    """Every statement that brings ``tables`` up to date (empty when they are)."""
    steps: list[Step] = []
    for table in tables:
        steps.extend(_plan_table(conn, table))
    versions = _versions(conn)
    if versions is None:
        steps.append(
            (
                None,
                text(
                    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
                    "(table_name VARCHAR(200) PRIMARY KEY, version INTEGER NOT NULL)"
                ),
            )
        )
        versions = {}
    for table in tables:
        if versions.get(table.name) != SCHEMA_VERSION:
            name = bindparam("t", table.name, type_=String())
            version = bindparam("v", SCHEMA_VERSION, type_=Integer())
            delete = text(f"DELETE FROM {VERSION_TABLE} WHERE table_name = :t")
            steps.append((None, delete.bindparams(name)))
            insert = text(f"INSERT INTO {VERSION_TABLE} (table_name, version) VALUES (:t, :v)")
            steps.append((None, insert.bindparams(name, version)))
    return steps


def _upgrade_sync(conn: Connection, tables: list[Table]) -> list[str]:
    done: list[str] = []
    for what, stmt in _plan(conn, tables):
        conn.execute(stmt)
        if what is not None:
            done.append(what)
    return done


def _render(conn: Connection, stmt: Statement) -> str:
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    return str(compiled).strip()


def _script_sync(conn: Connection, tables: list[Table]) -> list[str]:
    return [_render(conn, stmt) for _, stmt in _plan(conn, tables)]


def _status_sync(conn: Connection, tables: list[Table]) -> dict[str, Any]:
    insp = inspect(conn)
    versions = _versions(conn) or {}
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
            missing, outdated = _constraint_drift(conn, table)
            entry["missing_constraints"] = missing
            entry["outdated_constraints"] = outdated
            entry["version"] = versions.get(table.name)
            ok = not (entry["missing_columns"] or entry["missing_indexes"] or missing or outdated)
        else:
            ok = False
        entry["up_to_date"] = ok
        report["tables"][table.name] = entry
        report["up_to_date"] = report["up_to_date"] and ok
    return report


async def _lock(conn: AsyncConnection) -> None:
    """Serialise schema changes across processes for the rest of ``conn``'s transaction."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # The write lock from the start (pysqlite would begin lazily, at the first write,
        # after this upgrade's reads had decided what to create).
        raw = await conn.get_raw_connection()
        if not getattr(raw.driver_connection, "in_transaction", False):
            await conn.exec_driver_sql("BEGIN IMMEDIATE")


async def upgrade_tables(engine: AsyncEngine, tables: list[Table]) -> list[str]:
    """Create or upgrade ``tables`` under the schema lock; returns what was done (empty when
    nothing was needed)."""
    try:
        async with engine.connect() as conn:
            await _lock(conn)
            done = await conn.run_sync(_upgrade_sync, tables)
            await conn.commit()
            return done
    except (OperationalError, DBAPIError, OSError) as exc:
        raise SagaStoreError(f"schema upgrade failed: {exc}") from exc


async def upgrade_tables_sql(engine: AsyncEngine, tables: list[Table]) -> list[str]:
    """The statements ``upgrade_tables`` would run now, as SQL (each without a trailing
    semicolon; empty when the tables are up to date). Reads only."""
    async with engine.connect() as conn:
        return await conn.run_sync(_script_sync, tables)


def upgrade_script(dialect: str, statements: list[str]) -> str:
    """``statements`` as a script a DBA can review and run: one transaction, holding the same
    lock as ``upgrade_tables``."""
    if not statements:
        return "-- the schema is up to date: nothing to do\n"
    lock = [f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY});"] if dialect == "postgresql" else []
    begin = "BEGIN IMMEDIATE;" if dialect == "sqlite" else "BEGIN;"
    lines = [
        f"-- saga_core schema upgrade to version {SCHEMA_VERSION}, planned from the database's",
        "-- current state: run it as the tables' owner before anything else changes them.",
        begin,
        *lock,
        *(f"{stmt};" for stmt in statements),
        "COMMIT;",
    ]
    return "\n".join(lines) + "\n"


async def tables_status(engine: AsyncEngine, tables: list[Table]) -> dict[str, Any]:
    """Whether ``tables`` exist and carry every column, index and (PostgreSQL) CHECK
    constraint of this version."""
    async with engine.connect() as conn:
        return await conn.run_sync(_status_sync, tables)


def _tables(models: list[type[Any]] | None) -> list[Table]:
    from saga_core.state import SagaState, SagaWorker

    tables: list[Table] = [m.__table__ for m in (models or [SagaState])]
    tables.append(SagaWorker.__table__)  # type: ignore[arg-type]
    return tables


async def upgrade_schema(engine: AsyncEngine, models: list[type[Any]] | None = None) -> list[str]:
    """Create or upgrade the tables of ``models`` (default: ``SagaState``) and the worker
    registry. Safe to run repeatedly, and from several processes at once."""
    return await upgrade_tables(engine, _tables(models))


async def upgrade_schema_sql(
    engine: AsyncEngine, models: list[type[Any]] | None = None
) -> list[str]:
    """The SQL ``upgrade_schema`` would run now, without running it (``upgrade_script``
    makes a reviewable script of it)."""
    return await upgrade_tables_sql(engine, _tables(models))


async def schema_status(
    engine: AsyncEngine, models: list[type[Any]] | None = None
) -> dict[str, Any]:
    """Report on the tables of ``models`` (default: ``SagaState``) and the worker registry."""
    return await tables_status(engine, _tables(models))
