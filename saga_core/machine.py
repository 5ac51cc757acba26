"""The saga state machine as pure functions: no I/O, no clocks, no randomness.

Each function takes a :class:`MachineState` (plus what it needs to know about the
definition) and returns a :class:`Transition`: the new state, when the saga is due next,
and any history notes the transition itself produces (steps passed over by a rollback).
The executor and the admin module apply transitions; the store persists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
from typing import Any

from saga_core.errors import SagaStateError

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "MachineState",
    "Phase",
    "SagaStatus",
    "Schedule",
    "StepState",
    "StepStatus",
    "Transition",
]


class SagaStatus(StrEnum):
    """Where a saga is in its life; see the README for the full table."""

    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"
    ABORTED = "ABORTED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.ABORTED})
ACTIVE_STATUSES = frozenset(set(SagaStatus) - TERMINAL_STATUSES)
"""Statuses that count for the one-active-saga-per-aggregation_id rule (FAILED included)."""


class Phase(StrEnum):
    EXECUTE = "execute"
    COMPENSATE = "compensate"


class StepStatus(StrEnum):
    PENDING = "PENDING"
    """Not run yet, or failed and waiting for another attempt."""
    SUCCEEDED = "SUCCEEDED"
    """Executed; its output is stored. A rollback compensates it."""
    SKIPPED = "SKIPPED"
    """Skipped by an operator; a rollback passes over it."""
    COMPENSATED = "COMPENSATED"
    """Its compensation succeeded."""
    NOT_COMPENSATED = "NOT_COMPENSATED"
    """A rollback passed over it: nothing to undo, or skipped, or its compensation skipped."""


@dataclass(frozen=True)
class StepState:
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    """Executions of ``execute`` that ended (success or failure)."""
    compensation_attempts: int = 0

    def to_json(self, step_id: str) -> dict[str, Any]:
        return {
            "step_id": step_id,
            "status": self.status.value,
            "attempts": self.attempts,
            "compensation_attempts": self.compensation_attempts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepState:
        return cls(
            status=StepStatus(data.get("status", "PENDING")),
            attempts=int(data.get("attempts", 0)),
            compensation_attempts=int(data.get("compensation_attempts", 0)),
        )


@dataclass(frozen=True)
class MachineState:
    status: SagaStatus
    phase: Phase
    cursor: int
    """Forward: the step to run next. Compensating: the step being compensated."""
    steps: tuple[StepState, ...]
    retry_counter: int = 0

    @classmethod
    def initial(cls, n_steps: int) -> MachineState:
        return cls(SagaStatus.RUNNING, Phase.EXECUTE, 0, tuple(StepState() for _ in range(n_steps)))

    def with_step(self, index: int, step: StepState) -> tuple[StepState, ...]:
        steps = list(self.steps)
        steps[index] = step
        return tuple(steps)


class ScheduleKind(StrEnum):
    HOLD = "hold"
    """The worker goes on with the saga under its lease (deadline = lease expiry)."""
    RETRY_IN_PLACE = "retry_in_place"
    """The worker waits ``delay`` itself, still holding the lease, then runs again."""
    DUE = "due"
    """Released: due after ``delay`` (zero: now); any worker may claim it then."""
    NONE = "none"
    """No deadline: finished, FAILED, or waiting for an event."""


@dataclass(frozen=True)
class Schedule:
    kind: ScheduleKind
    delay: timedelta = timedelta(0)

    @classmethod
    def hold(cls) -> Schedule:
        return cls(ScheduleKind.HOLD)

    @classmethod
    def due(cls, delay: timedelta = timedelta(0)) -> Schedule:
        return cls(ScheduleKind.DUE, delay)

    @classmethod
    def none(cls) -> Schedule:
        return cls(ScheduleKind.NONE)


@dataclass(frozen=True)
class Transition:
    state: MachineState
    schedule: Schedule
    notes: tuple[dict[str, Any], ...] = field(default=())
    """History entries the transition produces by itself (steps a rollback passes over)."""


@dataclass(frozen=True)
class Shape:
    """What the machine needs to know about a definition."""

    step_ids: tuple[str, ...]
    has_compensation: tuple[bool, ...]
    compensate_on_failure: bool = True

    def __post_init__(self) -> None:
        if len(self.step_ids) != len(self.has_compensation) or not self.step_ids:
            raise ValueError("a shape needs one has_compensation flag per step, and a step")


def _require(state: MachineState, allowed: Sequence[SagaStatus], action: str) -> None:
    if state.status not in allowed:
        names = ", ".join(s.value for s in allowed)
        raise SagaStateError(
            f"cannot {action} a saga in status {state.status.value}; allowed from: {names}",
            status=state.status.value,
        )


def _note(shape: Shape, index: int, status: str, reason: str) -> dict[str, Any]:
    return {
        "phase": Phase.COMPENSATE.value,
        "step_id": shape.step_ids[index],
        "status": status,
        "attempt": 0,
        "reason": reason,
    }


def _rollback_from(state: MachineState, shape: Shape, start: int) -> Transition:
    """Position the rollback on the newest step at or below ``start`` that needs undoing,
    passing over (and recording) steps with nothing to undo."""
    steps = list(state.steps)
    notes: list[dict[str, Any]] = []
    for index in range(start, -1, -1):
        st = steps[index]
        if st.status is StepStatus.SUCCEEDED:
            if shape.has_compensation[index]:
                new = replace(
                    state,
                    status=SagaStatus.COMPENSATING,
                    phase=Phase.COMPENSATE,
                    cursor=index,
                    steps=tuple(steps),
                    retry_counter=0,
                )
                return Transition(new, Schedule.hold(), tuple(notes))
            steps[index] = replace(st, status=StepStatus.NOT_COMPENSATED)
            notes.append(
                _note(shape, index, "NOTHING_TO_COMPENSATE", "the step defines no compensate")
            )
        elif st.status is StepStatus.SKIPPED:
            steps[index] = replace(st, status=StepStatus.NOT_COMPENSATED)
            notes.append(
                _note(shape, index, "NOT_COMPENSATED", "the step was skipped by an operator")
            )
    new = replace(
        state,
        status=SagaStatus.COMPENSATED,
        phase=Phase.COMPENSATE,
        cursor=0,
        steps=tuple(steps),
        retry_counter=0,
    )
    return Transition(new, Schedule.none(), tuple(notes))


def _newest_done(state: MachineState) -> int:
    """Index from which a rollback starts: the newest step that may need undoing."""
    for index in range(len(state.steps) - 1, -1, -1):
        if state.steps[index].status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
            return index
    return -1


def _advance(state: MachineState, steps: tuple[StepState, ...], schedule: Schedule) -> Transition:
    for index in range(state.cursor + 1, len(steps)):
        if steps[index].status is StepStatus.PENDING:
            new = replace(
                state,
                status=SagaStatus.RUNNING,
                phase=Phase.EXECUTE,
                cursor=index,
                steps=steps,
                retry_counter=0,
            )
            return Transition(new, schedule)
    done = replace(
        state,
        status=SagaStatus.COMPLETED,
        phase=Phase.EXECUTE,
        cursor=len(steps),
        steps=steps,
        retry_counter=0,
    )
    return Transition(done, Schedule.none())


# --- outcomes reported by the executor -----------------------------------------------------


def step_succeeded(state: MachineState, shape: Shape) -> Transition:
    """The current step's ``execute`` returned a valid output."""
    _require(state, [SagaStatus.RUNNING], "record a step success for")
    st = state.steps[state.cursor]
    steps = state.with_step(
        state.cursor, replace(st, status=StepStatus.SUCCEEDED, attempts=st.attempts + 1)
    )
    return _advance(state, steps, Schedule.hold())


