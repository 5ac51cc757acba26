"""The persistence seam: records exchanged with the store and the interface every store
implements. All SQL lives in the store modules; nothing here knows about steps."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "Applied",
    "Checkpoint",
    "DeadlineChange",
    "DeliveryFn",
    "LeaseChange",
    "NotApplied",
    "RowUpdate",
    "SagaFilter",
    "SagaRow",
    "SagaStore",
    "WorkerRow",
]


class NotApplied(Exception):
    """A transient database error (lost connection, server restarting) before a locked
    write committed: nothing was written; ``cause`` is the error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True)
class SagaRow:
    """One saga row as read from the database."""

    id: uuid.UUID
    saga_name: str
    aggregation_id: str
    status: str
    phase: str
    current_step_index: int
    steps_state: list[dict[str, Any]]
    step_execution_token: uuid.UUID
    context: dict[str, Any]
    deadline_at: datetime | None
    lease_owner: str | None
    retry_counter: int
    takeover_count: int
    last_error: str | None
    definition_fingerprint: str
    trace_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    step_history: list[dict[str, Any]] | None = None
    """Only loaded where asked for (claims do not need it)."""
    recovery_count: int = 0
    """Consecutive takeovers of the current step (see ``SagaStateMixin.recovery_count``)."""
    idempotency_key: str | None = None
    """The key given to ``start(idempotency_key=...)``, if any."""
    definition_version: int = 1
    """The definition version the saga runs with (``register(..., version=)``)."""
    lease_token: uuid.UUID | None = None
    """The fencing token of the lease (rotated by every claim and operator action); None
    for a saga no worker has claimed since it was stored."""
    inbox: list[dict[str, Any]] | None = None
    """Events accepted while a worker held the saga, waiting for their step (``waits``)."""

    @classmethod
    def from_mapping(cls, m: Any) -> SagaRow:
        names = cls.__dataclass_fields__
        return cls(**{k: m[k] for k in names if k in m})


class DeadlineChange(StrEnum):
    KEEP = "keep"
    HOLD = "hold"
    """Keep the lease, extending it (now + the lease's length) when less than half of it
    is left by the database clock: the write that lets a worker go on to its next step."""
    CLEAR = "clear"
    AFTER = "after"
    """now (database clock) + ``RowUpdate.delay``."""
    LEASE = "lease"
    """now + the store's lease length (a renewal)."""


class LeaseChange(StrEnum):
    KEEP = "keep"
    RELEASE = "release"


@dataclass
class RowUpdate:
    """New values for a saga row. ``None`` fields are left as they are, except where said."""

    status: str | None = None
    phase: str | None = None
    current_step_index: int | None = None
    steps_state: list[dict[str, Any]] | None = None
    context: dict[str, Any] | None = None
    retry_counter: int | None = None
    last_error: str | None = None
    set_last_error: bool = False
    """Write ``last_error`` even when it is ``None`` (clears it)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Entries appended to step_history."""
    deadline: DeadlineChange = DeadlineChange.KEEP
    delay: timedelta = timedelta(0)
    lease: LeaseChange = LeaseChange.KEEP
    finished: bool = False
    step_token: uuid.UUID | None = None
    """New value of the ``step_execution_token`` column (the token of the step at the
    cursor, as shown in snapshots)."""
    new_lease_token: uuid.UUID | None = None
    """Rotate the lease's fencing token (operator actions, releases after an error): a
    worker still holding the old one can no longer write or renew."""
    inbox: list[dict[str, Any]] | None = None
    set_inbox: bool = False
    """Replace the inbox with ``inbox`` (``None``: empty). Only writes made under the row
    lock (deliveries, settling waits) touch the inbox; checkpoints never do."""
    # recovery_count is reset by every update that writes ``steps_state`` (a recorded step or
    # compensation outcome, an operator action).


@dataclass
class Checkpoint:
    """A fenced update: applied only if the row's lease token still equals ``token``."""

    saga_id: uuid.UUID
    token: uuid.UUID
    update: RowUpdate


@dataclass(frozen=True, slots=True)
class Applied:
    """A fenced update that was written."""

    lease_left: float | None
    """Seconds of lease left after it by the database clock (``None``: no lease held)."""
    inbox: bool = False
    """The saga's inbox holds events (the writer should settle them)."""


