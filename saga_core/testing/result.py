"""``SagaResult``: what a saga run by the test kit came to."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from saga_core.machine import SagaStatus
from saga_core.rows import EVENTS_KEY, STEP_OUTPUTS_KEY
from saga_core.snapshot import SagaAdminSnapshot

__all__ = ["SagaResult"]


@dataclass(frozen=True)
class SagaResult:
    """One saga as the kit found it, with the calls its steps received."""

    saga_id: uuid.UUID
    saga_name: str
    status: SagaStatus
    outputs: dict[str, Any]
    """Step id -> output (JSON) of every step that completed (or was skipped with one)."""
    executions: dict[str, int]
    """Step id -> how many times its ``execute`` was called (retries, re-runs after a
    crash and runs after an event included)."""
    compensations: dict[str, int]
    """Step id -> how many times its ``compensate`` was called."""
    history: list[dict[str, Any]]
    events: list[dict[str, Any]]
    """The events the saga consumed, oldest first."""
    last_error: str | None
    takeovers: int
    """Claims that found the lease of a crashed worker."""
    snapshot: SagaAdminSnapshot = field(repr=False)

    @classmethod
    def of(
        cls,
        snap: SagaAdminSnapshot,
        executions: dict[str, int],
        compensations: dict[str, int],
    ) -> SagaResult:
        return cls(
            saga_id=snap.id,
            saga_name=snap.saga_name,
            status=snap.status,
            outputs=dict(snap.context.get(STEP_OUTPUTS_KEY) or {}),
            executions=dict(executions),
            compensations=dict(compensations),
            history=list(snap.step_history),
            events=list(snap.context.get(EVENTS_KEY) or []),
            last_error=snap.last_error,
            takeovers=snap.takeover_count,
            snapshot=snap,
        )

    def outcomes(
        self, *, phase: str | None = None, step_id: str | None = None
    ) -> list[tuple[str, str | None, str]]:
        """(phase, step id, status) of the history entries, oldest first, optionally only
        those of one ``phase`` (``execute``, ``compensate``, ``event``, ``admin``) or step."""
        return [
            (e["phase"], e.get("step_id"), e["status"])
            for e in self.history
            if (phase is None or e.get("phase") == phase)
            and (step_id is None or e.get("step_id") == step_id)
        ]
