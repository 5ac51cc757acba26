"""Smoke tests for the PostgreSQL test plumbing in tests/conftest.py."""

from __future__ import annotations

import asyncpg
from dbutil import database_name
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


async def test_select_one(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+asyncpg://")
    engine = create_async_engine(pg_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("select 1"))).scalar_one() == 1
    finally:
        await engine.dispose()


async def test_fresh_database_per_session(pg_url: str, pg_admin_dsn: str) -> None:
    engine = create_async_engine(pg_url)
    try:
        async with engine.connect() as conn:
            name = (await conn.execute(text("select current_database()"))).scalar_one()
    finally:
        await engine.dispose()
    assert name.startswith("saga_test_")
    assert database_name(pg_url) == name

    # The plain DSN reaches the same database without SQLAlchemy.
    assert pg_admin_dsn.startswith("postgresql://")
    conn2 = await asyncpg.connect(pg_admin_dsn)
    try:
        assert await conn2.fetchval("select current_database()") == name
    finally:
        await conn2.close()