@dataclass(frozen=True)
class SagaFilter:
    statuses: Sequence[str] | None = None
    saga_names: Sequence[str] | None = None
    aggregation_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    ids: Sequence[uuid.UUID] | None = None
    finished_before: datetime | None = None
    definition_version: int | None = None


@dataclass(frozen=True)
class WorkerRow:
    id: str
    host: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_at: datetime
    in_flight: int
    concurrency: int
    saga_names: list[str]
    stopped_at: datetime | None
    info: dict[str, Any]
    saga_versions: dict[str, Any] = field(default_factory=dict)
    """table -> saga name -> versions the worker runs; empty for a worker from before
    versioning (see ``saga_core.versioning.advertised_pairs``)."""

    @classmethod
    def from_mapping(cls, m: Any) -> WorkerRow:
        return cls(**{k: m[k] for k in cls.__dataclass_fields__ if k in m})


LockedFn = Callable[[SagaRow, datetime], RowUpdate | None]
"""Computes an update from the locked row and the database clock; ``None``: change nothing."""

DeliveryFn = Callable[[SagaRow, datetime], "RowUpdate | dict[str, Any]"]
"""Decides an event delivery from the locked row and the database clock: the update that
accepts it, or the history entry that records its refusal."""


class SagaStore(ABC):
    """Everything the engine and admin need from the database, for one saga table."""

    dialect: str
    table_name: str

    # --- sagas: writes on the hot path ---------------------------------------------------

    @abstractmethod
    async def saga_insert(
        self,
        values: dict[str, Any],
        *,
        session: AsyncSession | None = None,
        due_in: timedelta | None = None,
    ) -> SagaRow | None:
        """Insert a new saga row and wake workers; ``None`` once inserted.

        The row is due now, at ``values["deadline_at"]`` when given, or ``due_in`` from now
        by the database clock. When ``values`` carry an ``idempotency_key`` that a saga
        already holds (even one committed concurrently, while this insert waited), nothing
        is inserted and that saga's row (without history) is returned.

        Raises ActiveSagaAlreadyExistsError."""

    @abstractmethod
    async def saga_purge(
        self, statuses: Sequence[str], finished_before: datetime, batch: int
    ) -> int:
        """Delete at most ``batch`` sagas in ``statuses`` finished before ``finished_before``
        (oldest first) in one short transaction; how many were deleted. Rows another
        transaction holds are skipped."""

    @abstractmethod
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
        """Claim up to ``limit`` due rows (or expired leases) in one statement: rotate each
        lease token, set the lease owner and expiry. Rows another transaction holds are
        skipped. ``versions``: only rows whose (saga_name, definition_version) is one of
        these. ``suspects``: ``True`` only, ``False`` none of, the sagas whose worker was
        lost at least twice in a row while they ran (``rows.SUSPECT``); ``None``: no filter.
        Each row's ``updated_at`` is the database clock at the claim."""

    @abstractmethod
    async def saga_unclaim(self, owner: str, keep: Sequence[uuid.UUID]) -> int:
        """Release the leases ``owner`` holds on sagas other than ``keep`` (claims whose reply
        was lost): due now, no recovery counted. How many were released."""

    @abstractmethod
    async def saga_checkpoint(self, checkpoints: Sequence[Checkpoint]) -> list[Applied | None]:
        """Apply fenced updates in one transaction. For each: ``None`` when its lease token
        no longer matched (nothing written), else what the write left (``Applied``). A
        checkpoint that keeps the lease extends it when less than half is left."""

    @abstractmethod
    async def saga_checkpoint_in(
        self, session: AsyncSession, checkpoint: Checkpoint
    ) -> Applied | None:
        """Apply one fenced update in the caller's open transaction (a transactional step's
        session), without committing; as ``saga_checkpoint``. The caller commits or rolls
        back; on SQLite it must hold the store's write lock."""

    @abstractmethod
    async def saga_renew_lease(self, saga_id: uuid.UUID, token: uuid.UUID) -> float | None:
        """Extend the lease held with ``token``: the seconds left by the database clock, or
        ``None`` when the token no longer matches or no lease is held."""

    @abstractmethod
    async def saga_release(
        self, saga_id: uuid.UUID, token: uuid.UUID, note: dict[str, Any] | None
    ) -> bool:
        """Give the lease held with ``token`` up: the saga is due now for any worker (a
        claimed saga never started). False when the token no longer matched."""

    @abstractmethod
    async def saga_update_locked(
        self,
        saga_id: uuid.UUID,
        fn: LockedFn,
        *,
        lease_token: uuid.UUID | None = None,
        tell_unapplied: bool = False,
    ) -> tuple[SagaRow, bool]:
        """Lock the row (history included), compute an update with ``fn(row, db_now)``
        (pure, may raise), write it, commit. With ``lease_token``: only while the row's lease
        token is still that one (``LeaseLost`` otherwise, nothing written). Returns the row
        after it and whether anything was written. Raises SagaNotFoundError. With
        ``tell_unapplied``, a transient database error raised before the commit was sent
        is raised as :class:`NotApplied` (safe to retry: nothing was written)."""

    @abstractmethod
    async def saga_inbox_pending(self, saga_id: uuid.UUID) -> bool:
        """Whether the saga's inbox holds events (one indexed read)."""

    async def saga_deliver(
        self,
        fn: DeliveryFn,
        *,
        saga_id: uuid.UUID | None = None,
        aggregation_id: str | None = None,
        refusals_kept: int = 100,
    ) -> tuple[SagaRow, bool]:
        """Deliver an event in one transaction: lock the saga (by id, or the active saga of
        ``aggregation_id``, else the newest saga with it), decide with ``fn(row, db_now)``,
        then write the accepting update or append the refusal entry to the history and
        change nothing else. Beyond ``refusals_kept`` refusal entries, further refusals only
        count in one ``REFUSALS_UNRECORDED`` entry. Returns the row as read and whether the
        delivery was accepted.

        Raises:
            SagaNotFoundError: no such saga (no saga ever had that aggregation id).
            SagaConflictError: the saga changed between the read and an accepting write
                (SQLite, another process); nothing was written, try again.
        """
        raise NotImplementedError(f"{type(self).__name__} does not deliver events")

    # --- sagas: reads ----------------------------------------------------------------------

    @abstractmethod
    async def saga_get(
        self, saga_id: uuid.UUID, *, with_history: bool = True
    ) -> SagaRow | None: ...

    @abstractmethod
    async def saga_find_by_prefix(self, prefix: str, *, limit: int = 2) -> list[uuid.UUID]: ...

    @abstractmethod
    async def saga_list(
        self, flt: SagaFilter, *, limit: int = 100, offset: int = 0, oldest_first: bool = False
    ) -> list[SagaRow]: ...

    @abstractmethod
    async def saga_count(self, flt: SagaFilter) -> int: ...

    @abstractmethod
    async def saga_stats(self) -> list[tuple[str, str, int]]:
        """(saga_name, status, count) for every pair present."""

    @abstractmethod
    async def saga_version_summary(
        self, statuses: Sequence[str]
    ) -> list[tuple[str, int, int, datetime]]:
        """(saga_name, definition_version, count, oldest created_at) of the sagas in
        ``statuses``, for every (name, version) present."""

    @abstractmethod
    async def saga_due_summary(self) -> tuple[int, datetime | None]:
        """(number of claimable sagas due now, the oldest due time among them)."""

    @abstractmethod
    async def saga_finished_since(self, since: datetime) -> list[tuple[str, str, int]]:
        """(saga_name, status, count) of sagas finished since ``since``."""

    @abstractmethod
    async def db_now(self) -> datetime: ...

    # --- worker registry ---------------------------------------------------------------

    @abstractmethod
    async def worker_heartbeat(self, worker: dict[str, Any]) -> None:
        """Insert or refresh this worker's registry row (heartbeat_at = db now)."""

    @abstractmethod
    async def worker_stopped(self, worker_id: str) -> None: ...

    @abstractmethod
    async def worker_forget(self, worker_id: str) -> None:
        """Delete this worker's registry row (a worker that stopped before it was ready)."""

    @abstractmethod
    async def worker_list(self) -> list[WorkerRow]: ...

    # --- schema --------------------------------------------------------------------------

    @abstractmethod
    async def schema_upgrade(self) -> list[str]:
        """Create or upgrade this store's tables idempotently; what was done."""

    @abstractmethod
    async def schema_status(self) -> dict[str, Any]:
        """Whether the tables exist and match the installed version."""
