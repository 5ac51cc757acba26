"""PostgreSQL (asyncpg) dialect of the SQL store: database clock, SKIP LOCKED claims,
row locks for operator actions, NOTIFY wake-ups, JSONB history appends."""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Interval, Select, bindparam, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from saga_core.state import UTCDateTime
from saga_core.store.sql import SqlSagaStore

WAKEUP_CHANNEL = "saga_wakeup"
"""Channel of the NOTIFY sent on start, notify and operator actions; payload: table name."""


class PostgresSagaStore(SqlSagaStore):
    def _now(self) -> ColumnElement[datetime]:
        return func.now(type_=UTCDateTime)

    def _now_plus(self, delta: timedelta) -> ColumnElement[datetime]:
        return (func.now() + bindparam(None, delta, type_=Interval)).cast(UTCDateTime)

    def _new_token_sql(self) -> ColumnElement[Any]:
        return func.gen_random_uuid()

    def _history_append(self, entries: list[dict[str, Any]]) -> ColumnElement[Any]:
        return self.table.c.step_history.op("||")(bindparam(None, entries, type_=JSONB))

    async def _wake(self, conn: AsyncConnection | AsyncSession) -> None:
        await conn.execute(select(func.pg_notify(WAKEUP_CHANNEL, self.table_name)))

    def _claim_subquery(self, sel: Select[Any]) -> Select[Any]:
        return sel.with_for_update(skip_locked=True)

    def _lock_row(self, sel: Select[Any]) -> Select[Any]:
        return sel.with_for_update()

    def _write_lock(self) -> AbstractAsyncContextManager[Any]:
        return contextlib.nullcontext()