def step_failed(
    state: MachineState,
    shape: Shape,
    delay: timedelta | None,
    *,
    in_place_threshold: timedelta = timedelta(0),
) -> Transition:
    """The current step failed (error, timeout, invalid input or output).

    ``delay`` is the retry policy's answer for the new failure count: ``None`` when the
    attempts are exhausted. Waits up to ``in_place_threshold`` are spent by the worker
    holding the lease; longer ones suspend the saga until its due time.
    """
    _require(state, [SagaStatus.RUNNING], "record a step failure for")
    st = state.steps[state.cursor]
    steps = state.with_step(state.cursor, replace(st, attempts=st.attempts + 1))
    failed = replace(state, steps=steps, retry_counter=state.retry_counter + 1)
    if delay is not None:
        if delay <= in_place_threshold:
            return Transition(failed, Schedule(ScheduleKind.RETRY_IN_PLACE, delay))
        return Transition(replace(failed, status=SagaStatus.SUSPENDED), Schedule.due(delay))
    if shape.compensate_on_failure:
        return _rollback_from(failed, shape, _newest_done(failed))
    return Transition(replace(failed, status=SagaStatus.FAILED), Schedule.none())


def compensation_succeeded(state: MachineState, shape: Shape) -> Transition:
    """The current step's ``compensate`` returned."""
    _require(state, [SagaStatus.COMPENSATING], "record a compensation success for")
    st = state.steps[state.cursor]
    steps = state.with_step(
        state.cursor,
        replace(
            st, status=StepStatus.COMPENSATED, compensation_attempts=st.compensation_attempts + 1
        ),
    )
    return _rollback_from(replace(state, steps=steps), shape, state.cursor - 1)


