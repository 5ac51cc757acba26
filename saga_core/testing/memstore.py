"""``MemorySagaStore``: the whole store seam (``SagaStore``) on plain dicts, with no SQL.

It keeps every promise the SQL stores keep (the store conformance suite runs on all three):
claims take a lease and rotate the fencing token, checkpoints apply only under the token
they carry and report the lease left, a checkpoint that keeps the lease extends it once less
than half is left, locked updates and deliveries decide on the row and write in one step, and
refusals beyond a bound are only counted. Each call is one transaction: calls never
interleave, and each yields to the event loop once, as a database round trip would.

Several stores may share one :class:`MemoryDatabase`, like several processes sharing one
database: :meth:`MemorySagaStore.sibling` gives another, and :meth:`MemorySagaStore.crash`
makes one behave like a process that vanished (every later call fails; nothing it sends
arrives), which is how ``saga_core.testing`` simulates a worker crash.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from saga_core import history as h
from saga_core.errors import ActiveSagaAlreadyExistsError, SagaError, SagaNotFoundError
from saga_core.lease import LeaseLost
from saga_core.rows import CLAIMABLE_STATUSES
from saga_core.store.base import (
    Applied,
    Checkpoint,
    DeadlineChange,
    DeliveryFn,
    LeaseChange,
    LockedFn,
    RowUpdate,
    SagaRow,
    SagaStore,
)
from saga_core.testing.memdata import (
    ACTIVE,
    SEQ,
    Clock,
    MemoryDatabase,
    apply_update,
    is_due,
    is_suspect,
    json_copy,
    new_row,
    to_saga_row,
)
from saga_core.testing.memreads import MemoryReads

__all__ = ["MemorySagaStore"]


class MemorySagaStore(MemoryReads, SagaStore):
    """The store seam in memory, for tests: no database, no SQL.

    Args:
        lease: the lease a renewal (and a checkpoint that extends it) gives.
        table_name: the saga table this store reads and writes.
        clock: the database clock (aware datetimes); the wall clock by default.
            ``saga_core.testing``'s kit passes its virtual clock.
        database: the data to share with other stores (a new one by default).
    """

    dialect = "memory"

    def __init__(
        self,
        *,
        lease: timedelta = timedelta(minutes=5),
        table_name: str = "saga_state",
        clock: Clock | None = None,
        database: MemoryDatabase | None = None,
    ) -> None:
        if database is not None and clock is not None:
            raise SagaError("give the clock to the MemoryDatabase the stores share")
        self.database = database or MemoryDatabase(clock)
        self.table_name = table_name
        self.lease = lease
        self.crashed = False
        """Set by :meth:`crash`: every call raises ``StoreCrashed``."""

    def sibling(self, *, table_name: str | None = None) -> MemorySagaStore:
        """Another store on the same data (another process, another connection pool)."""
        return MemorySagaStore(
            lease=self.lease, table_name=table_name or self.table_name, database=self.database
        )

    def crash(self) -> None:
        """From now on this store's process is gone: every call raises ``StoreCrashed`` and
        writes nothing. Other stores on the same database are unaffected."""
        self.crashed = True

    # --- transactions ---------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[datetime]:
        """Hold the database for one write (yields the database clock): no other call of
        any store on this database runs until it ends."""
        await self._begin()
        async with self.database.lock:
            if self.crashed:  # died while waiting for the lock
                await self._begin()
            yield self.database.now()

    def _row(self, saga_id: uuid.UUID) -> dict[str, Any]:
        row = self._rows.get(saga_id)
        if row is None:
            raise SagaNotFoundError(f"no saga with id {saga_id}", saga_id)
        return row

    def _fenced(
        self, cp: Checkpoint, now: datetime, row: dict[str, Any] | None
    ) -> tuple[dict[str, Any], Applied] | None:
        """The row ``cp`` would leave of ``row`` and what it reports, or None when fenced
        out."""
        if row is None or row["lease_token"] != cp.token:
            return None
        new = dict(row)
        apply_update(new, cp.update, now, self.lease)
        left = None
        if new["lease_owner"] is not None and new["deadline_at"] is not None:
            left = (new["deadline_at"] - now).total_seconds()
        return new, Applied(lease_left=left, inbox=new["inbox"] is not None)

    def fence_holds(self, cp: Checkpoint) -> bool:
        """Whether ``cp``'s lease token is still the saga's (inside :meth:`transaction`)."""
        row = self._rows.get(cp.saga_id)
        return row is not None and row["lease_token"] == cp.token

    def checkpoint_now(self, cp: Checkpoint, now: datetime) -> Applied | None:
        """Apply one fenced checkpoint inside :meth:`transaction` (a transactional step's
        commit, in ``saga_core.testing``)."""
        done = self._fenced(cp, now, self._rows.get(cp.saga_id))
        if done is None:
            return None
        self._rows[cp.saga_id] = done[0]
        return done[1]

    # --- sagas: writes ----------------------------------------------------------------------

    async def saga_insert(
        self,
        values: dict[str, Any],
        *,
        session: AsyncSession | None = None,
        due_in: timedelta | None = None,
    ) -> SagaRow | None:
        if session is not None:
            raise SagaError(
                "the in-memory store cannot join a SQLAlchemy session: start the saga "
                "without session="
            )
        async with self.transaction() as now:
            rows = self._rows
            key = values.get("idempotency_key")
            if key is not None:
                for old in rows.values():
                    if old["idempotency_key"] == key:
                        return to_saga_row(old, with_history=False)
            row = new_row(values, now, due_in)
            row[SEQ] = self.database.next_seq()
            if row["id"] in rows:
                raise ValueError(f"a saga with id {row['id']} exists (PRIMARY KEY)")
            if row["status"] in ACTIVE and any(
                r["aggregation_id"] == row["aggregation_id"] and r["status"] in ACTIVE
                for r in rows.values()
            ):
                raise ActiveSagaAlreadyExistsError(row["aggregation_id"])
            rows[row["id"]] = row
        return None

    async def saga_purge(
        self, statuses: Sequence[str], finished_before: datetime, batch: int
    ) -> int:
        if batch <= 0 or not statuses:
            return 0
        async with self.transaction():
            victims = sorted(
                (
                    r
                    for r in self._rows.values()
                    if r["status"] in statuses
                    and r["finished_at"] is not None
                    and r["finished_at"] < finished_before
                ),
                key=lambda r: (r["finished_at"], r[SEQ]),
            )[:batch]
            for r in victims:
                del self._rows[r["id"]]
        return len(victims)

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
        async with self.transaction() as now:
            pairs = None if versions is None else set(versions)
            due = [
                r
                for r in self._rows.values()
                if is_due(r, now)
                and (saga_names is None or r["saga_name"] in saga_names)
                and (saga_ids is None or r["id"] in saga_ids)
                and (pairs is None or (r["saga_name"], r["definition_version"]) in pairs)
                and (suspects is None or is_suspect(r) == suspects)
            ]
            due.sort(key=lambda r: (r["deadline_at"], r[SEQ]))
            out = []
            for r in due[:limit]:
                taken = 1 if r["lease_owner"] is not None else 0
                r.update(
                    status="RUNNING" if r["status"] == "SUSPENDED" else r["status"],
                    lease_token=uuid.uuid4(),
                    lease_owner=owner,
                    deadline_at=now + lease,
                    takeover_count=r["takeover_count"] + taken,
                    recovery_count=r["recovery_count"] + taken,
                    updated_at=now,
                )
                out.append(to_saga_row(r, with_history=False))
        return out

    async def saga_unclaim(self, owner: str, keep: Sequence[uuid.UUID]) -> int:
        async with self.transaction() as now:
            released = 0
            for r in self._rows.values():
                if (
                    r["lease_owner"] == owner
                    and r["status"] in CLAIMABLE_STATUSES
                    and r["id"] not in keep
                ):
                    r.update(lease_owner=None, lease_token=uuid.uuid4(), deadline_at=now)
                    r["updated_at"] = now
                    released += 1
        return released

    async def saga_checkpoint(self, checkpoints: Sequence[Checkpoint]) -> list[Applied | None]:
        if not checkpoints:
            return []
        async with self.transaction() as now:
            # All or nothing: a checkpoint that cannot be written leaves the batch unwritten.
            staged: dict[uuid.UUID, dict[str, Any]] = {}
            results: list[Applied | None] = []
            for cp in checkpoints:
                base = staged.get(cp.saga_id) or self._rows.get(cp.saga_id)
                done = self._fenced(cp, now, base)
                if done is None:
                    results.append(None)
                    continue
                staged[cp.saga_id] = done[0]
                results.append(done[1])
            self._rows.update(staged)
        return results

    async def saga_checkpoint_in(
        self, session: AsyncSession, checkpoint: Checkpoint
    ) -> Applied | None:
        raise SagaError(
            "the in-memory store cannot write through a SQLAlchemy session; "
            "saga_core.testing commits transactional steps with MemorySagaStore.transaction()"
        )

    async def saga_renew_lease(self, saga_id: uuid.UUID, token: uuid.UUID) -> float | None:
        async with self.transaction() as now:
            row = self._rows.get(saga_id)
            if row is None or row["lease_token"] != token or row["lease_owner"] is None:
                return None
            row["deadline_at"] = now + self.lease  # updated_at untouched, as in SQL
            return self.lease.total_seconds()

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

    async def saga_update_locked(
        self,
        saga_id: uuid.UUID,
        fn: LockedFn,
        *,
        lease_token: uuid.UUID | None = None,
        tell_unapplied: bool = False,
    ) -> tuple[SagaRow, bool]:
        # In memory nothing is lost on the way: ``tell_unapplied`` has nothing to report.
        async with self.transaction() as now:
            row = self._row(saga_id)
            if lease_token is not None and row["lease_token"] != lease_token:
                raise LeaseLost()
            upd = fn(to_saga_row(row), now)
            if upd is None:
                return to_saga_row(row), False
            new = dict(row)
            apply_update(new, upd, now, self.lease)
            self._rows[saga_id] = new
            return to_saga_row(new), True

    async def saga_deliver(
        self,
        fn: DeliveryFn,
        *,
        saga_id: uuid.UUID | None = None,
        aggregation_id: str | None = None,
        refusals_kept: int = 100,
    ) -> tuple[SagaRow, bool]:
        async with self.transaction() as now:
            row = self._deliver_to(saga_id, aggregation_id)
            current = to_saga_row(row)
            outcome = fn(current, now)
            if isinstance(outcome, RowUpdate):
                new = dict(row)
                apply_update(new, outcome, now, self.lease)
                self._rows[row["id"]] = new
                return current, True
            # A refusal touches the history only (updated_at included, as in SQL).
            history = list(row["step_history"])
            kept = sum(
                1 for e in history if e.get("phase") == h.EVENT and e.get("status") == h.REFUSED
            )
            if kept < refusals_kept:
                history.append(outcome)
            else:
                self._count_refusal(history, outcome, refusals_kept)
            row["step_history"] = json_copy(history)
        return current, False

    def _deliver_to(self, saga_id: uuid.UUID | None, aggregation_id: str | None) -> dict[str, Any]:
        if saga_id is not None:
            return self._row(saga_id)
        same = [r for r in self._rows.values() if r["aggregation_id"] == aggregation_id]
        active = [r for r in same if r["status"] in ACTIVE]
        if active:
            return active[0]
        if not same:
            raise SagaNotFoundError(f"no saga with aggregation_id {aggregation_id!r}")
        return max(same, key=lambda r: (r["created_at"], r[SEQ]))

    @staticmethod
    def _count_refusal(history: list[dict[str, Any]], entry: dict[str, Any], kept: int) -> None:
        """Count a refusal beyond the ``kept`` recorded ones in the history's single
        ``REFUSALS_UNRECORDED`` entry (added by the first such refusal)."""
        for i in range(len(history) - 1, -1, -1):
            old = history[i]
            if old.get("phase") == h.EVENT and old.get("status") == h.REFUSALS_UNRECORDED:
                history[i] = h.refusals_counted(old, entry, kept)
                return
        history.append(h.refusals_counted(None, entry, kept))
