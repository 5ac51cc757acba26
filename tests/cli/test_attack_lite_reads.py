"""Hostile tests of ``sagactl list`` through ``SagaReader`` (the bare-driver path): every
case runs ``list`` twice, through the bare driver and with ``SAGA_LITE_READS=0`` (through
SQLAlchemy), on a real PostgreSQL database or a real SQLite file, and holds both to the same
exit code, output and message.

Findings (each failed before its fix):

- SQLite ``--since``/``--until`` before year 1000: the bound timestamp was formatted with
  ``strftime("%Y")``, which does not pad the year ("999-01-01 ..."), so the text comparison
  with the stored "2026-..." went the other way (``--until 0999-01-01`` listed every saga).
- A table named by a reserved word (``--table user`` / ``order``): the table name was put
  in the SQL unquoted (``FROM user`` is ``current_user`` on PostgreSQL), so list failed
  (syntax error, or "run sagactl db upgrade") where SQLAlchemy, which quotes it, listed.
- An outdated table: the message named the column without its table ("column
  "definition_version" does not exist" instead of "column old_t.definition_version").
- A database error that is neither a connection nor a schema problem (a NUL in ``--name``
  on PostgreSQL): "unexpected error: CharacterNotInRepertoireError: ..." instead of
  "database error: ...".
- A URL with an empty password (``user:@host``): asyncpg was given ``password=""``, which
  stops it from reading ``PGPASSWORD``/``~/.pgpass``; SQLAlchemy passes no password.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cli_app import build
from cli_helpers import Run, invoke
from cli_seed import Seeded, start_every_status
from dbutil import plain_dsn
from pgscram import PASSWORD, ScramServer, start_scram_server

from saga_core.schema import upgrade_schema
from sagactl.appload import model_for_table


def _both(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[Run, Run]:
    """``sagactl ARGS`` through the bare driver, then through SQLAlchemy."""
    runs = [
        invoke([*args, "--database-url", url], env={**(env or {}), "SAGA_LITE_READS": lite})
        for lite in ("1", "0")
    ]
    return runs[0], runs[1]


def _same(url: str, *args: str, env: dict[str, str] | None = None) -> Run:
    fast, slow = _both(url, *args, env=env)
    assert (fast.exit_code, fast.stdout, fast.stderr) == (
        slow.exit_code,
        slow.stdout,
        slow.stderr,
    ), args
    return fast


async def _seed_sqlite(url: str) -> dict[str, Any]:
    """One saga in every status the seed of the PostgreSQL tests reaches without a lease
    holder (cli_seed truncates, which SQLite lacks)."""
    orch = build(url)
    try:
        await orch.create_tables()
        return await start_every_status(orch)
    finally:
        await orch.engine.sql_engine.dispose()


async def _create(url: str, table: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        await upgrade_schema(engine, [model_for_table(table)])
    finally:
        await engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sagas.db'}"
    asyncio.run(_seed_sqlite(url))
    return url


# --- findings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--until", "0999-01-01"],
        ["--since", "0999-01-01"],
        ["--since", "0001-01-01T00:00:00Z"],
        ["--until", "0099-12-31T23:59:59.999999"],
    ],
)
def test_sqlite_since_until_before_year_1000(sqlite_url: str, args: list[str]) -> None:
    out = _same(sqlite_url, "-o", "json", "list", *args).json()
    assert out["total"] == (7 if args[0] == "--since" else 0)


@pytest.mark.parametrize("table", ["user", "order", "select", "current_date"])
def test_pg_table_named_by_a_reserved_word(pg_url: str, table: str) -> None:
    asyncio.run(_create(pg_url, table))
    run = _same(pg_url, "--table", table, "-o", "json", "list")
    assert run.exit_code == 0, run.stderr
    assert run.json()["total"] == 0


@pytest.mark.parametrize("table", ["order", "group", "table"])
def test_sqlite_table_named_by_a_reserved_word(tmp_path: Path, table: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    asyncio.run(_create(url, table))
    run = _same(url, "--table", table, "-o", "json", "list")
    assert run.exit_code == 0, run.stderr


def test_pg_outdated_table_says_upgrade_as_before(pg_url: str, seeded: Seeded) -> None:
    async def outdate() -> None:
        conn = await asyncpg.connect(plain_dsn(pg_url))
        try:
            await conn.execute(
                "DROP TABLE IF EXISTS attack_old_t;"
                " CREATE TABLE attack_old_t AS SELECT * FROM saga_state;"
                " ALTER TABLE attack_old_t DROP COLUMN definition_version"
            )
        finally:
            await conn.close()

    asyncio.run(outdate())
    run = _same(pg_url, "--table", "attack_old_t", "list")
    assert run.exit_code == 1
    assert "sagactl db upgrade" in run.stderr


def test_sqlite_outdated_table_says_upgrade_as_before(tmp_path: Path) -> None:
    file = tmp_path / "old.db"
    conn = sqlite3.connect(file)
    conn.execute(
        "CREATE TABLE saga_state (id CHAR(32) PRIMARY KEY, saga_name VARCHAR,"
        " aggregation_id VARCHAR, status VARCHAR, created_at DATETIME)"
    )
    conn.commit()
    conn.close()
    run = _same(f"sqlite+aiosqlite:///{file}", "list")
    assert run.exit_code == 1
    assert "sagactl db upgrade" in run.stderr


@pytest.mark.parametrize("option", ["--name", "--aggregation-id"])
def test_pg_nul_in_a_filter_is_a_database_error(pg_url: str, seeded: Seeded, option: str) -> None:
    run = _same(pg_url, "list", option, "a\x00b")
    assert run.exit_code == 1
    assert run.stderr.startswith("error: database error: invalid byte sequence"), run.stderr


def test_pg_unencodable_filter_is_a_database_error(pg_url: str, seeded: Seeded) -> None:
    # An undecodable argv byte arrives as a lone surrogate; only the parameter's number in
    # asyncpg's message differs between the two SQL texts.
    fast, slow = _both(pg_url, "list", "--name", "a\udcffb")
    assert fast.exit_code == slow.exit_code == 1
    for run in (fast, slow):
        assert run.stderr.startswith("error: database error: invalid input"), run.stderr


@pytest.fixture(scope="module")
def scram() -> Iterator[ScramServer]:
    server = start_scram_server()
    if isinstance(server, str):
        pytest.skip(server)
    try:
        yield server
    finally:
        server.stop()


def test_empty_password_in_the_url_leaves_pgpassword_to_asyncpg(scram: ScramServer) -> None:
    url = f"postgresql+asyncpg://postgres:@127.0.0.1:{scram.port}/postgres"
    run = _same(url, "list", env={"PGPASSWORD": PASSWORD})
    # Authenticated; the throwaway server has no saga table.
    assert run.exit_code == 1
    assert "sagactl db upgrade" in run.stderr


# --- what held -----------------------------------------------------------------------------


def test_wrong_password_is_refused_and_masked(scram: ScramServer) -> None:
    secret = "wrong-horse-12345"
    for out in ("text", "json"):
        run = _same(
            f"postgresql+asyncpg://postgres:{secret}@127.0.0.1:{scram.port}/postgres",
            "-o",
            out,
            "list",
        )
        assert run.exit_code == 7
        assert secret not in run.stderr + run.stdout


HOSTILE = [
    ["--name", "x'; DROP TABLE saga_state; --"],
    ["--aggregation-id", "' OR '1'='1"],
    ["--aggregation-id", "agg-completed') OR ('a'='a"],
    ["--status", "completed,failed"],
    ["--name", "order,order_fast", "--limit", "2", "--page", "2"],
    ["--aggregation-id", "é" * 5000],
    ["--since", "9999-12-31T23:59:59.999999"],
    ["--until", "0001-01-01"],
    ["--since", "2h", "--until", "1s"],
    ["--offset", str(10**12)],
]


@pytest.mark.parametrize("args", HOSTILE)
def test_pg_hostile_filters_read_as_sqlalchemy(
    pg_url: str, seeded: Seeded, args: list[str]
) -> None:
    _same(pg_url, "-o", "json", "list", *args)
    assert _same(pg_url, "-o", "json", "list").json()["total"] == len(seeded.ids)


@pytest.mark.parametrize("args", [[], *HOSTILE, ["--status", "running"], ["--since", "1h"]])
def test_sqlite_every_status_and_hostile_filters_read_as_sqlalchemy(
    sqlite_url: str, args: list[str]
) -> None:
    _same(sqlite_url, "-o", "json", "list", *args)
    assert _same(sqlite_url, "-o", "json", "list").json()["total"] == 7


def test_pg_connection_problems_read_as_sqlalchemy(pg_url: str, seeded: Seeded) -> None:
    base = pg_url.rsplit("/", 1)[0]
    for url, code in [
        (f"{base}/attack13_no_such_db", 7),
        ("postgresql+asyncpg://postgres@127.0.0.1:1/x", 6),
        ("postgresql+asyncpg://attack13_no_role:pw@127.0.0.1:5432/postgres", 7),
    ]:
        assert _same(url, "list").exit_code == code, url
    assert _same(pg_url, "--table", "attack13_missing", "list").exit_code == 1


def test_pg_role_out_of_connections_reads_as_sqlalchemy(pg_url: str) -> None:
    async def role(sql: str) -> None:
        conn = await asyncpg.connect(plain_dsn(pg_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(role("DROP ROLE IF EXISTS attack13_limited"))
    asyncio.run(role("CREATE ROLE attack13_limited LOGIN CONNECTION LIMIT 0"))
    try:
        url = pg_url.replace("postgres@", "attack13_limited@", 1)
        run = _same(url, "list")
        assert run.exit_code == 6
        assert "53300" in run.stderr
    finally:
        asyncio.run(role("DROP ROLE attack13_limited"))


def test_percent_encoded_password_and_padded_port(pg_url: str, seeded: Seeded) -> None:
    url = pg_url.replace("postgres@", "postgres:%73ecret%40x%2B@", 1).replace(":5432/", ":05432/")
    assert url != pg_url
    assert _same(url, "-o", "json", "list").json()["total"] == len(seeded.ids)


def test_sqlite_percent_encoded_path(sqlite_url: str, tmp_path: Path) -> None:
    os.link(tmp_path / "sagas.db", tmp_path / "a b.db")
    url = f"sqlite+aiosqlite:///{tmp_path / 'a%20b.db'}"
    assert _same(url, "-o", "json", "list").json()["total"] == 7


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    file = tmp_path / "notdb.db"
    file.write_text("not a database " * 20)
    assert _same(f"sqlite+aiosqlite:///{file}", "list").exit_code == 7


def test_sqlite_held_write_lock_does_not_block_list(sqlite_url: str, tmp_path: Path) -> None:
    writer = sqlite3.connect(tmp_path / "sagas.db", isolation_level=None)
    try:
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("UPDATE saga_state SET last_error = 'uncommitted'")
        out = _same(sqlite_url, "-o", "json", "list").json()
        assert all(s["last_error"] != "uncommitted" for s in out["sagas"])
    finally:
        writer.execute("ROLLBACK")
        writer.close()
