"""The persistence seam and its PostgreSQL and SQLite implementations.

Importing this package (or ``store.base``) does not import SQLAlchemy: the records and the
interface are plain Python, and ``store.lite`` reads through the bare driver for consoles
that must start fast. The SQL stores are imported by :func:`make_store`."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.ext.asyncio import AsyncEngine

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
