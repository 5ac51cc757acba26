"""The saga state machine as pure functions: no I/O, no clocks, no randomness.

Each function takes a :class:`MachineState` (plus what it needs to know about the
definition) and returns a :class:`Transition`: the new state, when the saga is due next,
and any history notes the transition itself produces (steps passed over by a rollback).
The executor and the admin module apply transitions; the store persists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from saga_core import history as h
from saga_core.errors import SagaStateError
from saga_core.frozen import make, replace

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
    """Where a saga is in its life; see docs/concepts.md for the full table."""

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
    failures: int = 0
    """Parallel sagas: failed executions since the step last succeeded or an operator reset
    it (its own retry counter; sequential sagas keep one per saga)."""
    seq: int = 0
    """Parallel sagas: the order in which steps finished (1, 2, ...); a rollback undoes the
    highest first. 0: not finished (or a sequential saga, where the index gives the order)."""

    def to_json(self, step_id: str) -> dict[str, Any]:
        data: dict[str, Any] = {
            "step_id": step_id,
            "status": self.status._value_,
            "attempts": self.attempts,
            "compensation_attempts": self.compensation_attempts,
        }
        if self.failures:
            data["failures"] = self.failures
        if self.seq:
            data["seq"] = self.seq
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepState:
        return make(
            cls,
            status=StepStatus(data.get("status", "PENDING")),
            attempts=int(data.get("attempts", 0)),
            compensation_attempts=int(data.get("compensation_attempts", 0)),
            failures=int(data.get("failures", 0)),
            seq=int(data.get("seq", 0)),
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
    deps: tuple[tuple[int, ...], ...] | None = None
    """Parallel sagas: the indices each step waits for. ``None``: a sequential saga (steps
    run one after another in index order)."""

    def __post_init__(self) -> None:
        if len(self.step_ids) != len(self.has_compensation) or not self.step_ids:
            raise ValueError("a shape needs one has_compensation flag per step, and a step")
        if self.deps is not None and len(self.deps) != len(self.step_ids):
            raise ValueError("a parallel shape needs one dependency tuple per step")

    @property
    def parallel(self) -> bool:
        return self.deps is not None


def _require(state: MachineState, allowed: Sequence[SagaStatus], action: str) -> None:
    if state.status not in allowed:
        names = ", ".join(s.value for s in allowed)
        raise SagaStateError(
            f"cannot {action} a saga in status {state.status.value}; allowed from: {names}",
            status=state.status.value,
        )


def _note(shape: Shape, index: int, status: str, reason: str) -> dict[str, Any]:
    return h.rollback_note(shape.step_ids[index], status, reason)


def _rollback_from(state: MachineState, shape: Shape, start: int) -> Transition:
    """Position the rollback on the newest step at or below ``start`` that needs undoing,
    passing over (and recording) steps with nothing to undo."""
    steps = list(state.steps)
    notes: list[dict[str, Any]] = []
    if shape.deps is None:
        order: list[int] = list(range(start, -1, -1))
    else:
        # Newest first by the order the steps finished (a sequence number per finished step).
        order = sorted(range(len(steps)), key=lambda i: (steps[i].seq, i), reverse=True)
    for index in order:
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
                _note(shape, index, h.NOTHING_TO_COMPENSATE, "the step defines no compensate")
            )
        elif st.status is StepStatus.SKIPPED:
            steps[index] = replace(st, status=StepStatus.NOT_COMPENSATED)
            notes.append(
                _note(shape, index, h.NOT_COMPENSATED, "the step was skipped by an operator")
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


def _advance(
    state: MachineState,
    steps: tuple[StepState, ...],
    schedule: Schedule,
    *,
    parallel: bool = False,
) -> Transition:
    # Sequential: the next pending step after the cursor. Parallel: any unfinished step (the
    # executor works out which are ready when it claims the saga).
    first = 0 if parallel else state.cursor + 1
    for index in range(first, len(steps)):
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


# --- parallel sagas ----------------------------------------------------------------------
#
# A parallel saga runs every step whose dependencies are done, concurrently, under the one
# lease. The executor applies each branch's outcome as it comes (``branch_*``), checkpointing
# it on its own, and once no branch runs any more it settles the saga (``branches_settled``).


def _next_seq(state: MachineState) -> int:
    return max((s.seq for s in state.steps), default=0) + 1


def _done(st: StepState) -> bool:
    return st.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED)


def ready(state: MachineState, shape: Shape, held: frozenset[int] = frozenset()) -> list[int]:
    """Steps that may run now: pending, with every dependency done (succeeded or skipped),
    and not ``held`` (waiting for a retry time or an event)."""
    if shape.deps is None:
        i = state.cursor
        if i < len(state.steps) and state.steps[i].status is StepStatus.PENDING and i not in held:
            return [i]
        return []
    return [
        i
        for i, st in enumerate(state.steps)
        if st.status is StepStatus.PENDING
        and i not in held
        and all(_done(state.steps[d]) for d in shape.deps[i])
    ]


def _focus(state: MachineState, steps: tuple[StepState, ...], prefer: int | None) -> int:
    """The cursor of a parallel saga: ``prefer`` (a step that just failed), else the first
    unfinished step, else past the end."""
    if prefer is not None:
        return prefer
    for i, st in enumerate(steps):
        if st.status is StepStatus.PENDING:
            return i
    return len(steps)


def branch_succeeded(state: MachineState, shape: Shape, index: int) -> MachineState:
    """Step ``index`` of a parallel saga returned a valid output."""
    _require(state, [SagaStatus.RUNNING], "record a step success for")
    st = state.steps[index]
    steps = state.with_step(
        index,
        replace(
            st,
            status=StepStatus.SUCCEEDED,
            attempts=st.attempts + 1,
            failures=0,
            seq=_next_seq(state),
        ),
    )
    cursor = _focus(state, steps, None)
    failures = steps[cursor].failures if cursor < len(steps) else 0
    return replace(state, steps=steps, cursor=cursor, retry_counter=failures)


def branch_failed(state: MachineState, shape: Shape, index: int) -> MachineState:
    """An execution of step ``index`` of a parallel saga failed; the step stays pending. Its
    retry policy's answer for ``steps[index].failures`` decides what comes next."""
    _require(state, [SagaStatus.RUNNING], "record a step failure for")
    st = state.steps[index]
    steps = state.with_step(index, replace(st, attempts=st.attempts + 1, failures=st.failures + 1))
    return replace(state, steps=steps, cursor=index, retry_counter=st.failures + 1)


