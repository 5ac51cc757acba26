"""sagactl's read-only commands work for a PostgreSQL role that may only SELECT the saga
tables; an operator action under that role is refused by the database and changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from cli_helpers import invoke
from cli_seed import Seeded
from sqlalchemy.engine import make_url

TABLES = ("saga_state", "saga_workers", "saga_schema_version")


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def readonly_url(pg_url: str, pg_admin_dsn: str, seeded: Seeded) -> Iterator[str]:
    role = f"saga_ro_{uuid.uuid4().hex[:10]}"
    db = make_url(pg_url).database
    asyncio.run(
        _admin(
            pg_admin_dsn,
            f"CREATE ROLE {role} LOGIN",
            f'GRANT CONNECT ON DATABASE "{db}" TO {role}',
            f"GRANT USAGE ON SCHEMA public TO {role}",
            *(f"GRANT SELECT ON {t} TO {role}" for t in TABLES),
        )
    )
    try:
        yield (
            make_url(pg_url).set(username=role, password=None).render_as_string(hide_password=False)
        )
    finally:
        asyncio.run(
            _admin(
                pg_admin_dsn,
                f"REVOKE ALL ON {', '.join(TABLES)} FROM {role}",
                f"REVOKE ALL ON SCHEMA public FROM {role}",
                f'REVOKE ALL ON DATABASE "{db}" FROM {role}',
                f"DROP ROLE {role}",
            )
        )


def test_read_only_role_can_read_everything(readonly_url: str, seeded: Seeded) -> None:
    sid = str(seeded["failed"])
    for args in (
        ["list"],
        ["list", "--status", "FAILED", "-o", "json"],
        ["show", sid],
        ["show", sid[:8], "-o", "json"],
        ["stats"],
        ["workers"],
        ["db", "status"],
    ):
        r = invoke([*args, "--database-url", readonly_url])
        assert r.exit_code == 0, (args, r.stdout, r.stderr)


def test_read_only_role_cannot_act(readonly_url: str, pg_url: str, seeded: Seeded) -> None:
    sid = str(seeded["failed"])
    before = invoke(["show", sid, "-o", "json", "--database-url", pg_url]).json()
    r = invoke(["retry", sid, "--yes", "--reason", "test", "--database-url", readonly_url])
    assert r.exit_code != 0
    assert "permission denied" in (r.stdout + r.stderr).lower()
    after = invoke(["show", sid, "-o", "json", "--database-url", pg_url]).json()
    assert after == before
