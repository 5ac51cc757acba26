"""Event waits, step tokens and the inbox, for sequential and parallel sagas alike.

Everything here is pure: it decides on a row the store has locked (a delivery, a step that
starts to wait, a wait that timed out, the inbox after a checkpoint) and returns what to
write; the store writes it in the same transaction.

A step's token (``current_step().token``) names its wait. A delivery to it is accepted while
the step is pending in forward execution, its wait (if it waits) has not timed out, and no
other event for it is pending. What happens to an accepted event depends on whether a worker
holds the saga:

- nobody holds it (the saga is SUSPENDED, or RUNNING but not claimed): the event is consumed
  at once: appended to ``events``, the step's wait (or retry wait) ended and its token
  replaced; the saga is due now;
- a worker holds it (the step still runs: the other side answered before it began to wait;
  or a sibling branch runs): the event goes to the saga's *inbox*, which only deliveries and
  the holder's locked writes touch. The holder consumes it the moment the step waits (or, a
  parallel step that already waits, at its next look at the inbox), and records it ``UNUSED``
  when the step finishes without waiting. A claim after a crash consumes what it finds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from saga_core import history as h
from saga_core import machine as m
from saga_core.rows import (
    EVENTS_KEY,
    LATEST_EVENT_KEY,
    RETRY_AT_KEY,
    Wait,
    machine_state,
    rotate_token,
    shape_of,
    step_with_token,
    token_of,
    update_for,
    waits_of,
    with_tokens,
    with_waits,
)
from saga_core.store.base import RowUpdate, SagaRow

__all__ = ["INBOX_MAX", "Delivering", "Delivery", "Settled", "consume", "settle_inbox"]

INBOX_MAX = 32
"""Events a saga's inbox holds at most (further early deliveries are refused)."""
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
    queued: bool = False
    """Accepted while a worker held the saga: kept in its inbox until its step waits."""
    event_id: str | None = None
    """The accepted event's id (in the history's RECEIVED/CONSUMED/UNUSED entries)."""


