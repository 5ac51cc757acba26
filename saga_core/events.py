"""Event delivery (``SagaOrchestrator.notify``): by token or by correlation (aggregation id and
event name), accepted at most once, every refusal recorded in the saga's history.

The decision is pure: it runs on the row the store has locked for the delivery
(``SagaStore.saga_deliver``), which then writes either the accepting update or the refusal
entry, in the same transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from saga_core import machine as m
from saga_core.executor import WAITING_KEY
from saga_core.rows import machine_state, now_iso, update_for
from saga_core.store.base import REFUSED, RowUpdate, SagaRow

__all__ = ["REFUSALS_KEPT", "Delivering", "Delivery", "refusal_reason"]

REFUSALS_KEPT = 100
"""Refused deliveries recorded one by one per saga; later ones are only counted, in a single
``REFUSALS_UNRECORDED`` history entry (``count``, ``last_at``, ``last_reason``)."""


@dataclass(frozen=True)
class Delivery:
    """The outcome of one event delivery."""

    accepted: bool
    saga_id: uuid.UUID
    """The saga it was delivered to (for a refusal: the saga the refusal was recorded on)."""
    status: m.SagaStatus
    """The saga's status when the delivery was decided."""
    reason: str | None = None
    """Why it was refused (``None`` when accepted), as recorded in the history."""


def refusal_reason(
    status: str,
    context: dict[str, Any],
    current_token: uuid.UUID,
    *,
    token: uuid.UUID | None = None,
    aggregation_id: str | None = None,
    event_name: str | None = None,
) -> str | None:
    """Why a delivery to a saga in this state is refused; ``None`` when it is accepted. By
    token (``token``), or by correlation (``aggregation_id`` and ``event_name``; the saga is
    the active one of the aggregation id, else its newest)."""
    if token is not None:
        if status != m.SagaStatus.SUSPENDED.value:
            return f"saga is {status}"
        if current_token != token:
            return "stale token"
        return None
    if m.SagaStatus(status) not in m.ACTIVE_STATUSES:
        return f"no active saga for aggregation_id {aggregation_id!r} (newest is {status})"
    if status != m.SagaStatus.SUSPENDED.value:
        return f"saga is {status}, not waiting for an event"
    waiting = context.get(WAITING_KEY)
    if not isinstance(waiting, dict):
        return "saga is SUSPENDED to retry a failed step, not waiting for an event"
    # A parallel saga's waiting branches may each wait for a name of their own.
    names = waiting.get("event_names") or [waiting.get("event_name")]
    names = [n for n in names if n is not None]
    if not names:
        return "saga is waiting for an unnamed event (deliver it with saga_id and token)"
    if event_name not in names:
        shown = " or ".join(repr(n) for n in names)
        return f"waiting for {shown}, not {event_name!r}"
    return None


def _step_id(row: SagaRow) -> str | None:
    idx = row.current_step_index
    return str(row.steps_state[idx]["step_id"]) if 0 <= idx < len(row.steps_state) else None


class Delivering:
    """Decides one delivery on the locked row: ``__call__`` returns the accepting update or
    the refusal's history entry, and remembers why it refused."""

    def __init__(
        self,
        *,
        event: dict[str, Any] | None,
        token: uuid.UUID | None = None,
        aggregation_id: str | None = None,
        event_name: str | None = None,
        actor: str | None = None,
        note: str | None = None,
    ) -> None:
        self.event = event
        self.token = token
        self.aggregation_id = aggregation_id
        self.event_name = event_name
        self.actor = actor
        self.note = note
        self.reason: str | None = None
        self.row: SagaRow | None = None

    def result(self) -> Delivery:
        assert self.row is not None
        return Delivery(
            accepted=self.reason is None,
            saga_id=self.row.id,
            status=m.SagaStatus(self.row.status),
            reason=self.reason,
        )

    def __call__(self, row: SagaRow) -> RowUpdate | dict[str, Any]:
        self.row = row
        self.reason = self._refusal(row)
        if self.reason is None:
            return self._accept(row)
        entry: dict[str, Any] = {
            "at": now_iso(),
            "phase": "event",
            "step_id": _step_id(row),
            "status": REFUSED,
            "attempt": 0,
            "reason": self.reason,
            "event": self.event,
            "event_name": self.event_name,
        }
        if self.actor is not None:
            entry["actor"] = self.actor
        if self.note is not None:
            entry["note"] = self.note
        return entry

    def _refusal(self, row: SagaRow) -> str | None:
        return refusal_reason(
            row.status,
            row.context,
            row.step_execution_token,
            token=self.token,
            aggregation_id=self.aggregation_id,
            event_name=self.event_name,
        )

    def _accept(self, row: SagaRow) -> RowUpdate:
        """RUNNING, due now, with a new token; the event stored; history ``RECEIVED``."""
        t = m.notified(machine_state(row))
        ctx = dict(row.context)
        waiting = ctx.pop(WAITING_KEY, None)  # the wait is over: no timeout to record
        ev = self.event
        if ev is not None:
            ctx["events"] = [*(ctx.get("events") or []), ev]
            ctx["latest_event"] = ev
        entry: dict[str, Any] = {
            "at": now_iso(),
            "phase": "event",
            "step_id": _step_id(row),
            "status": "RECEIVED",
            "attempt": 0,
            "event": ev,
        }
        name = self.event_name
        if name is None and isinstance(waiting, dict):
            name = waiting.get("event_name")
        if name is not None:
            entry["event_name"] = name
        if self.actor is not None:
            entry["actor"] = self.actor
        if self.note is not None:
            entry["reason"] = self.note
        upd = update_for(t, row.steps_state, history=[entry], context=ctx)
        upd.new_token = uuid.uuid4()
        return upd
