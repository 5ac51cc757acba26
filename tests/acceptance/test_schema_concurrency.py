"""Schema management from the command line: ``sagactl db upgrade --sql`` prints the DDL and
changes nothing; three ``sagactl db upgrade`` started at once on a fresh PostgreSQL database
all succeed (they queue on the advisory lock); two ``sagad --create-schema`` started at once
on a fresh SQLite file do not crash (one runs, the other refuses as a second worker)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import app_sagas
import asyncpg
import pytest
from dbutil import plain_dsn
from sagad_kit import SagadFactory, base_env, wait_until
from sqlalchemy.engine import make_url

from saga_core.schema import SCHEMA_LOCK_KEY

SAGACTL = str(Path(sys.executable).with_name("sagactl"))
EXIT_CONFIG = 78


@pytest.fixture
async def fresh_db(pg_url: str) -> AsyncIterator[str]:
    """A new, empty database (no saga table, no registry, no version table)."""
    name = f"saga_fresh_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(plain_dsn(pg_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _sagactl(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SAGACTL, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(),
    )


async def test_db_upgrade_sql_prints_the_ddl_and_changes_nothing(fresh_db: str) -> None:
    proc = _sagactl("db", "upgrade", "--sql", "--database-url", fresh_db)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.startswith("-- saga_core schema upgrade to version")
    assert f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY});" in out
    assert "CREATE TABLE saga_state (" in out and "CONSTRAINT ck_saga_state_status CHECK" in out
    assert "CREATE TABLE saga_workers (" in out and out.rstrip().endswith("COMMIT;")
    status = _sagactl("db", "status", "--database-url", fresh_db)
    status.communicate(timeout=60)
    assert status.returncode == 1, "nothing was created"

    conn = await asyncpg.connect(plain_dsn(fresh_db))  # the DBA runs the reviewed script
    try:
        await conn.execute(out)
    finally:
        await conn.close()
    status = _sagactl("db", "status", "--database-url", fresh_db)
    status.communicate(timeout=60)
    assert status.returncode == 0
    again = _sagactl("db", "upgrade", "--sql", "--database-url", fresh_db)
    out, _ = again.communicate(timeout=60)
    assert out == "-- the schema is up to date: nothing to do\n"


async def test_concurrent_db_upgrades_on_a_fresh_database_all_succeed(fresh_db: str) -> None:
    holder = await asyncpg.connect(plain_dsn(fresh_db))
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
        procs = [_sagactl("db", "upgrade", "--database-url", fresh_db) for _ in range(3)]

        async def all_waiting() -> bool:
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            return waiting == len(procs)

        await wait_until(all_waiting, timeout=60, what="three upgrades queued on the lock")
        await tx.rollback()  # go: all three start from the same empty database
        results = [p.communicate(timeout=60) for p in procs]
        for p, (_, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, err
        tables = await holder.fetch(
            "SELECT table_name FROM saga_schema_version ORDER BY table_name"
        )
        assert [r[0] for r in tables] == ["saga_state", "saga_workers"]
    finally:
        await holder.close()


async def test_concurrent_create_schema_on_a_fresh_sqlite_file(
    sagad: SagadFactory, tmp_path: Path
) -> None:
    path = tmp_path / "fresh.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    try:
        holder.execute("BEGIN IMMEDIATE")  # both upgrades will wait for this write lock
        args = ["--app", "app_sagas:make", "--database-url", f"sqlite+aiosqlite:///{path}"]
        env = {"ACCEPT_TABLE": "fresh", "ACCEPT_RECORD_URL": f"sqlite+aiosqlite:///{path}"}
        workers = [sagad.start(*args, "--create-schema", env=env) for _ in range(2)]

        async def both_opened_the_file() -> bool:
            for w in workers:
                if not w.running():
                    raise AssertionError(f"sagad exited early:\n{w.log}")
            opened = [await asyncio.to_thread(_has_open, w.pid, path) for w in workers]
            return all(opened)

        await wait_until(both_opened_the_file, timeout=30, what="both sagad to open the file")
    finally:
        holder.execute("ROLLBACK")  # go
        holder.close()

    async def settled() -> bool:
        ready = [w for w in workers if w.notify is not None and w.notify.seen("READY=1")]
        return len(ready) + sum(not w.running() for w in workers) == 2

    await wait_until(settled, timeout=30, what="one sagad ready, the other refused")
    codes = [w.proc.returncode for w in workers if not w.running()]
    assert codes == [EXIT_CONFIG], "\n---\n".join(w.log for w in workers)
    loser = next(w for w in workers if not w.running())
    assert "SQLite supports one worker process" in loser.log
    assert "Traceback" not in loser.log
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM fresh").fetchone() == (0,)
    orch = app_sagas.build(f"sqlite+aiosqlite:///{path}", table="fresh")
    try:
        assert (await orch.engine.store.schema_status())["up_to_date"] is True
    finally:
        await orch.engine.sql_engine.dispose()


def _has_open(pid: int, path: Path) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd_dir / fd) == str(path) for fd in os.listdir(fd_dir))
    except OSError:
        return False
