"""SQLite (aiosqlite) dialect of the SQL store: the embedded default, for one process.

SQLite has no row locks or SKIP LOCKED: write transactions of this process are serialised
by an asyncio lock, other processes wait on SQLite's busy timeout, and WAL lets readers
(``sagactl``) work while a worker writes. Run one ``sagad`` per SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, event, func, insert, literal, null, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from saga_core.context import active_step
from saga_core.errors import SagaError
from saga_core.state import UTCDateTime, utcnow
from saga_core.store.base import WorkerRow
from saga_core.store.sql import WORKERS, SqlSagaStore

_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()
_PREPARED: weakref.WeakSet[Any] = weakref.WeakSet()
BUSY_TIMEOUT_MS = 10_000
_ENTRIES_PER_CALL = 50
"""History entries appended per json_insert() call (SQLite allows 127 arguments)."""


def prepare_sqlite_engine(engine: AsyncEngine) -> None:
    """Busy timeout and WAL on every new connection of ``engine`` (idempotent)."""
    sync_engine = engine.sync_engine
    if sync_engine in _PREPARED:
        return
    _PREPARED.add(sync_engine)

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()


class SqliteSagaStore(SqlSagaStore):
    def __init__(self, engine: AsyncEngine, *args: Any, **kwargs: Any) -> None:
        super().__init__(engine, *args, **kwargs)
        prepare_sqlite_engine(engine)

    def _now(self) -> ColumnElement[datetime]:
        return literal(utcnow(), UTCDateTime)

    def _now_plus(self, delta: timedelta) -> ColumnElement[datetime]:
        return literal(utcnow() + delta, UTCDateTime)

    def _inbox_flag(self) -> ColumnElement[bool]:
        # SQLite 3.40 evaluates "col IS [NOT] NULL" wrongly in a RETURNING clause for a
        # column the UPDATE did not set; typeof() reads the stored value.
        return func.typeof(self.table.c.inbox) != "null"

    def _new_token_sql(self) -> ColumnElement[Any]:
        return func.lower(func.hex(func.randomblob(16)))

    def _history_append(self, entries: list[dict[str, Any]]) -> ColumnElement[Any]:
        # One json_insert() takes many path/value pairs (applied in order): nesting a call
        # per entry overflows SQLite's parser from about 30 entries in one write.
        expr: ColumnElement[Any] = self.table.c.step_history
        for start in range(0, len(entries), _ENTRIES_PER_CALL):
            args: list[Any] = []
            for entry in entries[start : start + _ENTRIES_PER_CALL]:
                args += ["$[#]", func.json(literal(json.dumps(entry, default=str)))]
            expr = func.json_insert(expr, *args)
        return expr

    def _history_replace(self, index: int, entry: dict[str, Any]) -> ColumnElement[Any]:
        return func.json_set(
            self.table.c.step_history,
            f"$[{int(index)}]",
            func.json(literal(json.dumps(entry, default=str))),
        )

    async def _insert_in_session(self, session: AsyncSession, stmt: Any) -> None:
        # No savepoint here: pysqlite begins its transaction lazily, before the first INSERT,
        # so a SAVEPOINT as the session's first statement would open the transaction itself
        # and its RELEASE would commit the saga whatever the caller did next. A refused INSERT
        # undoes only itself in SQLite, so the caller's transaction stays usable without one.
        await session.execute(stmt)

    async def begin_step_transaction(self, session: AsyncSession) -> None:
        # IMMEDIATE: the database's write lock from the start, so the step's reads and writes
        # and its checkpoint form one serialisable transaction (pysqlite would begin lazily,
        # at the first write, leaving earlier reads outside it). Skipped when the engine
        # already begins transactions itself (SQLAlchemy's pysqlite "begin" recipe).
        conn = await session.connection()
        raw = await conn.get_raw_connection()
        if not getattr(raw.driver_connection, "in_transaction", False):
            await conn.exec_driver_sql("BEGIN IMMEDIATE")

    def _write_lock(self) -> asyncio.Lock:
        ctx = active_step()
        session = None if ctx is None else ctx.session_if_transactional
        if ctx is not None and session is not None and session.bind is self.engine:
            # The step's transaction holds this lock until the step's checkpoint: waiting for
            # it here would wait for ourselves.
            raise SagaError(
                f"transactional step {ctx.step_id!r}: on SQLite, saga writes other than through "
                "its session wait for the step's own transaction to end; pass "
                "session=current_step().session (start), or do this in another step"
            )
        key = self.engine.sync_engine
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = asyncio.Lock()
        return lock

    async def worker_register_sole(
        self,
        worker: dict[str, Any],
        *,
        stale_after: float,
        alive: Callable[[WorkerRow], bool],
    ) -> WorkerRow | None:
        """Register ``worker`` unless another live worker is registered, atomically: the
        check and the insert are one ``BEGIN IMMEDIATE`` transaction, so of two processes
        starting at once exactly one registers (the other waits for the write lock, then sees
        it). A worker counts as live when it is not marked stopped, its heartbeat is at most
        ``stale_after`` seconds old and ``alive(row)`` (the caller's check of its pid).

        Returns the live worker in the way (nothing written), or ``None`` once registered."""
        w = WORKERS
        async with self._write_lock(), self.engine.connect() as conn:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            now = utcnow()
            others = await conn.execute(
                select(w).where(w.c.id != worker["id"], w.c.stopped_at.is_(None))
            )
            for mapping in others.mappings().all():
                row = WorkerRow.from_mapping(mapping)
                if (now - row.heartbeat_at).total_seconds() <= stale_after and alive(row):
                    await conn.rollback()
                    return row
            values = {**worker, "heartbeat_at": self._now(), "stopped_at": null()}
            res = await conn.execute(update(w).where(w.c.id == worker["id"]).values(**values))
            if res.rowcount == 0:
                await conn.execute(insert(w).values(**values, started_at=self._now()))
            await conn.commit()
        return None
