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

from sqlalchemy import (
    ColumnElement,
    String,
    and_,
    bindparam,
    case,
    event,
    func,
    insert,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from saga_core import history as h
from saga_core.context import active_step
from saga_core.errors import SagaError
from saga_core.state import UTCDateTime, utcnow
from saga_core.store.base import Checkpoint, DeadlineChange, LeaseChange, WorkerRow
from saga_core.store.sql import WORKERS, SqlSagaStore

_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()
_PREPARED: weakref.WeakSet[Any] = weakref.WeakSet()
BUSY_TIMEOUT_MS = 10_000
_ENTRIES_PER_CALL = 50
"""History entries appended per json_insert() call (SQLite allows 127 arguments)."""
_PLAIN = ("status", "phase", "current_step_index", "steps_state", "context", "retry_counter")
"""RowUpdate fields written as they are when set (see ``SqlSagaStore._values``)."""
_SHAPE_HISTORY_MAX = 8
"""Checkpoints appending more history entries than this build their statement afresh."""
_SHAPES_MAX = 256
"""Checkpoint statements kept per store (the cache starts over when full)."""


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
        self._shapes: dict[tuple[Any, ...], Any] = {}

    def _checkpoint_call(self, cp: Checkpoint, *, statement_clock: bool = False) -> Any:
        # The statement SqlSagaStore._checkpoint_stmt builds, with its values as bound
        # parameters: one statement per shape of update (which columns are set, how), kept,
        # so SQLAlchemy computes its cache key and finds its compiled form once, and each
        # checkpoint only fills in the parameters. The clock is this process's either way
        # (statement_clock changes nothing here).
        upd = cp.update
        history = upd.history
        if len(history) > _SHAPE_HISTORY_MAX:
            return super()._checkpoint_call(cp, statement_clock=statement_clock)
        deadline = upd.deadline
        keep_lease = upd.lease is LeaseChange.KEEP
        if deadline is DeadlineChange.HOLD and not keep_lease:
            deadline = DeadlineChange.KEEP  # as _values: HOLD only extends a lease kept
        cols = tuple(name for name in _PLAIN if getattr(upd, name) is not None)
        write_error = upd.last_error is not None or upd.set_last_error
        inbox = 0 if not upd.set_inbox else 2 if upd.inbox else 1
        key = (
            cols,
            write_error,
            len(history),
            deadline,
            keep_lease,
            upd.finished,
            upd.step_token is not None,
            upd.new_lease_token is not None,
            inbox,
        )
        stmt = self._shapes.get(key)
        if stmt is None:
            if len(self._shapes) >= _SHAPES_MAX:
                self._shapes.clear()
            stmt = self._shapes[key] = self._checkpoint_shape(key)
        now = utcnow()
        params: dict[str, Any] = {"p_id": cp.saga_id, "p_token": cp.token, "p_now": now}
        for name in cols:
            params["p_" + name] = getattr(upd, name)
        if write_error:
            params["p_last_error"] = None if upd.last_error is None else h.storable(upd.last_error)
        for i, entry in enumerate(history):
            params[f"p_h{i}"] = json.dumps(entry, default=str)
        if deadline is DeadlineChange.AFTER:
            params["p_after"] = now + upd.delay
        elif deadline is DeadlineChange.LEASE:
            params["p_lease"] = now + self.lease
        elif deadline is DeadlineChange.HOLD:
            params["p_lease"] = now + self.lease
            params["p_half"] = now + self.lease / 2
        if upd.step_token is not None:
            params["p_step_execution_token"] = upd.step_token
        if upd.new_lease_token is not None:
            params["p_lease_token"] = upd.new_lease_token
        if inbox == 2:
            params["p_inbox"] = upd.inbox
        return stmt, params

    def _checkpoint_shape(self, key: tuple[Any, ...]) -> Any:
        """The statement of the checkpoints of shape ``key`` (see ``_checkpoint_call``),
        writing what ``SqlSagaStore._values`` writes, from bound parameters."""
        cols, write_error, n_history, deadline, keep_lease, finished, step, rotate, inbox = key
        t = self.table
        c = t.c
        now = bindparam("p_now", type_=UTCDateTime)
        v: dict[str, Any] = {"updated_at": now}
        for name in cols:
            v[name] = bindparam("p_" + name, type_=c[name].type)
        if "steps_state" in cols:
            v["recovery_count"] = 0  # an outcome was recorded (or an operator acted)
        if write_error:
            v["last_error"] = bindparam("p_last_error", type_=c.last_error.type)
        if n_history:
            v["step_history"] = self._history_append_bound(
                [bindparam(f"p_h{i}", type_=String) for i in range(n_history)]
            )
        if deadline is DeadlineChange.CLEAR:
            v["deadline_at"] = null()
        elif deadline is DeadlineChange.AFTER:
            v["deadline_at"] = bindparam("p_after", type_=UTCDateTime)
        elif deadline is DeadlineChange.LEASE:
            v["deadline_at"] = bindparam("p_lease", type_=UTCDateTime)
        elif deadline is DeadlineChange.HOLD:
            half = bindparam("p_half", type_=UTCDateTime)
            short = and_(c.lease_owner.is_not(None), c.deadline_at < half)
            lease = bindparam("p_lease", type_=UTCDateTime)
            v["deadline_at"] = case((short, lease), else_=c.deadline_at)
        if not keep_lease:
            v["lease_owner"] = null()
        if finished:
            v["finished_at"] = now
        if step:
            v["step_execution_token"] = bindparam(
                "p_step_execution_token", type_=c.step_execution_token.type
            )
        if rotate:
            v["lease_token"] = bindparam("p_lease_token", type_=c.lease_token.type)
        if inbox:
            v["inbox"] = bindparam("p_inbox", type_=c.inbox.type) if inbox == 2 else null()
        return (
            update(t)
            .where(
                c.id == bindparam("p_id", type_=c.id.type),
                c.lease_token == bindparam("p_token", type_=c.lease_token.type),
            )
            .values(**v)
            .returning(c.deadline_at, c.lease_owner, self._inbox_flag(), now)
        )

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
        return self._history_append_bound(
            [literal(json.dumps(entry, default=str)) for entry in entries]
        )

    def _history_append_bound(self, entries: list[ColumnElement[Any]]) -> ColumnElement[Any]:
        """The history with ``entries`` (JSON text, in SQL) appended."""
        # One json_insert() takes many path/value pairs (applied in order): nesting a call
        # per entry overflows SQLite's parser from about 30 entries in one write.
        expr: ColumnElement[Any] = self.table.c.step_history
        for start in range(0, len(entries), _ENTRIES_PER_CALL):
            args: list[Any] = []
            for entry in entries[start : start + _ENTRIES_PER_CALL]:
                args += ["$[#]", func.json(entry)]
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