def branches_settled(
    state: MachineState,
    shape: Shape,
    *,
    failed: int | None = None,
    held: frozenset[int] = frozenset(),
    due_in: timedelta | None = None,
    focus: int | None = None,
) -> Transition | None:
    """No branch of a parallel saga runs any more: what the saga does next.

    ``failed``: a step exhausted its retries (running siblings were cancelled): roll back
    every finished step newest first, or stop FAILED without rollback. With every step done:
    COMPLETED. ``held``: steps waiting for a retry time or an event: SUSPENDED (cursor on
    ``focus``), due after ``due_in`` (``None``: only an event or an operator resumes it).
    ``None`` when steps are ready but were not started (the worker is draining).
    """
    _require(state, [SagaStatus.RUNNING], "settle")
    if failed is not None:
        at = replace(state, cursor=failed)
        if shape.compensate_on_failure:
            return _rollback_from(at, shape, len(state.steps) - 1)
        return Transition(replace(at, status=SagaStatus.FAILED), Schedule.none())
    if all(_done(st) for st in state.steps):
        done = replace(state, status=SagaStatus.COMPLETED, cursor=len(state.steps), retry_counter=0)
        return Transition(done, Schedule.none())
    if ready(state, shape, held):
        return None
    if held:
        cursor = focus if focus is not None else min(held)
        new = replace(
            state,
            status=SagaStatus.SUSPENDED,
            cursor=cursor,
            retry_counter=state.steps[cursor].failures,
        )
        return Transition(new, Schedule.none() if due_in is None else Schedule.due(due_in))
    raise SagaStateError(
        "parallel saga has unfinished steps but none is ready, running or waiting",
        status=state.status.value,
    )


# --- operator actions --------------------------------------------------------------------

RETRYABLE = (SagaStatus.SUSPENDED, SagaStatus.FAILED)


def admin_retry(state: MachineState, shape: Shape) -> Transition:
    """Run the failed step (or failed compensation) again now, with the counter reset."""
    _require(state, RETRYABLE, "retry")
    status = SagaStatus.COMPENSATING if state.phase is Phase.COMPENSATE else SagaStatus.RUNNING
    steps = state.steps
    if shape.parallel and state.phase is Phase.EXECUTE:
        # Every failed branch gets a fresh retry budget, not only the one at the cursor.
        steps = tuple(replace(s, failures=0) for s in steps)
    new = replace(state, status=status, retry_counter=0, steps=steps)
    return Transition(new, Schedule.due())


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
    skipped = replace(st, status=StepStatus.SKIPPED, failures=0)
    if shape.parallel:
        skipped = replace(skipped, seq=_next_seq(state))
    steps = state.with_step(state.cursor, skipped)
    return _advance(replace(state, retry_counter=0), steps, Schedule.due(), parallel=shape.parallel)


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
