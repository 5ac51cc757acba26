"""The SQL store's reads, worker registry and schema commands (SQLAlchemy Core), shared by
PostgreSQL and SQLite. The hot-path writes are in ``sql.py``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Table,
    and_,
    delete,
    func,
    insert,
    null,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from saga_core.machine import ACTIVE_STATUSES
from saga_core.rows import CLAIMABLE_STATUSES
from saga_core.schema import tables_status, upgrade_tables
from saga_core.state import SagaWorker
from saga_core.store.base import SagaFilter, SagaRow, WorkerRow

__all__ = ["WORKERS", "SqlReads"]

WORKERS: Table = SagaWorker.__table__  # type: ignore[assignment]
ACTIVE = tuple(sorted(s.value for s in ACTIVE_STATUSES))


def _aware(value: Any) -> datetime | None:
    """A timestamp from an aggregate (SQLite hands back naive text for those)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class SqlReads:
    """Reads, registry and schema of one saga table."""

    engine: AsyncEngine
    table: Table
    _cols_no_history: list[Column[Any]]

    def _now(self) -> ColumnElement[datetime]:
        raise NotImplementedError

    def _write_lock(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

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

    # --- sagas -----------------------------------------------------------------------------

    async def saga_get(self, saga_id: uuid.UUID, *, with_history: bool = True) -> SagaRow | None:
        t = self.table
        cols = list(t.c) if with_history else self._cols_no_history
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(*cols).where(t.c.id == saga_id))).mappings().first()
        return None if row is None else SagaRow.from_mapping(row)

    async def saga_inbox_pending(self, saga_id: uuid.UUID) -> bool:
        t = self.table
        stmt = select(t.c.inbox.is_not(None)).where(t.c.id == saga_id)
        async with self.engine.connect() as conn:
            return bool((await conn.execute(stmt)).scalar())

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
            when = _aware(oldest)
            assert when is not None
            out.append((str(name), int(version), int(count), when))
        return out

    async def saga_due_summary(self) -> tuple[int, datetime | None]:
        t = self.table
        stmt = select(func.count(), func.min(t.c.deadline_at)).where(
            t.c.status.in_(CLAIMABLE_STATUSES),
            t.c.deadline_at.is_not(None),
            t.c.deadline_at <= self._now(),
        )
        async with self.engine.connect() as conn:
            count, oldest = (await conn.execute(stmt)).one()
        return int(count), _aware(oldest)

    async def saga_backlog(self) -> tuple[int, datetime | None, int, int, datetime]:
        """(claimable sagas due now, the oldest due time among them, FAILED sagas, SUSPENDED
        sagas, the database clock) for monitoring, in one statement that reads only active
        rows (through the partial index of active sagas), however many finished ones the
        table holds."""
        t = self.table
        now = self._now()
        due = and_(
            t.c.status.in_(CLAIMABLE_STATUSES), t.c.deadline_at.is_not(None), t.c.deadline_at <= now
        )
        stmt = select(
            func.count().filter(due),
            func.min(t.c.deadline_at).filter(due),
            func.count().filter(t.c.status == "FAILED"),
            func.count().filter(t.c.status == "SUSPENDED"),
            now,
        ).where(t.c.status.in_(ACTIVE))
        async with self.engine.connect() as conn:
            n_due, oldest, failed, suspended, db_now = (await conn.execute(stmt)).one()
        clock = _aware(db_now)
        assert clock is not None
        return int(n_due), _aware(oldest), int(failed), int(suspended), clock

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
        when = _aware(now)
        assert when is not None
        return when

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

    # --- schema -------------------------------------------------------------------------------

    async def schema_upgrade(self) -> list[str]:
        return await upgrade_tables(self.engine, [self.table, WORKERS])

    async def schema_status(self) -> dict[str, Any]:
        return await tables_status(self.engine, [self.table, WORKERS])
