"""The test command on a shared (or missing) PostgreSQL server: each way the server can be
unusable stops the run with one plain message saying what the suite needs and how to point
TEST_DATABASE_URL elsewhere, never an asyncpg or fixture traceback.

Each case runs pytest itself in a subprocess, against a real server: roles created here
with a connection limit (PostgreSQL refuses them with SQLSTATE 53300, as it refuses a full
server's "too many clients") or without CREATEDB.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
PROBE = "tests/integration/pg_setup_probe.py"
PLUMBING = "tests/integration/test_pg_plumbing.py"
OWN_ENV = ("TEST_DATABASE_URL", "SAGA_TEST_NO_LOCAL_PG", "SAGA_TEST_PG_CTL", "PYTEST_ADDOPTS")


def run_pytest(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in OWN_ENV}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )


def plain(out: subprocess.CompletedProcess[str]) -> str:
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert "KeyError" not in text, text
    assert 'File "' not in text, text  # no frame of any traceback
    return text


async def _admin(dsn: str, *statements: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = []
        for sql in statements:
            rows = await conn.fetch(sql)
        return rows
    finally:
        await conn.close()


@pytest.fixture
def role(pg_server: object) -> Iterator[Callable[[str], str]]:
    """``role("CONNECTION LIMIT 0")``: a new login role; returns a TEST_DATABASE_URL for it.
    Dropped afterwards with any database it still owns."""
    admin = pg_server.maintenance_dsn  # type: ignore[attr-defined]
    may = asyncio.run(
        _admin(admin, "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
    )
    if not may[0][0]:
        pytest.skip("the test server's user may not create roles (CREATEROLE)")
    created: list[str] = []

    def make(options: str) -> str:
        name = f"saga_test_role_{uuid.uuid4().hex[:10]}"
        asyncio.run(_admin(admin, f"CREATE ROLE {name} LOGIN {options}"))
        created.append(name)
        return make_url(admin).set(username=name, password=None).render_as_string(False)

    yield make
    for name in created:
        owned = asyncio.run(
            _admin(
                admin,
                "SELECT datname FROM pg_database d JOIN pg_roles r ON d.datdba = r.oid "
                f"WHERE r.rolname = '{name}'",
            )
        )
        drops = [f'DROP DATABASE IF EXISTS "{r[0]}" WITH (FORCE)' for r in owned]
        asyncio.run(_admin(admin, *drops, f"DROP ROLE IF EXISTS {name}"))


def test_a_server_refusing_connections_stops_the_run_plainly(
    role: Callable[[str], str],
) -> None:
    url = role("CREATEDB CONNECTION LIMIT 0")
    out = run_pytest({"TEST_DATABASE_URL": url}, PLUMBING)
    text = plain(out)
    assert out.returncode == 2, text
    assert "refuses more connections" in text
    assert "about 50 PostgreSQL connections" in text
    assert "TEST_DATABASE_URL=postgresql://user@host:port/db" in text
    assert "passed" not in text and "no tests ran" in text


def test_running_out_of_connections_mid_run_stops_it(role: Callable[[str], str]) -> None:
    # Two connections: enough for the probe and CREATE DATABASE, not for three at once.
    url = role("CREATEDB CONNECTION LIMIT 2")
    out = run_pytest({"TEST_DATABASE_URL": url}, PROBE)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text  # interrupted
    assert "refuses more connections" in text and "about 50 PostgreSQL connections" in text
    assert "Interrupted: stopped, PostgreSQL is full" in text
    assert "1 failed" in text and "passed" not in text, "the run stopped at the refusal"
    assert "Traceback" not in text and 'File "' not in text, text


def test_a_user_without_createdb_is_told_so(role: Callable[[str], str]) -> None:
    url = role("NOCREATEDB")
    out = run_pytest({"TEST_DATABASE_URL": url}, PLUMBING)
    text = plain(out)
    assert out.returncode == 2, text
    assert "could not CREATE DATABASE" in text and "CREATEDB privilege" in text
    assert "TEST_DATABASE_URL=" in text


def test_no_server_and_no_pg_ctl_prints_the_message_alone(tmp_path: Path) -> None:
    # A test module using tmp_path and a PostgreSQL parameter: where a fixture-raised exit
    # used to end in a long KeyError traceback from tmp_path's teardown.
    env = {
        "SAGA_TEST_NO_LOCAL_PG": "1",
        "SAGA_TEST_PG_CTL": "none",
        "PATH": str(tmp_path),  # no pg_ctl (nor anything else) on PATH
    }
    out = run_pytest(env, "tests/integration/test_admin.py")
    text = plain(out)
    assert out.returncode == 2, text
    assert "no PostgreSQL server available" in text and "apt-get install postgresql" in text
    assert "no tests ran" in text
    assert len(text.strip().splitlines()) <= 3, text


def test_sqlite_only_selection_needs_no_server(tmp_path: Path) -> None:
    env = {"SAGA_TEST_NO_LOCAL_PG": "1", "SAGA_TEST_PG_CTL": "none", "PATH": str(tmp_path)}
    out = run_pytest(env, "tests/integration/test_admin.py", "-k", "sqlite and retry")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "passed" in text and "PostgreSQL for tests" not in text
