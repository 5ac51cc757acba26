"""The SQL store, shared by PostgreSQL and SQLite; dialect differences are small hooks
overridden in ``postgres.py`` and ``sqlite.py``. SQLAlchemy Core only (no ORM on the hot path)."""

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
    func,
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

from saga_core.errors import (
    ActiveSagaAlreadyExistsError,
    SagaConflictError,
    SagaNotFoundError,
    SagaStoreError,
)
from saga_core.machine import ACTIVE_STATUSES
from saga_core.state import SagaWorker
from saga_core.store.base import (
    REFUSALS_UNRECORDED,
    REFUSED,
    Checkpoint,
    DeadlineChange,
    DeliveryFn,
    LeaseChange,
    LockedFn,
    RowUpdate,
    SagaFilter,
    SagaRow,
    SagaStore,
    WorkerRow,
)

CLAIMABLE = ("RUNNING", "SUSPENDED", "COMPENSATING")
ACTIVE = tuple(sorted(s.value for s in ACTIVE_STATUSES))
WORKERS: Table = SagaWorker.__table__  # type: ignore[assignment]


class SqlSagaStore(SagaStore):
    """Common SQLAlchemy Core implementation."""

    def __init__(self, engine: AsyncEngine, table: Table, *, lease: timedelta) -> None:
        self.engine = engine
        self.table = table
        self.table_name = table.name
        self.lease = lease
        self.dialect = engine.dialect.name
        t = table
        self._cols_no_history = [c for c in t.c if c.name != "step_history"]

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

    # --- helpers --------------------------------------------------------------------------

    def _statement_now(self) -> ColumnElement[datetime]:
        """The database clock when the statement runs, even late in a long transaction
        (PostgreSQL's ``now()`` is the transaction's start)."""
        return self._now()

    def _statement_now_plus(self, delta: timedelta) -> ColumnElement[datetime]:
        return self._now_plus(delta)

    def _values(self, upd: RowUpdate, *, statement_clock: bool = False) -> dict[str, Any]:
        t = self.table
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
            v["last_error"] = upd.last_error
        if upd.history:
            v["step_history"] = self._history_append(upd.history)
        if upd.deadline is DeadlineChange.CLEAR:
            v["deadline_at"] = null()
        elif upd.deadline is DeadlineChange.AFTER:
            v["deadline_at"] = now_plus(upd.delay)
        elif upd.deadline is DeadlineChange.LEASE:
            v["deadline_at"] = now_plus(self.lease)
        if upd.lease is LeaseChange.RELEASE:
            v["lease_owner"] = null()
        if upd.finished:
            v["finished_at"] = clock
        if upd.new_token is not None:
            v["step_execution_token"] = upd.new_token
        del t
        return v

    def _where(self, flt: SagaFilter) -> list[ColumnElement[bool]]:
        t = self.table.c
        conds: list[ColumnElement[bool]] = []
        if flt.statuses:
            conds.append(t.status.in_(list(flt.statuses)))
        if flt.saga_names:
            conds.append(t.saga_name.in_(list(flt.saga_names)))
        if flt.aggregation_id is not None:
            conds.append(t.aggregation_id == flt.aggregation_id)
        if flt.created_after is not None:
            conds.append(t.created_at >= flt.created_after)
        if flt.created_before is not None:
            conds.append(t.created_at < flt.created_before)
        if flt.updated_after is not None:
            conds.append(t.updated_at >= flt.updated_after)
        if flt.ids is not None:
            conds.append(t.id.in_(list(flt.ids)))
        if flt.finished_before is not None:
            conds.append(t.finished_at.is_not(None))
            conds.append(t.finished_at < flt.finished_before)
        if flt.definition_version is not None:
            conds.append(t.definition_version == flt.definition_version)
        return conds

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
            t.c.status.in_(CLAIMABLE),
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
            suspect = and_(t.c.lease_owner.is_not(None), t.c.recovery_count >= 1)
            due = due.where(suspect if suspects else not_(suspect))
        due = self._claim_subquery(due.order_by(t.c.deadline_at).limit(limit))
        stmt = (
            update(t)
            .where(t.c.id.in_(due.scalar_subquery()))
            .values(
                status=case((t.c.status == "SUSPENDED", literal("RUNNING")), else_=t.c.status),
                step_execution_token=self._new_token_sql(),
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

    async def saga_checkpoint(
        self, checkpoints: Sequence[Checkpoint]
    ) -> list[datetime | bool | None]:
        if not checkpoints:
            return []
        results: list[datetime | bool | None] = []
        async with self._write_lock(), self.engine.begin() as conn:
            for cp in checkpoints:
                row = (await conn.execute(self._checkpoint_stmt(cp))).first()
                results.append(False if row is None else row[0])
        return results

    def _checkpoint_stmt(self, cp: Checkpoint, *, statement_clock: bool = False) -> Any:
        """The fenced UPDATE of one checkpoint, returning the row's deadline."""
        t = self.table
        return (
            update(t)
            .where(t.c.id == cp.saga_id, t.c.step_execution_token == cp.token)
            .values(**self._values(cp.update, statement_clock=statement_clock))
            .returning(t.c.deadline_at)
        )

    async def saga_checkpoint_in(
        self, session: AsyncSession, checkpoint: Checkpoint
    ) -> datetime | bool | None:
        # The statement of saga_checkpoint, on the session's connection (both backends: the
        # PostgreSQL fast path has connections of its own).
        stmt = self._checkpoint_stmt(checkpoint, statement_clock=True)
        row = (await session.execute(stmt)).first()
        return False if row is None else row[0]

    async def saga_renew_lease(self, saga_id: uuid.UUID, token: uuid.UUID) -> datetime | None:
        t = self.table
        stmt = (
            update(t)
            # Only a lease still held: the keeper's renewal may race the run's own last
            # checkpoint (which keeps the token but releases the lease), and must not put a
            # lease back on a finished, suspended or released saga.
            .where(
                t.c.id == saga_id,
                t.c.step_execution_token == token,
                t.c.lease_owner.is_not(None),
            )
            .values(deadline_at=self._now_plus(self.lease), updated_at=self._now())
            .returning(t.c.deadline_at)
        )
        async with self._write_lock(), self.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else row[0]

    async def saga_release(
        self, saga_id: uuid.UUID, token: uuid.UUID, note: dict[str, Any] | None
    ) -> bool:
        upd = RowUpdate(
            deadline=DeadlineChange.AFTER,
            lease=LeaseChange.RELEASE,
            history=[note] if note else [],
        )
        (res,) = await self.saga_checkpoint([Checkpoint(saga_id, token, upd)])
        return res is not False

    async def saga_update_locked(self, saga_id: uuid.UUID, fn: LockedFn) -> tuple[SagaRow, bool]:
        t = self.table
        async with self._write_lock(), self.engine.begin() as conn:
            sel = self._lock_row(select(t).where(t.c.id == saga_id))
            row = (await conn.execute(sel)).mappings().first()
            if row is None:
                raise SagaNotFoundError(f"no saga with id {saga_id}", saga_id)
            now = (await conn.execute(select(self._now()))).scalar_one()
            if isinstance(now, str):  # SQLite hands back text for a bare expression
                now = datetime.fromisoformat(now)
            current = SagaRow.from_mapping(row)
            upd = fn(current, now)
            if upd is None:
                return current, False
            # The row lock makes the guard redundant on PostgreSQL; on SQLite, where another
            # process may write between the read and the update, it makes the write refuse
            # to overwrite a checkpoint it has not seen.
            stmt = (
                update(t)
                .where(
                    t.c.id == saga_id,
                    t.c.step_execution_token == current.step_execution_token,
                    t.c.updated_at == current.updated_at,
                )
                .values(**self._values(upd))
                .returning(t)
            )
            new = (await conn.execute(stmt)).mappings().first()
            if new is None:
                raise SagaConflictError(
                    f"saga {saga_id} changed while the action was being applied; try again"
                )
            if upd.deadline is DeadlineChange.AFTER and upd.delay <= timedelta(0):
                await self._wake(conn)
        return SagaRow.from_mapping(new), True

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
                sel = select(t).where(t.c.id == saga_id)
            else:
                # At most one active saga per aggregation id (a unique partial index).
                sel = select(t).where(t.c.aggregation_id == aggregation_id, t.c.status.in_(ACTIVE))
            row = (await conn.execute(self._lock_row(sel))).mappings().first()
            if row is None and saga_id is None:
                newest = (
                    select(t)
                    .where(t.c.aggregation_id == aggregation_id)
                    .order_by(t.c.created_at.desc(), t.c.id.desc())
                    .limit(1)
                )
                row = (await conn.execute(self._lock_row(newest))).mappings().first()
            if row is None:
                if saga_id is not None:
                    raise SagaNotFoundError(f"no saga with id {saga_id}", saga_id)
                raise SagaNotFoundError(f"no saga with aggregation_id {aggregation_id!r}")
            current = SagaRow.from_mapping(row)
            outcome = fn(current)
            if isinstance(outcome, RowUpdate):
                stmt = (
                    update(t)
                    .where(
                        t.c.id == current.id,
                        t.c.step_execution_token == current.step_execution_token,
                        t.c.updated_at == current.updated_at,
                    )
                    .values(**self._values(outcome))
                    .returning(t.c.id)
                )
                if (await conn.execute(stmt)).first() is None:
                    raise SagaConflictError(
                        f"saga {current.id} changed while the event was being delivered; try again"
                    )
                await self._wake(conn)
                return current, True
            # A refusal touches the history only, appended (or one entry replaced) in SQL: a
            # worker holding the saga writes its whole context and appends its own entries,
            # so neither side loses the other's writes. updated_at is left alone too.
            history = current.step_history or []
            kept = sum(
                1 for e in history if e.get("phase") == "event" and e.get("status") == REFUSED
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
            if old.get("phase") == "event" and old.get("status") == REFUSALS_UNRECORDED:
                summary = {
                    **old,
                    "count": int(old.get("count") or 0) + 1,
                    "last_at": entry.get("at"),
                    "last_reason": entry.get("reason"),
                }
                return self._history_replace(i, summary)
        summary = {
            "at": entry.get("at"),
            "phase": "event",
            "step_id": entry.get("step_id"),
            "status": REFUSALS_UNRECORDED,
            "attempt": 0,
            "count": 1,
            "reason": f"over {kept} refused deliveries: later ones are only counted here",
            "last_at": entry.get("at"),
            "last_reason": entry.get("reason"),
        }
        return self._history_append([summary])

    # --- reads -------------------------------------------------------------------------------

    async def saga_get(self, saga_id: uuid.UUID, *, with_history: bool = True) -> SagaRow | None:
        t = self.table
        cols = list(t.c) if with_history else self._cols_no_history
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(*cols).where(t.c.id == saga_id))).mappings().first()
        return None if row is None else SagaRow.from_mapping(row)

    async def saga_find_by_prefix(self, prefix: str, *, limit: int = 2) -> list[uuid.UUID]:
        clean = prefix.strip().lower().replace("-", "")
        if not clean or any(ch not in "0123456789abcdef" for ch in clean) or len(clean) > 32:
            return []
        if len(clean) == 32:
            u = uuid.UUID(clean)
            return [u] if await self.saga_get(u, with_history=False) is not None else []
        low = uuid.UUID(clean.ljust(32, "0"))
        high = uuid.UUID(clean.ljust(32, "f"))
        t = self.table
        stmt = select(t.c.id).where(t.c.id >= low, t.c.id <= high).order_by(t.c.id).limit(limit)
        async with self.engine.connect() as conn:
            return list((await conn.execute(stmt)).scalars().all())

    async def saga_list(
        self, flt: SagaFilter, *, limit: int = 100, offset: int = 0, oldest_first: bool = False
    ) -> list[SagaRow]:
        t = self.table
        order = (
            (t.c.created_at.asc(), t.c.id.asc())
            if oldest_first
            else (t.c.created_at.desc(), t.c.id.desc())
        )
        stmt = select(*self._cols_no_history).where(*self._where(flt)).order_by(*order)
        stmt = stmt.limit(limit).offset(offset)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [SagaRow.from_mapping(r) for r in rows]

    async def saga_count(self, flt: SagaFilter) -> int:
        t = self.table
        stmt = select(func.count()).select_from(t).where(*self._where(flt))
        async with self.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def saga_stats(self) -> list[tuple[str, str, int]]:
        t = self.table
        stmt = (
            select(t.c.saga_name, t.c.status, func.count())
            .group_by(t.c.saga_name, t.c.status)
            .order_by(t.c.saga_name, t.c.status)
        )
        async with self.engine.connect() as conn:
            return [(r[0], r[1], int(r[2])) for r in (await conn.execute(stmt)).all()]

    async def saga_version_summary(
        self, statuses: Sequence[str]
    ) -> list[tuple[str, int, int, datetime]]:
        t = self.table
        created = func.min(t.c.created_at)
        stmt = (
            select(t.c.saga_name, t.c.definition_version, func.count(), created)
            .where(t.c.status.in_(list(statuses)))
            .group_by(t.c.saga_name, t.c.definition_version)
            .order_by(t.c.saga_name, t.c.definition_version)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        out: list[tuple[str, int, int, datetime]] = []
        for name, version, count, oldest in rows:
            if isinstance(oldest, str):  # SQLite: an aggregate loses the column type
                oldest = datetime.fromisoformat(oldest)
            if oldest.tzinfo is None:
                from datetime import UTC

                oldest = oldest.replace(tzinfo=UTC)
            out.append((str(name), int(version), int(count), oldest))
        return out

    async def saga_due_summary(self) -> tuple[int, datetime | None]:
        t = self.table
        stmt = select(func.count(), func.min(t.c.deadline_at)).where(
            t.c.status.in_(CLAIMABLE), t.c.deadline_at.is_not(None), t.c.deadline_at <= self._now()
        )
        async with self.engine.connect() as conn:
            count, oldest = (await conn.execute(stmt)).one()
        if isinstance(oldest, str):
            oldest = datetime.fromisoformat(oldest)
        if oldest is not None and oldest.tzinfo is None:
            from datetime import UTC

            oldest = oldest.replace(tzinfo=UTC)
        return int(count), oldest

    async def saga_finished_since(self, since: datetime) -> list[tuple[str, str, int]]:
        t = self.table
        stmt = (
            select(t.c.saga_name, t.c.status, func.count())
            .where(t.c.finished_at.is_not(None), t.c.finished_at >= since)
            .group_by(t.c.saga_name, t.c.status)
        )
        async with self.engine.connect() as conn:
            return [(r[0], r[1], int(r[2])) for r in (await conn.execute(stmt)).all()]

    async def db_now(self) -> datetime:
        async with self.engine.connect() as conn:
            now = (await conn.execute(select(self._now()))).scalar_one()
        if isinstance(now, str):
            now = datetime.fromisoformat(now)
        return now

    # --- worker registry --------------------------------------------------------------------

    async def worker_heartbeat(self, worker: dict[str, Any]) -> None:
        w = WORKERS
        values = {**worker, "heartbeat_at": self._now(), "stopped_at": null()}
        async with self._write_lock(), self.engine.begin() as conn:
            res = await conn.execute(update(w).where(w.c.id == worker["id"]).values(**values))
            if res.rowcount == 0:
                await conn.execute(insert(w).values(**values, started_at=self._now()))

    async def worker_stopped(self, worker_id: str) -> None:
        w = WORKERS
        async with self._write_lock(), self.engine.begin() as conn:
            await conn.execute(
                update(w).where(w.c.id == worker_id).values(stopped_at=self._now(), in_flight=0)
            )

    async def worker_forget(self, worker_id: str) -> None:
        w = WORKERS
        async with self._write_lock(), self.engine.begin() as conn:
            await conn.execute(delete(w).where(w.c.id == worker_id))

    async def worker_list(self) -> list[WorkerRow]:
        w = WORKERS
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(w).order_by(w.c.started_at.desc()))).mappings().all()
        return [WorkerRow.from_mapping(r) for r in rows]

    async def worker_purge(self, older_than: datetime) -> int:
        w = WORKERS
        async with self._write_lock(), self.engine.begin() as conn:
            res = await conn.execute(delete(w).where(w.c.heartbeat_at < older_than))
        return int(res.rowcount)

    # --- schema -------------------------------------------------------------------------------

    async def schema_upgrade(self) -> list[str]:
        from saga_core.schema import upgrade_tables

        try:
            return await upgrade_tables(self.engine, [self.table, WORKERS])
        except SagaStoreError:
            raise

    async def schema_status(self) -> dict[str, Any]:
        from saga_core.schema import tables_status

        return await tables_status(self.engine, [self.table, WORKERS])


__all__ = ["CLAIMABLE", "WORKERS", "SqlSagaStore"]
