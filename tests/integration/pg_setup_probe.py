"""Run only by test_pg_setup_messages.py (given explicitly to a pytest subprocess; its name
keeps it out of ordinary runs): it needs more connections at once than its server allows."""

from __future__ import annotations

import asyncio

import asyncpg


async def test_three_connections_at_once(pg_admin_dsn: str) -> None:
    conns = []
    try:
        for _ in range(3):
            conns.append(await asyncpg.connect(pg_admin_dsn))
        assert len(conns) == 3
    finally:
        await asyncio.gather(*(c.close() for c in conns))


async def test_after_the_refusal(pg_admin_dsn: str) -> None:
    conn = await asyncpg.connect(pg_admin_dsn)
    await conn.close()
