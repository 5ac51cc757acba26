"""Read models returned by the orchestrator and admin APIs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from saga_core.history import REFUSALS_UNRECORDED, REFUSED
from saga_core.machine import SagaStatus
from saga_core.rows import RETRY_AT_KEY, waits_of
from saga_core.store.base import SagaRow, WorkerRow
from saga_core.versioning import OrphanGroup

__all__ = [
    "REFUSALS_UNRECORDED",
    "REFUSED",
    "OrphanGroup",
    "SagaAdminSnapshot",
    "SagaSnapshot",
    "WorkerRow",
]
# The history markers of refused event deliveries (``step_history`` entries of phase
# ``event``), the worker registry rows of ``SagaAdmin.workers()`` and the groups of
# ``SagaAdmin.orphans()`` are read models too: consoles import them from here.


class SagaSnapshot(BaseModel):
    """A saga as stored, at one moment (a plain read, never a lock)."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    saga_name: str
    aggregation_id: str
    status: SagaStatus
    phase: str
    """``execute`` while going forward, ``compensate`` once rolling back."""
    current_step_index: int
    current_step_id: str | None
    """The step running, waiting or failed; ``None`` once every step is done."""
    total_steps: int
    retry_counter: int
    takeover_count: int
    recovery_count: int = 0
    """Consecutive takeovers of the current step (worker lost while running it)."""
    deadline_at: datetime | None
    """When the saga is next due or its lease expires; ``None`` while it waits for an event
    or is finished (or FAILED)."""
    lease_owner: str | None
    trace_id: str | None
    step_execution_token: uuid.UUID
    """The token of the step at the cursor (``current_step().token`` of that step): what
    ``notify`` accepts for it."""
    last_error: str | None
    definition_fingerprint: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    idempotency_key: str | None = None
    """The key given to ``start(idempotency_key=...)``, if any."""
    definition_version: int = 1
    """The version of its definition the saga started under and runs with."""

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @classmethod
    def _fields_from_row(cls, row: SagaRow) -> dict[str, Any]:
        steps = row.steps_state
        idx = row.current_step_index
        current = steps[idx]["step_id"] if 0 <= idx < len(steps) else None
        status = SagaStatus(row.status)
        if status.is_terminal and status is not SagaStatus.COMPENSATED:
            current = None
        return {
            "id": row.id,
            "saga_name": row.saga_name,
            "aggregation_id": row.aggregation_id,
            "status": status,
            "phase": row.phase,
            "current_step_index": idx,
            "current_step_id": current if not status.is_terminal else None,
            "total_steps": len(steps),
            "retry_counter": row.retry_counter,
            "takeover_count": row.takeover_count,
            "recovery_count": row.recovery_count,
            "deadline_at": row.deadline_at,
            "lease_owner": row.lease_owner,
            "trace_id": row.trace_id,
            "step_execution_token": row.step_execution_token,
            "last_error": row.last_error,
            "definition_fingerprint": row.definition_fingerprint,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "finished_at": row.finished_at,
            "idempotency_key": row.idempotency_key,
            "definition_version": row.definition_version,
        }

    @classmethod
    def from_row(cls, row: SagaRow) -> SagaSnapshot:
        return cls(**cls._fields_from_row(row))


class SagaAdminSnapshot(SagaSnapshot):
    """A snapshot with the saga's full context, per-step state and history."""

    context: dict[str, Any]
    steps_state: list[dict[str, Any]]
    step_history: list[dict[str, Any]]
    inbox: list[dict[str, Any]] = []
    """Events accepted while a worker held the saga, waiting for their step to wait."""

    @property
    def waits(self) -> dict[str, dict[str, Any]]:
        """Steps waiting for an event: step id -> ``since``, ``until`` (None: no timeout),
        ``name`` (None: deliverable by token only); times by the database clock."""
        return {sid: w.to_json() for sid, w in waits_of(self.context).items()}

    @property
    def retry_at(self) -> dict[str, str]:
        """Parallel sagas: when each branch that failed may run again (step id -> ISO time)."""
        raw = self.context.get(RETRY_AT_KEY)
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    @property
    def waiting_event(self) -> dict[str, Any] | None:
        """The event wait of the current step (of a parallel saga: the current step's, else
        the first waiting branch's), or ``None``: ``step_id``, ``since``, ``until``,
        ``timeout_s`` (``None``: no timeout) and ``event_name`` (``None``: unnamed)."""
        waits = waits_of(self.context)
        if not waits:
            return None
        step_id = self.current_step_id if self.current_step_id in waits else sorted(waits)[0]
        wait = waits[step_id]
        since, until = wait.since_dt(), wait.until_dt()
        timeout = None if since is None or until is None else (until - since).total_seconds()
        return {
            "step_id": step_id,
            "since": wait.since,
            "until": wait.until,
            "timeout_s": timeout,
            "event_name": wait.name,
        }

    @classmethod
    def from_row(cls, row: SagaRow) -> SagaAdminSnapshot:
        return cls(
            **cls._fields_from_row(row),
            context=row.context,
            steps_state=row.steps_state,
            step_history=row.step_history or [],
            inbox=row.inbox or [],
        )
