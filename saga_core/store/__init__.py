"""The persistence seam and its PostgreSQL and SQLite implementations."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from saga_core.errors import SagaStoreError
from saga_core.store.base import (
    Checkpoint,
    DeadlineChange,
    LeaseChange,
    RowUpdate,
    SagaFilter,
    SagaRow,
    SagaStore,
    WorkerRow,
)

__all__ = [
    "Checkpoint",
    "DeadlineChange",
    "LeaseChange",
    "RowUpdate",
    "SagaFilter",
    "SagaRow",
    "SagaStore",
    "WorkerRow",
    "make_store",
]


def make_store(engine: AsyncEngine, table: Table, *, lease: timedelta) -> SagaStore:
    """The store for ``engine``'s dialect."""
    name = engine.dialect.name
    if name == "postgresql":
        if engine.dialect.driver != "asyncpg":
            raise SagaStoreError(
                f"PostgreSQL is supported through asyncpg; use a postgresql+asyncpg:// URL "
                f"(got driver {engine.dialect.driver!r})"
            )
        from saga_core.store.postgres import FastPostgresSagaStore

        return FastPostgresSagaStore(engine, table, lease=lease)
    if name == "sqlite":
        from saga_core.store.sqlite import SqliteSagaStore

        return SqliteSagaStore(engine, table, lease=lease)
    raise SagaStoreError(
        f"unsupported database {name!r}: use PostgreSQL (asyncpg) or SQLite (aiosqlite)"
    )
