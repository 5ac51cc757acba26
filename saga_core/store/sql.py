"""The SQL store, shared by PostgreSQL and SQLite: the writes (claims, fenced checkpoints,
locked updates, deliveries). Dialect differences are small hooks overridden in
``postgres.py`` and ``sqlite.py``; reads, the worker registry and schema commands are in
``sql_reads.py``. SQLAlchemy Core only (no ORM on the hot path)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    case,
    delete,
    insert,
    literal,
    not_,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from saga_core import history as h
from saga_core.errors import (
    ActiveSagaAlreadyExistsError,
    SagaConflictError,
    SagaNotFoundError,
    is_transient,
)
from saga_core.lease import LeaseLost
from saga_core.machine import ACTIVE_STATUSES
from saga_core.rows import CLAIMABLE_STATUSES, SUSPECT_MIN_RECOVERIES
from saga_core.store.base import (
    Applied,
    Checkpoint,
    DeadlineChange,
    DeliveryFn,
    LeaseChange,
    LockedFn,
    NotApplied,
    RowUpdate,
    SagaRow,
    SagaStore,
)
from saga_core.store.sql_reads import WORKERS, SqlReads

__all__ = ["WORKERS", "SqlSagaStore"]

ACTIVE = tuple(sorted(s.value for s in ACTIVE_STATUSES))


class SqlSagaStore(SqlReads, SagaStore):
    """Common SQLAlchemy Core implementation."""

    def __init__(self, engine: AsyncEngine, table: Table, *, lease: timedelta) -> None:
        self.engine = engine
        self.table = table
        self.table_name = table.name
        self.lease = lease
        self.dialect = engine.dialect.name
        self._cols_no_history = [c for c in table.c if c.name != "step_history"]

    # --- dialect hooks ------------------------------------------------------------------

    def _now(self) -> ColumnElement[datetime]:
        """The database clock in SQL."""
        raise NotImplementedError

    def _now_plus(self, delta: timedelta) -> ColumnElement[datetime]:
        raise NotImplementedError

    def _new_token_sql(self) -> ColumnElement[Any]:
        raise NotImplementedError

    def _history_append(self, entries: list[dict[str, Any]]) -> ColumnElement[Any]:
        raise NotImplementedError

    def _history_replace(self, index: int, entry: dict[str, Any]) -> ColumnElement[Any]:
        """The history with its entry at ``index`` replaced, in SQL (entries appended
        meanwhile by a checkpoint are kept)."""
        raise NotImplementedError

    async def _wake(self, conn: AsyncConnection | AsyncSession) -> None:
        """Wake idle workers (PostgreSQL NOTIFY); nothing elsewhere."""

    def _claim_subquery(self, sel: Select[Any]) -> Select[Any]:
        return sel

    def _inbox_flag(self) -> ColumnElement[bool]:
        """Whether the inbox holds events, as a column a RETURNING clause can read."""
        return self.table.c.inbox.is_not(None)

    def _lock_row(self, sel: Select[Any]) -> Select[Any]:
        return sel

    def _write_lock(self) -> AbstractAsyncContextManager[Any]:
        """A context manager serialising write transactions where the database needs it."""
        raise NotImplementedError

    def step_transaction_lock(self) -> AbstractAsyncContextManager[Any]:
        """Held by a transactional step from the start of its transaction to its commit or
        rollback: SQLite's write lock of this process (nothing on PostgreSQL)."""
        return self._write_lock()

    async def begin_step_transaction(self, session: AsyncSession) -> None:
        """Begin ``session``'s transaction for a transactional step."""
        await session.connection()

    async def _insert_in_session(self, session: AsyncSession, stmt: Any) -> None:
        """Insert a new saga in the caller's transaction."""
        # A savepoint keeps the caller's transaction usable when the insert is refused.
        async with session.begin_nested():
            await session.execute(stmt)
            await self._wake(session)

    def _statement_now(self) -> ColumnElement[datetime]:
        """The database clock when the statement runs, even late in a long transaction
        (PostgreSQL's ``now()`` is the transaction's start)."""
        return self._now()

    def _statement_now_plus(self, delta: timedelta) -> ColumnElement[datetime]:
        return self._now_plus(delta)

    # --- helpers --------------------------------------------------------------------------

    def _values(self, upd: RowUpdate, *, statement_clock: bool = False) -> dict[str, Any]:
        t = self.table.c
        clock = self._statement_now() if statement_clock else self._now()
        now_plus = self._statement_now_plus if statement_clock else self._now_plus
        v: dict[str, Any] = {"updated_at": clock}
        for name in (
            "status",
            "phase",
            "current_step_index",
            "steps_state",
            "context",
            "retry_counter",
        ):
            value = getattr(upd, name)
            if value is not None:
                v[name] = value
        if upd.steps_state is not None:
            v["recovery_count"] = 0  # an outcome was recorded (or an operator acted)
        if upd.last_error is not None or upd.set_last_error:
            v["last_error"] = None if upd.last_error is None else h.storable(upd.last_error)
        if upd.history:
            v["step_history"] = self._history_append(upd.history)
        if upd.deadline is DeadlineChange.CLEAR:
            v["deadline_at"] = null()
        elif upd.deadline is DeadlineChange.AFTER:
            v["deadline_at"] = now_plus(upd.delay)
        elif upd.deadline is DeadlineChange.LEASE:
            v["deadline_at"] = now_plus(self.lease)
        elif upd.deadline is DeadlineChange.HOLD and upd.lease is LeaseChange.KEEP:
            short = and_(t.lease_owner.is_not(None), t.deadline_at < now_plus(self.lease / 2))
            v["deadline_at"] = case((short, now_plus(self.lease)), else_=t.deadline_at)
        if upd.lease is LeaseChange.RELEASE:
            v["lease_owner"] = null()
        if upd.finished:
            v["finished_at"] = clock
        if upd.step_token is not None:
            v["step_execution_token"] = upd.step_token
        if upd.new_lease_token is not None:
            v["lease_token"] = upd.new_lease_token
        if upd.set_inbox:
            v["inbox"] = upd.inbox if upd.inbox else null()
        return v

    def _versions_cond(self, versions: Sequence[tuple[str, int]]) -> ColumnElement[bool]:
        """(saga_name, definition_version) is one of ``versions`` (false when empty)."""
        t = self.table.c
        by_name: dict[str, list[int]] = {}
        for name, version in versions:
            by_name.setdefault(name, []).append(version)
        if not by_name:
            return literal(False)
        return or_(
            *(
                and_(t.saga_name == name, t.definition_version.in_(sorted(vs)))
                for name, vs in sorted(by_name.items())
            )
        )

    def _suspect(self) -> ColumnElement[bool]:
        t = self.table.c
        return and_(t.lease_owner.is_not(None), t.recovery_count >= SUSPECT_MIN_RECOVERIES)

    # --- writes -----------------------------------------------------------------------------

    async def _find_by_key(self, key: str, session: AsyncSession | None) -> SagaRow | None:
        t = self.table
        stmt = select(*self._cols_no_history).where(t.c.idempotency_key == key)
        if session is not None:  # sees the caller's own uncommitted start too
            row = (await session.execute(stmt)).mappings().first()
        else:
            async with self.engine.connect() as conn:
                row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else SagaRow.from_mapping(row)

    async def saga_insert(
        self,
        values: dict[str, Any],
        *,
        session: AsyncSession | None = None,
        due_in: timedelta | None = None,
    ) -> SagaRow | None:
        values = {
            "deadline_at": self._now() if due_in is None else self._now_plus(due_in),
            "created_at": self._now(),
            "updated_at": self._now(),
            **values,
        }
        key: str | None = values.get("idempotency_key")
        stmt = insert(self.table).values(**values)
        for _ in range(3):
            if key is not None:
                # Checked first: a repeated key returns its saga even while that saga is
                # still active (the aggregation index would otherwise refuse the insert).
                existing = await self._find_by_key(key, session)
                if existing is not None:
                    return existing
            try:
                if session is not None:
                    await self._insert_in_session(session, stmt)
                    return None
                async with self._write_lock(), self.engine.begin() as conn:
                    await conn.execute(stmt)
                    await self._wake(conn)
                return None
            except IntegrityError as exc:
                if key is not None:
                    # A concurrent start with the same key committed while this insert
                    # waited for it (whichever unique index reported the clash).
                    existing = await self._find_by_key(key, session)
                    if existing is not None:
                        return existing
                    if "idempotency_key" in str(exc.orig):
                        continue  # that start rolled back: try again
                if "active_aggregation" in str(exc.orig) or "aggregation_id" in str(exc.orig):
                    raise ActiveSagaAlreadyExistsError(values["aggregation_id"]) from None
                raise
        raise SagaConflictError(
            f"a start with idempotency key {key!r} kept clashing with another one; try again"
        )

    async def saga_purge(
        self, statuses: Sequence[str], finished_before: datetime, batch: int
    ) -> int:
        if batch <= 0 or not statuses:
            return 0
        t = self.table
        victims = (
            select(t.c.id)
            .where(
                t.c.status.in_(list(statuses)),
                t.c.finished_at.is_not(None),
                t.c.finished_at < finished_before,
            )
            .order_by(t.c.finished_at)
            .limit(batch)
        )
        stmt = delete(t).where(t.c.id.in_(self._claim_subquery(victims).scalar_subquery()))
        async with self._write_lock(), self.engine.begin() as conn:
            res = await conn.execute(stmt)
        return int(res.rowcount)

    async def saga_claim(
        self,
        *,
        owner: str,
        lease: timedelta,
        limit: int,
        saga_names: Sequence[str] | None = None,
        saga_ids: Sequence[uuid.UUID] | None = None,
        versions: Sequence[tuple[str, int]] | None = None,
        suspects: bool | None = None,
    ) -> list[SagaRow]:
        if limit <= 0:
            return []
        t = self.table
        now = self._now()
        due = select(t.c.id).where(
            t.c.status.in_(CLAIMABLE_STATUSES),
            t.c.deadline_at.is_not(None),
            t.c.deadline_at <= now,
        )
        if saga_names is not None:
            due = due.where(t.c.saga_name.in_(list(saga_names)))
        if versions is not None:
            due = due.where(self._versions_cond(versions))
        if saga_ids is not None:
            due = due.where(t.c.id.in_(list(saga_ids)))
        if suspects is not None:
            due = due.where(self._suspect() if suspects else not_(self._suspect()))
        due = self._claim_subquery(due.order_by(t.c.deadline_at).limit(limit))
        stmt = (
            update(t)
            .where(t.c.id.in_(due.scalar_subquery()))
            .values(
                status=case((t.c.status == "SUSPENDED", literal("RUNNING")), else_=t.c.status),
                lease_token=self._new_token_sql(),
                lease_owner=owner,
                deadline_at=self._now_plus(lease),
                takeover_count=t.c.takeover_count
                + case((t.c.lease_owner.is_not(None), 1), else_=0),
                recovery_count=t.c.recovery_count
                + case((t.c.lease_owner.is_not(None), 1), else_=0),
                updated_at=now,
            )
            .returning(*self._cols_no_history)
        )
        async with self._write_lock(), self.engine.begin() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [SagaRow.from_mapping(r) for r in rows]

    async def saga_unclaim(self, owner: str, keep: Sequence[uuid.UUID]) -> int:
        t = self.table
        stmt = (
            update(t)
            .where(t.c.lease_owner == owner, t.c.status.in_(CLAIMABLE_STATUSES))
            .values(
                lease_owner=null(),
                lease_token=self._new_token_sql(),
                deadline_at=self._now(),
                updated_at=self._now(),
            )
        )
        if keep:
            stmt = stmt.where(t.c.id.not_in(list(keep)))
        async with self._write_lock(), self.engine.begin() as conn:
            res = await conn.execute(stmt)
            if res.rowcount:
                await self._wake(conn)
        return int(res.rowcount)

    def _checkpoint_stmt(self, cp: Checkpoint, *, statement_clock: bool = False) -> Any:
        """The fenced UPDATE of one checkpoint, returning what ``Applied`` reports."""
        t = self.table
        clock = self._statement_now() if statement_clock else self._now()
        return (
            update(t)
            .where(t.c.id == cp.saga_id, t.c.lease_token == cp.token)
            .values(**self._values(cp.update, statement_clock=statement_clock))
            .returning(t.c.deadline_at, t.c.lease_owner, self._inbox_flag(), clock)
        )

    def _checkpoint_call(self, cp: Checkpoint, *, statement_clock: bool = False) -> Any:
        """``conn.execute``'s statement and parameters for one checkpoint (SQLite keeps a
        statement per shape of update and binds the values)."""
        return self._checkpoint_stmt(cp, statement_clock=statement_clock), None

    @staticmethod
    def _applied(row: Any) -> Applied | None:
        if row is None:
            return None
        deadline, owner, inbox, now = row
        if isinstance(now, str):  # SQLite hands back text for a bare expression
            now = datetime.fromisoformat(now)
        left = None
        if owner is not None and deadline is not None:
            if now.tzinfo is None and deadline.tzinfo is not None:
                now = now.replace(tzinfo=deadline.tzinfo)
            left = (deadline - now).total_seconds()
        return Applied(lease_left=left, inbox=bool(inbox))

    async def saga_checkpoint(self, checkpoints: Sequence[Checkpoint]) -> list[Applied | None]:
        if not checkpoints:
            return []
        results: list[Applied | None] = []
        async with self._write_lock(), self.engine.begin() as conn:
            for cp in checkpoints:
                row = (await conn.execute(*self._checkpoint_call(cp))).first()
                results.append(self._applied(row))
        return results

    async def saga_checkpoint_in(
        self, session: AsyncSession, checkpoint: Checkpoint
    ) -> Applied | None:
        # The statement of saga_checkpoint, on the session's connection (both backends: the
        # PostgreSQL fast path has connections of its own).
        stmt, params = self._checkpoint_call(checkpoint, statement_clock=True)
        return self._applied((await session.execute(stmt, params)).first())

    async def saga_renew_lease(self, saga_id: uuid.UUID, token: uuid.UUID) -> float | None:
        t = self.table
        stmt = (
            update(t)
            # Only a lease still held: the keeper's renewal may race the run's own last
            # checkpoint (which keeps the token but releases the lease), and must not put a
            # lease back on a finished, suspended or released saga.
            .where(t.c.id == saga_id, t.c.lease_token == token, t.c.lease_owner.is_not(None))
            # updated_at is left alone: a renewal changes nothing an operator looks at (an
            # action compares the saga with the updated_at it showed).
            .values(deadline_at=self._now_plus(self.lease))
            .returning(t.c.deadline_at, t.c.lease_owner, self._inbox_flag(), self._now())
        )
        async with self._write_lock(), self.engine.begin() as conn:
            applied = self._applied((await conn.execute(stmt)).first())
        return None if applied is None else applied.lease_left

    async def saga_release(
        self, saga_id: uuid.UUID, token: uuid.UUID, note: dict[str, Any] | None
    ) -> bool:
        upd = RowUpdate(
            deadline=DeadlineChange.AFTER,
            lease=LeaseChange.RELEASE,
            history=[note] if note else [],
        )
        (res,) = await self.saga_checkpoint([Checkpoint(saga_id, token, upd)])
        return res is not None

    async def _locked(self, conn: AsyncConnection, sel: Select[Any]) -> SagaRow | None:
        row = (await conn.execute(self._lock_row(sel))).mappings().first()
        return None if row is None else SagaRow.from_mapping(row)

    async def _clock(self, conn: AsyncConnection) -> datetime:
        now = (await conn.execute(select(self._now()))).scalar_one()
        if isinstance(now, str):  # SQLite hands back text for a bare expression
            now = datetime.fromisoformat(now)
        assert isinstance(now, datetime)
        return now

    def _guarded(self, current: SagaRow, upd: RowUpdate) -> Any:
        """The update of a row read under lock. The row lock makes the guard redundant on
        PostgreSQL; on SQLite, where another process may write between the read and the
        update, it makes the write refuse to overwrite a change it has not seen."""
        t = self.table
        same_lease = (
            t.c.lease_token.is_(None)
            if current.lease_token is None
            else t.c.lease_token == current.lease_token
        )
        return (
            update(t)
            .where(t.c.id == current.id, same_lease, t.c.updated_at == current.updated_at)
            .values(**self._values(upd))
            .returning(t)
        )

    async def saga_update_locked(
        self,
        saga_id: uuid.UUID,
        fn: LockedFn,
        *,
        lease_token: uuid.UUID | None = None,
        tell_unapplied: bool = False,
    ) -> tuple[SagaRow, bool]:
        t = self.table
        done: tuple[SagaRow, bool] | None = None
        try:
            async with self._write_lock(), self.engine.begin() as conn:
                current = await self._locked(conn, select(t).where(t.c.id == saga_id))
                if current is None:
                    raise SagaNotFoundError(f"no saga with id {saga_id}", saga_id)
                if lease_token is not None and current.lease_token != lease_token:
                    raise LeaseLost()
                upd = fn(current, await self._clock(conn))
                if upd is None:
                    done = current, False
                else:
                    res = await conn.execute(self._guarded(current, upd))
                    new = res.mappings().first()
                    if new is None:
                        raise SagaConflictError(
                            f"saga {saga_id} changed while the action was being applied; try again"
                        )
                    if upd.deadline is DeadlineChange.AFTER and upd.delay <= timedelta(0):
                        await self._wake(conn)
                    done = SagaRow.from_mapping(new), True
        except Exception as exc:
            # Before the commit the server rolls back whatever this transaction did; the
            # commit of a transaction that wrote nothing (a look that decided nothing) loses
            # nothing either. Only a commit of a write may or may not have landed.
            if tell_unapplied and is_transient(exc) and (done is None or not done[1]):
                raise NotApplied(exc) from exc
            raise
        return done

    async def saga_deliver(
        self,
        fn: DeliveryFn,
        *,
        saga_id: uuid.UUID | None = None,
        aggregation_id: str | None = None,
        refusals_kept: int = 100,
    ) -> tuple[SagaRow, bool]:
        t = self.table
        async with self._write_lock(), self.engine.begin() as conn:
            if saga_id is not None:
                current = await self._locked(conn, select(t).where(t.c.id == saga_id))
            else:
                # At most one active saga per aggregation id (a unique partial index).
                active = select(t).where(
                    t.c.aggregation_id == aggregation_id, t.c.status.in_(ACTIVE)
                )
                current = await self._locked(conn, active)
                if current is None:
                    newest = (
                        select(t)
                        .where(t.c.aggregation_id == aggregation_id)
                        .order_by(t.c.created_at.desc(), t.c.id.desc())
                        .limit(1)
                    )
                    current = await self._locked(conn, newest)
            if current is None:
                if saga_id is not None:
                    raise SagaNotFoundError(f"no saga with id {saga_id}", saga_id)
                raise SagaNotFoundError(f"no saga with aggregation_id {aggregation_id!r}")
            outcome = fn(current, await self._clock(conn))
            if isinstance(outcome, RowUpdate):
                if (await conn.execute(self._guarded(current, outcome))).first() is None:
                    raise SagaConflictError(
                        f"saga {current.id} changed while the event was being delivered; try again"
                    )
                if outcome.deadline is DeadlineChange.AFTER:
                    await self._wake(conn)
                return current, True
            # A refusal touches the history only, appended (or one entry replaced) in SQL: a
            # worker holding the saga writes its whole context and appends its own entries,
            # so neither side loses the other's writes. updated_at is left alone too.
            history = current.step_history or []
            kept = sum(
                1 for e in history if e.get("phase") == h.EVENT and e.get("status") == h.REFUSED
            )
            if kept < refusals_kept:
                value = self._history_append([outcome])
            else:
                value = self._refusal_counted(history, outcome, refusals_kept)
            await conn.execute(update(t).where(t.c.id == current.id).values(step_history=value))
        return current, False

    def _refusal_counted(
        self, history: list[dict[str, Any]], entry: dict[str, Any], kept: int
    ) -> ColumnElement[Any]:
        """Count a refusal beyond the ``kept`` recorded ones in the history's single
        ``REFUSALS_UNRECORDED`` entry (added by the first such refusal)."""
        for i in range(len(history) - 1, -1, -1):
            old = history[i]
            if old.get("phase") == h.EVENT and old.get("status") == h.REFUSALS_UNRECORDED:
                return self._history_replace(i, h.refusals_counted(old, entry, kept))
        return self._history_append([h.refusals_counted(None, entry, kept)])
