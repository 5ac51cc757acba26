"""The in-memory store's reads, worker registry and schema no-ops (what ``sql_reads`` is to
the SQL store)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from saga_core.store.base import SagaFilter, SagaRow, WorkerRow
from saga_core.testing.memdata import ACTIVE, SEQ, MemoryDatabase, StoreCrashed, is_due, to_saga_row

__all__ = ["MemoryReads"]

_WORKER_DEFAULTS: dict[str, Any] = {
    "in_flight": 0,
    "concurrency": 0,
    "saga_names": [],
    "info": {},
    "saga_versions": {},
}


def _matches(row: dict[str, Any], flt: SagaFilter) -> bool:
    if flt.statuses and row["status"] not in flt.statuses:
        return False
    if flt.saga_names and row["saga_name"] not in flt.saga_names:
        return False
    if flt.aggregation_id is not None and row["aggregation_id"] != flt.aggregation_id:
        return False
    if flt.created_after is not None and row["created_at"] < flt.created_after:
        return False
    if flt.created_before is not None and not row["created_at"] < flt.created_before:
        return False
    if flt.updated_after is not None and row["updated_at"] < flt.updated_after:
        return False
    if flt.ids is not None and row["id"] not in flt.ids:
        return False
    if flt.finished_before is not None and (
        row["finished_at"] is None or not row["finished_at"] < flt.finished_before
    ):
        return False
    return flt.definition_version is None or row["definition_version"] == flt.definition_version


class MemoryReads:
    """Reads, registry and schema of one in-memory saga table."""

    database: MemoryDatabase
    table_name: str
    crashed: bool

    # --- a call is one transaction ----------------------------------------------------------

    async def _begin(self) -> None:
        """Every call yields to the loop once (a database call is a suspension point: other
        tasks run meanwhile), then fails if this store's process crashed."""
        await asyncio.sleep(0)
        if self.crashed:
            raise StoreCrashed(f"the process of store {self.table_name!r} has crashed")

    @property
    def _rows(self) -> dict[uuid.UUID, dict[str, Any]]:
        return self.database.tables.setdefault(self.table_name, {})

    def _ordered(self, *, oldest_first: bool = True) -> list[dict[str, Any]]:
        rows = sorted(self._rows.values(), key=lambda r: (r["created_at"], r[SEQ]))
        return rows if oldest_first else rows[::-1]

    # --- sagas ---------------------------------------------------------------------------------

    async def saga_get(self, saga_id: uuid.UUID, *, with_history: bool = True) -> SagaRow | None:
        await self._begin()
        row = self._rows.get(saga_id)
        return None if row is None else to_saga_row(row, with_history=with_history)

    async def saga_inbox_pending(self, saga_id: uuid.UUID) -> bool:
        await self._begin()
        row = self._rows.get(saga_id)
        return row is not None and row["inbox"] is not None

    async def saga_find_by_prefix(self, prefix: str, *, limit: int = 2) -> list[uuid.UUID]:
        await self._begin()
        clean = prefix.strip().lower().replace("-", "")
        if not clean or any(ch not in "0123456789abcdef" for ch in clean) or len(clean) > 32:
            return []
        found = sorted(i for i in self._rows if i.hex.startswith(clean))
        return found[:limit]

    async def saga_list(
        self, flt: SagaFilter, *, limit: int = 100, offset: int = 0, oldest_first: bool = False
    ) -> list[SagaRow]:
        await self._begin()
        rows = [r for r in self._ordered(oldest_first=oldest_first) if _matches(r, flt)]
        return [to_saga_row(r, with_history=False) for r in rows[offset : offset + limit]]

    async def saga_count(self, flt: SagaFilter) -> int:
        await self._begin()
        return sum(1 for r in self._rows.values() if _matches(r, flt))

    async def saga_stats(self) -> list[tuple[str, str, int]]:
        await self._begin()
        return self._grouped(self._rows.values())

    @staticmethod
    def _grouped(rows: Any) -> list[tuple[str, str, int]]:
        counts: dict[tuple[str, str], int] = {}
        for r in rows:
            key = (r["saga_name"], r["status"])
            counts[key] = counts.get(key, 0) + 1
        return [(n, s, c) for (n, s), c in sorted(counts.items())]

    async def saga_version_summary(
        self, statuses: Sequence[str]
    ) -> list[tuple[str, int, int, datetime]]:
        await self._begin()
        groups: dict[tuple[str, int], tuple[int, datetime]] = {}
        for r in self._rows.values():
            if r["status"] not in statuses:
                continue
            key = (r["saga_name"], r["definition_version"])
            count, oldest = groups.get(key, (0, r["created_at"]))
            groups[key] = (count + 1, min(oldest, r["created_at"]))
        return [(n, v, c, at) for (n, v), (c, at) in sorted(groups.items())]

    async def saga_due_summary(self) -> tuple[int, datetime | None]:
        await self._begin()
        now = self.database.now()
        due = [r["deadline_at"] for r in self._rows.values() if is_due(r, now)]
        return len(due), min(due, default=None)

    async def saga_backlog(self) -> tuple[int, datetime | None, int, int, datetime]:
        """(claimable sagas due now, the oldest due time among them, FAILED sagas, SUSPENDED
        sagas, the database clock), as the SQL store reports them for monitoring."""
        await self._begin()
        now = self.database.now()
        active = [r for r in self._rows.values() if r["status"] in ACTIVE]
        due = [r["deadline_at"] for r in active if is_due(r, now)]
        failed = sum(1 for r in active if r["status"] == "FAILED")
        suspended = sum(1 for r in active if r["status"] == "SUSPENDED")
        return len(due), min(due, default=None), failed, suspended, now

    async def saga_finished_since(self, since: datetime) -> list[tuple[str, str, int]]:
        await self._begin()
        rows = (
            r
            for r in self._rows.values()
            if r["finished_at"] is not None and r["finished_at"] >= since
        )
        return self._grouped(rows)

    async def db_now(self) -> datetime:
        await self._begin()
        return self.database.now()

    # --- worker registry --------------------------------------------------------------------

    async def worker_heartbeat(self, worker: dict[str, Any]) -> None:
        await self._begin()
        now = self.database.now()
        old = self.database.workers.get(worker["id"])
        row = {**_WORKER_DEFAULTS, "started_at": now} if old is None else dict(old)
        row.update(worker, heartbeat_at=now, stopped_at=None)
        self.database.workers[worker["id"]] = row

    async def worker_stopped(self, worker_id: str) -> None:
        await self._begin()
        row = self.database.workers.get(worker_id)
        if row is not None:
            row.update(stopped_at=self.database.now(), in_flight=0)

    async def worker_forget(self, worker_id: str) -> None:
        await self._begin()
        self.database.workers.pop(worker_id, None)

    async def worker_list(self) -> list[WorkerRow]:
        await self._begin()
        rows = sorted(self.database.workers.values(), key=lambda w: w["started_at"], reverse=True)
        return [WorkerRow.from_mapping(dict(w)) for w in rows]

    # --- schema: nothing to create ------------------------------------------------------------

    async def schema_upgrade(self) -> list[str]:
        await self._begin()
        self.database.tables.setdefault(self.table_name, {})
        return []

    async def schema_status(self) -> dict[str, Any]:
        await self._begin()
        entry = {"exists": True, "up_to_date": True, "memory": True}
        return {
            "expected_version": None,
            "tables": {self.table_name: entry, "saga_workers": dict(entry)},
            "up_to_date": True,
        }
