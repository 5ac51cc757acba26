"""Operator queries and retention: what ``sagactl`` reads and purges, callable from
application code. :class:`SagaQueries` is the read side of ``SagaAdmin`` (which adds the
actions); every method here only reads, except :meth:`SagaQueries.purge`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from saga_core import machine as m
from saga_core import waits
from saga_core.context import check_event_name
from saga_core.engine import SagaEngine
from saga_core.errors import SagaInputError, SagaNotFoundError
from saga_core.filters import ListingReads, SagaListing, status_values
from saga_core.payload import check_text, json_object
from saga_core.snapshot import SagaAdminSnapshot, SagaSnapshot
from saga_core.state import SagaStateMixin
from saga_core.store import SagaFilter, SagaRow, WorkerRow
from saga_core.versioning import ORPHAN_STATUSES, OrphanGroup, find_orphans, live_workers

__all__ = ["DEFAULT_PURGE_BATCH", "SagaQueries", "status_values"]

M = TypeVar("M", bound=SagaStateMixin)

DEFAULT_PURGE_BATCH = 500
"""Rows deleted per statement (and transaction) by ``SagaAdmin.purge``."""


class SagaQueries(SagaListing, Generic[M]):
    """Read sagas, workers and definitions of one engine's table; purge finished sagas."""

    DEFAULT_PURGE_BATCH = DEFAULT_PURGE_BATCH
    """Rows deleted per statement (and transaction) by :meth:`purge` unless told."""

    def __init__(self, *, engine: SagaEngine[M]) -> None:
        self.engine = engine
        self.store = engine.store

    # --- reads ---------------------------------------------------------------------------

    async def get_saga(self, saga_id: uuid.UUID | str) -> SagaAdminSnapshot:
        """The saga with its context, per-step state and history. Raises SagaNotFoundError."""
        sid = await self.resolve_id(saga_id)
        row = await self.store.saga_get(sid)
        if row is None:
            raise SagaNotFoundError(f"no saga with id {saga_id}", saga_id)
        return SagaAdminSnapshot.from_row(row)

    async def resolve_id(self, saga_id: uuid.UUID | str) -> uuid.UUID:
        """A full id, from a UUID or an unambiguous prefix of one (as ``sagactl`` accepts)."""
        if isinstance(saga_id, uuid.UUID):
            return saga_id
        text = str(saga_id).strip()
        try:
            return uuid.UUID(text)
        except ValueError:
            pass
        matches = await self.store.saga_find_by_prefix(text, limit=2)
        if not matches:
            raise SagaNotFoundError(f"no saga id starts with {text!r}", text)
        if len(matches) > 1:
            raise SagaNotFoundError(
                f"id prefix {text!r} is ambiguous (matches {matches[0]}, {matches[1]}, ...); type more of it",
                text,
            )
        return matches[0]

    def _listing_reads(self) -> ListingReads:
        return self.store

    async def stats(self) -> list[tuple[str, str, int]]:
        """(saga_name, status, count) for every pair present."""
        return await self.store.saga_stats()

    async def due_summary(self) -> tuple[int, datetime | None]:
        """(sagas due now, the oldest due time among them)."""
        return await self.store.saga_due_summary()

    async def finished_since(self, since: datetime) -> list[tuple[str, str, int]]:
        return await self.store.saga_finished_since(since)

    async def workers(self) -> list[WorkerRow]:
        """The ``sagad`` worker registry (live and stale entries)."""
        return await self.store.worker_list()

    async def version_summary(
        self, status: m.SagaStatus | str | Sequence[m.SagaStatus | str] = ORPHAN_STATUSES
    ) -> list[tuple[str, int, int, datetime]]:
        """(saga_name, definition_version, count, oldest created_at) of the sagas in
        ``status`` (default: RUNNING, SUSPENDED, COMPENSATING)."""
        return await self.store.saga_version_summary(status_values(status) or [])

    async def orphans(self, *, stale_after: float = 30.0) -> list[OrphanGroup]:
        """Active sagas (RUNNING, SUSPENDED, COMPENSATING) whose (name, definition version)
        no live ``sagad`` worker runs, grouped by (name, version): they wait until a worker
        registering that version starts. A worker is live when not stopped and its heartbeat
        is at most ``stale_after`` seconds old (by the database clock)."""
        if isinstance(stale_after, bool) or not isinstance(stale_after, int | float):
            raise SagaInputError(f"stale_after must be a number of seconds, got {stale_after!r}")
        summary = await self.version_summary()
        if not summary:
            return []
        now = await self.store.db_now()
        live = live_workers(await self.store.worker_list(), now, float(stale_after))
        return find_orphans(summary, live, table=self.store.table_name)

    async def orphan_sagas(self, group: OrphanGroup, *, limit: int = 100) -> list[SagaSnapshot]:
        """The sagas of one group of :meth:`orphans` (as they are now), oldest first."""
        return await self.list_sagas(
            status=list(ORPHAN_STATUSES),
            saga_name=group.saga_name,
            definition_version=group.definition_version,
            limit=limit,
            oldest_first=True,
        )

    async def db_now(self) -> datetime:
        return await self.store.db_now()

    async def preview_delivery(
        self,
        *,
        saga_id: uuid.UUID | str | None = None,
        token: uuid.UUID | str | None = None,
        aggregation_id: str | None = None,
        event_name: str | None = None,
        event: dict[str, Any] | None = None,
    ) -> waits.Delivery:
        """What ``SagaOrchestrator.notify`` would do now with the same arguments, without
        writing anything (no event stored, no refusal recorded): ``accepted`` (and whether
        the event would wait in the inbox, ``queued``), or the ``reason`` it would be
        refused for, the saga concerned and its status.

        By ``saga_id`` and ``token``, or by correlation (``aggregation_id`` and
        ``event_name``: the active saga of that aggregation id, else its newest). A plain
        read: a delivery made later decides again on the locked row.

        Raises:
            SagaInputError: not exactly one of the two forms; a malformed token or event name.
            SagaNotFoundError: no such saga; no saga ever had that aggregation id.
        """
        token_form = (saga_id is not None, token is not None)
        name_form = (aggregation_id is not None, event_name is not None)
        if sorted([token_form, name_form]) != [(False, False), (True, True)]:
            raise SagaInputError(
                "preview_delivery needs saga_id and token, or aggregation_id and event_name"
            )
        # The arguments notify checks, checked alike (a preview never says "accepted" for
        # what notify refuses as bad input).
        ev = None if event is None else json_object(event, "event", self.engine.max_payload_bytes)
        row: SagaRow | None
        if saga_id is not None:
            if not isinstance(token, uuid.UUID):
                try:
                    token = uuid.UUID(str(token))
                except ValueError:
                    raise SagaInputError(f"token must be a UUID, got {token!r}") from None
            row = await self.store.saga_get(await self.resolve_id(saga_id), with_history=False)
            if row is None:
                raise SagaNotFoundError(f"no saga with id {saga_id}", saga_id)
        else:
            check_text(aggregation_id, "aggregation_id")
            check_event_name(event_name, "event_name")
            active = SagaFilter(
                aggregation_id=aggregation_id, statuses=sorted(s.value for s in m.ACTIVE_STATUSES)
            )
            found = await self.store.saga_list(active, limit=1) or await self.store.saga_list(
                SagaFilter(aggregation_id=aggregation_id), limit=1
            )
            if not found:
                raise SagaNotFoundError(
                    f"no saga with aggregation_id {aggregation_id!r}", aggregation_id
                )
            row = found[0]
        decide = waits.Delivering(
            event=ev,
            token=token if isinstance(token, uuid.UUID) else None,
            aggregation_id=aggregation_id,
            event_name=event_name,
            max_inbox_bytes=4 * self.engine.max_payload_bytes,
        )
        return decide.preview(row, await self.store.db_now())

    # --- retention -------------------------------------------------------------------------

    async def purge(
        self,
        older_than: timedelta | float,
        *,
        statuses: m.SagaStatus | str | Sequence[m.SagaStatus | str] | None = None,
        dry_run: bool = False,
        batch_size: int = DEFAULT_PURGE_BATCH,
        pause: float = 0.0,
    ) -> int:
        """Delete finished sagas (COMPLETED, COMPENSATED, ABORTED; or only ``statuses``,
        which must be among them) that finished more than ``older_than`` (a ``timedelta``
        or seconds) ago by the database clock; how many were deleted (with ``dry_run``:
        how many would be, nothing deleted).

        Deletes in batches of ``batch_size`` rows, each its own short transaction (never a
        long one), sleeping ``pause`` seconds between batches. Active and FAILED sagas are
        never deleted. A deleted saga's ``idempotency_key`` can start a new saga again.

        Raises:
            SagaInputError: a status that is not final, a negative age, a batch below 1.
        """
        if isinstance(older_than, bool) or not isinstance(older_than, timedelta | int | float):
            raise SagaInputError(f"older_than must be a timedelta or seconds, got {older_than!r}")
        age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
        if age < timedelta(0):
            raise SagaInputError(f"older_than must not be negative, got {age}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SagaInputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        chosen = status_values(statuses) or sorted(s.value for s in m.TERMINAL_STATUSES)
        not_final = [s for s in chosen if not m.SagaStatus(s).is_terminal]
        if not_final:
            final = ", ".join(sorted(s.value for s in m.TERMINAL_STATUSES))
            raise SagaInputError(
                f"only finished sagas can be purged ({final}); not {', '.join(not_final)}"
            )
        before = await self.store.db_now() - age
        if dry_run:
            return await self.store.saga_count(SagaFilter(statuses=chosen, finished_before=before))
        total = 0
        while True:
            n = await self.store.saga_purge(chosen, before, batch_size)
            total += n
            if n < batch_size:
                return total
            await asyncio.sleep(pause)