def compensation_failed(
    state: MachineState,
    shape: Shape,
    delay: timedelta | None,
    *,
    in_place_threshold: timedelta = timedelta(0),
) -> Transition:
    """The current compensation failed; ``delay`` from the compensation retry policy."""
    _require(state, [SagaStatus.COMPENSATING], "record a compensation failure for")
    st = state.steps[state.cursor]
    steps = state.with_step(
        state.cursor, replace(st, compensation_attempts=st.compensation_attempts + 1)
    )
    failed = replace(state, steps=steps, retry_counter=state.retry_counter + 1)
    if delay is not None:
        if delay <= in_place_threshold:
            return Transition(failed, Schedule(ScheduleKind.RETRY_IN_PLACE, delay))
        return Transition(failed, Schedule.due(delay))
    return Transition(replace(failed, status=SagaStatus.FAILED), Schedule.none())


def claimed(state: MachineState) -> MachineState:
    """A worker claimed the saga: a retry wait is over."""
    _require(state, [SagaStatus.RUNNING, SagaStatus.SUSPENDED, SagaStatus.COMPENSATING], "claim")
    if state.status is SagaStatus.SUSPENDED:
        return replace(state, status=SagaStatus.RUNNING)
    return state


def suspended_for_event(state: MachineState, timeout: timedelta | None = None) -> Transition:
    """The current step asked to wait for an external event; with ``timeout`` the saga is
    due again then (and the executor records the wait as timed out)."""
    _require(state, [SagaStatus.RUNNING], "suspend")
    schedule = Schedule.none() if timeout is None else Schedule.due(timeout)
    return Transition(replace(state, status=SagaStatus.SUSPENDED), schedule)


def notified(state: MachineState) -> Transition:
    """An event arrived with the saga's current token: run the current step again now."""
    _require(state, [SagaStatus.SUSPENDED], "notify")
    return Transition(replace(state, status=SagaStatus.RUNNING), Schedule.due())


# --- operator actions --------------------------------------------------------------------

RETRYABLE = (SagaStatus.SUSPENDED, SagaStatus.FAILED)


def admin_retry(state: MachineState, shape: Shape) -> Transition:
    """Run the failed step (or failed compensation) again now, with the counter reset."""
    _require(state, RETRYABLE, "retry")
    status = SagaStatus.COMPENSATING if state.phase is Phase.COMPENSATE else SagaStatus.RUNNING
    return Transition(replace(state, status=status, retry_counter=0), Schedule.due())


def admin_skip(state: MachineState, shape: Shape) -> Transition:
    """Mark the current step (or compensation) done and continue."""
    _require(state, RETRYABLE, "skip the current step of")
    st = state.steps[state.cursor]
    if state.phase is Phase.COMPENSATE:
        steps = state.with_step(state.cursor, replace(st, status=StepStatus.NOT_COMPENSATED))
        t = _rollback_from(replace(state, steps=steps), shape, state.cursor - 1)
        if t.schedule.kind is ScheduleKind.HOLD:
            return replace(t, schedule=Schedule.due())
        return t
    steps = state.with_step(state.cursor, replace(st, status=StepStatus.SKIPPED))
    return _advance(replace(state, retry_counter=0), steps, Schedule.due())


def admin_compensate(state: MachineState, shape: Shape, *, lease_live: bool) -> Transition:
    """Start (or resume) the rollback from the newest completed step."""
    allowed = [SagaStatus.SUSPENDED, SagaStatus.FAILED, SagaStatus.RUNNING]
    _require(state, allowed, "compensate")
    if state.status is SagaStatus.RUNNING and lease_live:
        raise SagaStateError(
            "cannot compensate a RUNNING saga that a worker holds under a live lease; wait for "
            "its step to finish, or abort it",
            status=state.status.value,
        )
    if state.phase is Phase.COMPENSATE:
        new = replace(state, status=SagaStatus.COMPENSATING, retry_counter=0)
        return Transition(new, Schedule.due())
    t = _rollback_from(state, shape, _newest_done(state))
    if t.schedule.kind is ScheduleKind.HOLD:
        return replace(t, schedule=Schedule.due())
    return t


def admin_abort(state: MachineState) -> Transition:
    """Stop now without rollback."""
    _require(state, sorted(ACTIVE_STATUSES), "abort")
    return Transition(replace(state, status=SagaStatus.ABORTED), Schedule.none())
