"""Real errors from a real PostgreSQL server and real SQLite files, classified: through
SQLAlchemy (as the store and admin see them) and from asyncpg directly (the hot path and the
wake-up listener). A wrong password is provoked in tests/acceptance/test_db_errors.py, on a
server that checks passwords."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from dbutil import plain_dsn
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from saga_core.dberrors import DbErrorInfo, DbErrorKind, DbProblem, classify_db_error

pytestmark = pytest.mark.postgres


async def _sa_error(url: str, sql: str = "SELECT 1", **kwargs: object) -> DbErrorInfo:
    engine = create_async_engine(url, **kwargs)  # type: ignore[arg-type]
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    except Exception as exc:
        return classify_db_error(exc)
    finally:
        await engine.dispose()
    raise AssertionError(f"{sql} on {url} did not fail")


async def _raw_error(dsn: str) -> DbErrorInfo:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except Exception as exc:
        return classify_db_error(exc)
    await conn.close()
    raise AssertionError(f"connecting to {dsn} did not fail")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def role(pg_url: str) -> AsyncIterator[str]:
    """A login role with no privilege on anything, limited to one connection."""
    name = f"saga_e_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(plain_dsn(pg_url))
    await admin.execute(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT 1")
    await admin.execute(f"CREATE TABLE {name}_t (x int)")
    try:
        yield name
    finally:
        await admin.execute(f"DROP TABLE {name}_t")
        await admin.execute(f"DROP OWNED BY {name}")
        await admin.execute(f"DROP ROLE {name}")
        await admin.close()


async def test_permanent_errors_of_a_real_server(pg_url: str, role: str) -> None:
    url = make_url(pg_url)
    no_db = url.set(database=f"no_db_{uuid.uuid4().hex[:8]}")
    no_role = url.set(username=f"no_role_{uuid.uuid4().hex[:8]}")
    for target, problem, code in (
        (no_db, DbProblem.NO_DATABASE, "3D000"),
        (no_role, DbProblem.AUTHENTICATION, "28000"),
    ):
        for info in (
            await _sa_error(target.render_as_string(hide_password=False)),
            await _raw_error(plain_dsn(target.render_as_string(hide_password=False))),
        ):
            assert (info.problem, info.sqlstate, info.kind) == (
                problem,
                code,
                DbErrorKind.PERMANENT,
            )
    as_role = url.set(username=role).render_as_string(hide_password=False)
    info = await _sa_error(as_role, f"SELECT * FROM {role}_t")
    assert (info.problem, info.sqlstate) == (DbProblem.PRIVILEGE, "42501")
    assert f"permission denied for table {role}_t" in info.detail
    info = await _sa_error(pg_url, "SELECT * FROM no_such_table_i12")
    assert (info.problem, info.sqlstate) == (DbProblem.SCHEMA, "42P01")
    info = await _sa_error(pg_url, "SELECT no_such_column FROM pg_class")
    assert (info.problem, info.sqlstate) == (DbProblem.SCHEMA, "42703")
    info = await _sa_error(pg_url, "CREATE TABLE no_such_schema_i12.t (x int)")
    assert (info.problem, info.sqlstate) == (DbProblem.SCHEMA, "3F000")
    info = await _sa_error(f"{pg_url}?ssl=require")  # the test server speaks no SSL
    assert info.problem is DbProblem.CONFIGURATION and "SSL" in info.detail


async def test_transient_errors_of_a_real_server(pg_url: str, role: str) -> None:
    url = make_url(pg_url)
    closed = url.set(port=_closed_port()).render_as_string(hide_password=False)
    for info in (await _sa_error(closed), await _raw_error(plain_dsn(closed))):
        assert info.problem is DbProblem.UNREACHABLE and info.transient
    unknown_host = url.set(host="no-such-host.invalid").render_as_string(hide_password=False)
    assert (await _sa_error(unknown_host)).problem is DbProblem.UNREACHABLE

    # "too many connections for role" (53300): the role may hold one connection.
    as_role = url.set(username=role).render_as_string(hide_password=False)
    first = await asyncpg.connect(plain_dsn(as_role))
    try:
        info = await _sa_error(as_role)
        assert (info.problem, info.sqlstate, info.kind) == (
            DbProblem.OVERLOADED,
            "53300",
            DbErrorKind.TRANSIENT,
        )
    finally:
        await first.close()

    # An administrator ends our backend (57P01, or a closed connection).
    victim = await asyncpg.connect(plain_dsn(pg_url))
    admin = await asyncpg.connect(plain_dsn(pg_url))
    try:
        pid = victim.get_server_pid()
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(Exception) as caught:
            for _ in range(50):  # the termination arrives asynchronously
                await victim.execute("SELECT 1")
                await asyncio.sleep(0.05)
        info = classify_db_error(caught.value)
        assert info.problem in (DbProblem.RESTARTING, DbProblem.UNREACHABLE), info
        assert info.transient
    finally:
        await admin.close()
        victim.terminate()

    info = await _sa_error(
        pg_url,
        "SELECT pg_sleep(2)",
        connect_args={"server_settings": {"statement_timeout": "50"}},
    )
    assert (info.problem, info.sqlstate) == (DbProblem.TIMEOUT, "57014")


async def test_sqlite_errors(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x int)")
    holder.execute("BEGIN IMMEDIATE")
    try:
        url = f"sqlite+aiosqlite:///{path}"
        info = await _sa_error(url, "INSERT INTO t VALUES (1)", connect_args={"timeout": 0.1})
        assert info.problem is DbProblem.LOCKED and info.transient
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    info = await _sa_error(f"sqlite+aiosqlite:///{path}", "SELECT * FROM no_such_table")
    assert info.problem is DbProblem.SCHEMA and info.permanent
    info = await _sa_error(f"sqlite+aiosqlite:///{tmp_path / 'no' / 'dir.db'}")
    assert info.problem is DbProblem.CONFIGURATION and info.permanent
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an sqlite database file, just text" * 100)
    info = await _sa_error(f"sqlite+aiosqlite:///{garbage}", "SELECT * FROM sqlite_master")
    assert info.problem is DbProblem.CONFIGURATION and "not a database" in info.detail