def consume(
    context: dict[str, Any],
    steps: list[dict[str, Any]],
    index: int,
    event: dict[str, Any] | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Hand ``event`` to step ``index``: stored in ``events``/``latest_event``, the step's
    event wait and retry wait ended, its token replaced (the wait is spent)."""
    ctx = dict(context)
    if event is not None:
        ctx[EVENTS_KEY] = [*(ctx.get(EVENTS_KEY) or []), event]
        ctx[LATEST_EVENT_KEY] = event
    step_id = str(steps[index]["step_id"])
    waits = waits_of(ctx)
    if step_id in waits or "waiting" in ctx:
        waits.pop(step_id, None)
        ctx = with_waits(ctx, waits)
    retry_at = ctx.get(RETRY_AT_KEY)
    if isinstance(retry_at, dict) and step_id in retry_at:
        rest = {k: v for k, v in retry_at.items() if k != step_id}
        ctx = {k: v for k, v in ctx.items() if k != RETRY_AT_KEY}
        if rest:
            ctx[RETRY_AT_KEY] = rest
    return ctx, rotate_token(steps, index)


def meant_for(entry: dict[str, Any], token: str, step_id: str, wait_name: str | None) -> bool:
    """Whether an inbox entry is for a step (``token``, ``step_id``) that waits for an event
    named ``wait_name`` (None: an unnamed wait, reached by its token only)."""
    if entry.get("token") is not None:
        # The step id too: waiting branches of a saga stored by an earlier version share
        # the one token that version handed out.
        return bool(entry.get("token") == token) and entry.get("step_id") in (None, step_id)
    candidates = entry.get("steps")
    return (
        wait_name is not None
        and entry.get("name") == wait_name
        and (candidates is None or step_id in candidates)
    )


def in_flight(state: m.MachineState, shape: m.Shape, waits: dict[str, Wait]) -> list[int]:
    """The steps a worker holding the saga may be running now: the current step of a
    sequential saga; the ready branches of a parallel one (not waiting, dependencies done)."""
    if state.status is not m.SagaStatus.RUNNING or state.phase is not m.Phase.EXECUTE:
        return []
    held = frozenset(i for i, s in enumerate(shape.step_ids) if s in waits)
    return m.ready(state, shape, held)


def _live(state: m.MachineState, shape: m.Shape, index: int) -> bool:
    """Step ``index`` may still receive an event: pending in forward execution."""
    if state.status not in (m.SagaStatus.RUNNING, m.SagaStatus.SUSPENDED):
        return False
    if state.phase is not m.Phase.EXECUTE or not 0 <= index < len(state.steps):
        return False
    if state.steps[index].status is not m.StepStatus.PENDING:
        return False
    return shape.parallel or index == state.cursor


def _bound_step(steps: list[dict[str, Any]], entry: dict[str, Any]) -> int | None:
    """The step an inbox entry bound to a token is for: the step with that token (and the
    entry's step id, when it names one: steps of a saga stored by an earlier version may
    share a token)."""
    token, step_id = str(entry.get("token")), entry.get("step_id")
    for i, s in enumerate(steps):
        if s.get("token") == token and step_id in (None, s.get("step_id")):
            return i
    return None


# --- the inbox, from the holder's side ------------------------------------------------------


@dataclass
class Settled:
    """What :func:`settle_inbox` decided."""

    context: dict[str, Any]
    steps: list[dict[str, Any]]
    inbox: list[dict[str, Any]]
    history: list[dict[str, Any]] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    """Steps whose event wait or retry wait a consumed event ended: they run now."""

    @property
    def changed(self) -> bool:
        return bool(self.history)


def settle_inbox(
    state: m.MachineState,
    shape: m.Shape,
    context: dict[str, Any],
    steps: list[dict[str, Any]],
    inbox: list[dict[str, Any]],
    *,
    at: str,
    now: datetime,
    in_flight: frozenset[int] = frozenset(),
    consume_events: bool = True,
) -> Settled:
    """Go through the inbox: an event whose step can no longer use it is dropped (``UNUSED``);
    one whose step is not running right now (``in_flight``) is consumed (``CONSUMED``) unless
    ``consume_events`` is off; the rest stay. An event sent by name and bound to no token goes
    to the first step waiting for that name, and stays while forward execution goes on."""
    out = Settled(context=context, steps=steps, inbox=[])
    waits = waits_of(context)
    forward = state.status in (m.SagaStatus.RUNNING, m.SagaStatus.SUSPENDED) and (
        state.phase is m.Phase.EXECUTE
    )
    for entry in inbox:
        event_id = str(entry.get("event_id"))
        token = entry.get("token")
        index: int | None = None
        if token is not None:
            index = _bound_step(out.steps, entry)
            if index is None or not _live(state, shape, index):
                step_id = None if index is None else str(out.steps[index]["step_id"])
                why = (
                    "its step finished without waiting for it"
                    if forward
                    else "the saga left forward execution before its step waited for it"
                )
                out.history.append(
                    h.unused(
                        at=at,
                        step_id=step_id or entry.get("step_id"),
                        event_id=event_id,
                        reason=why,
                    )
                )
                continue
        else:
            name = entry.get("name")
            candidates = entry.get("steps")
            allowed = [
                i
                for i, s in enumerate(out.steps)
                if _live(state, shape, i) and (candidates is None or s["step_id"] in candidates)
            ]
            waiting = [
                i
                for i in allowed
                if (w := waits.get(str(out.steps[i]["step_id"]))) is not None
                and w.name == name
                and not w.timed_out(now)
                and i not in in_flight
            ]
            if waiting:
                index = waiting[0]
            elif forward and allowed:
                out.inbox.append(entry)
                continue
            else:
                why = (
                    "the steps running when it came finished without waiting for it"
                    if forward
                    else "the saga left forward execution before a step waited for it"
                )
                out.history.append(h.unused(at=at, step_id=None, event_id=event_id, reason=why))
                continue
        if index in in_flight or not consume_events:
            out.inbox.append(entry)
            continue
        out.context, out.steps = consume(out.context, out.steps, index, entry.get("event"))
        waits = waits_of(out.context)
        step_id = str(out.steps[index]["step_id"])
        out.history.append(
            h.consumed(at=at, step_id=step_id, event_id=event_id, event=entry.get("event"))
        )
        out.released.append(index)
    return out


# --- deliveries ---------------------------------------------------------------------------------


class Delivering:
    """Decides one delivery on the locked row (the store's ``DeliveryFn``): ``__call__``
    returns the accepting update or the refusal's history entry, and remembers why.

    Args:
        max_inbox_bytes: the inbox's size limit in bytes of JSON (events waiting for their
            step while a worker holds the saga).
    """

    def __init__(
        self,
        *,
        event: dict[str, Any] | None,
        token: uuid.UUID | None = None,
        aggregation_id: str | None = None,
        event_name: str | None = None,
        actor: str | None = None,
        note: str | None = None,
        max_inbox_bytes: int = 4_000_000,
    ) -> None:
        self.event = event
        self.token = token
        self.aggregation_id = aggregation_id
        self.event_name = event_name
        self.actor = actor
        self.note = note
        self.max_inbox_bytes = max_inbox_bytes
        self.reason: str | None = None
        self.row: SagaRow | None = None
        self.queued = False
        self.event_id = uuid.uuid4().hex

    def result(self) -> Delivery:
        assert self.row is not None
        accepted = self.reason is None
        return Delivery(
            accepted=accepted,
            saga_id=self.row.id,
            status=m.SagaStatus(self.row.status),
            reason=self.reason,
            queued=accepted and self.queued,
            event_id=self.event_id if accepted else None,
        )

    def __call__(self, row: SagaRow, now: datetime) -> RowUpdate | dict[str, Any]:
        self.row = row
        at = now.isoformat()
        steps = with_tokens(row)
        decision = self._decide(row, steps, now)
        if isinstance(decision, str):
            return self._refuse(row, decision, at)
        index, queue = decision
        if not queue:
            assert index is not None
            return self._consume_now(row, steps, index, at)
        return self._queue(row, steps, index, list(row.inbox or []), at)

    def preview(self, row: SagaRow, now: datetime) -> Delivery:
        """What a delivery to ``row`` would come to now, without writing anything."""
        self.row = row
        decision = self._decide(row, with_tokens(row), now)
        self.reason = decision if isinstance(decision, str) else None
        self.queued = not isinstance(decision, str) and decision[1]
        return self.result()

    def _decide(
        self, row: SagaRow, steps: list[dict[str, Any]], now: datetime
    ) -> tuple[int | None, bool] | str:
        """(the step, whether the event waits in the inbox), or why it is refused."""
        target = self._target(row, steps, now)
        if isinstance(target, str):
            return target
        if row.lease_owner is None and target is not None:
            return target, False
        inbox = row.inbox or []
        if len(inbox) >= INBOX_MAX:
            return f"inbox full: {INBOX_MAX} events already wait for their steps"
        size = sum(h.event_size(e.get("event"))[0] for e in inbox)
        if size + h.event_size(self.event)[0] > self.max_inbox_bytes:
            return (
                "inbox full: events waiting for their steps would exceed "
                f"{self.max_inbox_bytes} bytes"
            )
        return target, True

    # --- which step ------------------------------------------------------------------------

    def _target(self, row: SagaRow, steps: list[dict[str, Any]], now: datetime) -> int | str | None:
        """The step the event is for (``None``: bound to its name only, queued); a string:
        why it is refused."""
        status = m.SagaStatus(row.status)
        state = machine_state(row)
        shape = shape_of(row)
        inbox = row.inbox or []
        waits = waits_of(row.context)
        if self.token is not None:
            if status not in (m.SagaStatus.RUNNING, m.SagaStatus.SUSPENDED):
                return f"saga is {status.value}"
            if state.phase is not m.Phase.EXECUTE:
                return "saga is rolling back (compensating)"
            index = step_with_token(steps, self.token)
            if index is None or not _live(state, shape, index):
                return "stale token"
            if any(e.get("token") == str(self.token) for e in inbox):
                return "an event for this token already waits for its step (duplicate)"
            wait = waits.get(str(steps[index]["step_id"]))
            if wait is not None and wait.timed_out(now):
                return "stale token: its wait timed out"
            return index
        name = self.event_name
        if status not in m.ACTIVE_STATUSES:
            return f"no active saga for aggregation_id {self.aggregation_id!r} (newest is {status.value})"
        if status not in (m.SagaStatus.RUNNING, m.SagaStatus.SUSPENDED) or (
            state.phase is not m.Phase.EXECUTE
        ):
            return f"saga is {status.value}, not waiting for an event"
        live = {
            i: waits[str(s["step_id"])]
            for i, s in enumerate(steps)
            if str(s["step_id"]) in waits and _live(state, shape, i)
        }
        for i, wait in sorted(live.items()):
            if wait.name == name and not wait.timed_out(now):
                tok = str(steps[i].get("token"))
                if not any(e.get("token") == tok for e in inbox):
                    return i
        held = row.lease_owner is not None and status is m.SagaStatus.RUNNING
        if (
            held
            and in_flight(state, shape, waits)
            and not any(w.name == name for w in live.values())
        ):
            # A step in flight may be about to wait for it: kept until one of them does.
            if any(e.get("token") is None and e.get("name") == name for e in inbox):
                return f"an event named {name!r} already waits for a step (duplicate)"
            return None
        names = [w.name for w in live.values() if w.name is not None]
        if any(w.name == name for w in live.values()):
            if all(w.timed_out(now) for w in live.values() if w.name == name):
                return f"the wait for {name!r} timed out"
            return f"an event named {name!r} already waits for its step (duplicate)"
        if not live:
            if status is m.SagaStatus.SUSPENDED:
                return "saga is SUSPENDED to retry a failed step, not waiting for an event"
            return "saga is RUNNING, not waiting for an event"
        if not names:
            return "saga is waiting for an unnamed event (deliver it with saga_id and token)"
        shown = " or ".join(repr(n) for n in sorted(set(names)))
        return f"waiting for {shown}, not {name!r}"

    # --- outcomes --------------------------------------------------------------------------

    def _received(self, step_id: str | None, at: str, *, queued: bool) -> dict[str, Any]:
        name = self.event_name
        return h.received(
            at=at,
            step_id=step_id,
            event=self.event,
            event_id=self.event_id,
            event_name=name,
            queued=queued,
            actor=self.actor,
            note=self.note,
        )

    def _consume_now(
        self, row: SagaRow, steps: list[dict[str, Any]], index: int, at: str
    ) -> RowUpdate:
        """Nobody holds the saga: the step gets the event now and runs again, due now."""
        state = machine_state(row)
        step_id = str(steps[index]["step_id"])
        waits = waits_of(row.context)
        held_back = step_id in waits or step_id in (row.context.get(RETRY_AT_KEY) or {})
        ctx, steps = consume(row.context, steps, index, self.event)
        entry = self._received(step_id, at, queued=False)
        if self.event_name is None and step_id in waits and waits[step_id].name is not None:
            entry["event_name"] = waits[step_id].name
        if state.status is m.SagaStatus.SUSPENDED:
            t = m.notified(state)
        else:
            t = m.Transition(state, m.Schedule.due() if held_back else m.Schedule.hold())
        upd = update_for(t, steps, at=at, history=[entry], context=ctx)
        upd.new_lease_token = uuid.uuid4()
        return upd

    def _queue(
        self,
        row: SagaRow,
        steps: list[dict[str, Any]],
        index: int | None,
        inbox: list[dict[str, Any]],
        at: str,
    ) -> RowUpdate:
        """A worker holds the saga: the event waits in the inbox for its step."""
        self.queued = True
        step_id = None if index is None else str(steps[index]["step_id"])
        token = token_of(steps, index) if index is not None else None
        item: dict[str, Any] = {
            "event_id": self.event_id,
            "token": None if token is None else str(token),
            "name": self.event_name,
            "step_id": step_id,
            "event": self.event,
            "at": at,
        }
        if token is None:  # by name, early: for the steps that may be running now
            state, shape = machine_state(row), shape_of(row)
            running = in_flight(state, shape, waits_of(row.context))
            item["steps"] = [str(steps[i]["step_id"]) for i in running]
        return RowUpdate(
            history=[self._received(step_id, at, queued=True)],
            inbox=[*inbox, item],
            set_inbox=True,
        )

    def _refuse(self, row: SagaRow, reason: str, at: str) -> dict[str, Any]:
        self.reason = reason
        idx = row.current_step_index
        step_id = str(row.steps_state[idx]["step_id"]) if 0 <= idx < len(row.steps_state) else None
        return h.refused(
            at=at,
            step_id=step_id,
            reason=reason,
            event=self.event,
            event_name=self.event_name,
            actor=self.actor,
            note=self.note,
        )


def wait_marker(since: datetime, timeout_s: float | None, name: str | None) -> Wait:
    """A new wait, from ``since`` (database time) for ``timeout_s`` seconds (None: ever)."""
    from datetime import timedelta

    until = None if timeout_s is None else (since + timedelta(seconds=timeout_s)).isoformat()
    return Wait(since.isoformat(), until, name)
