"""The pure saga state machine: scenario tests, an exhaustive search of every reachable
state for small definitions, and a hypothesis state machine for longer runs.

The properties checked everywhere (see ``check_transition``):

* no reachable state is stranded: RUNNING and COMPENSATING always carry a schedule a worker
  acts on (HOLD, RETRY_IN_PLACE or DUE); SUSPENDED is due at a time, or waits for an event
  only after ``suspended_for_event``; FAILED and terminal states have no deadline;
* a step's status only moves forward (PENDING -> SUCCEEDED/SKIPPED -> COMPENSATED/
  NOT_COMPENSATED), so a success is compensated at most once, and rollbacks go newest first;
* COMPLETED exactly when every step SUCCEEDED or was SKIPPED;
* every function is allowed or refused (``SagaStateError``) exactly per SEMANTICS.md.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from saga_core import machine as m
from saga_core.errors import SagaError, SagaStateError
from saga_core.machine import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    MachineState,
    Phase,
    SagaStatus,
    Schedule,
    ScheduleKind,
    Shape,
    StepState,
    StepStatus,
    Transition,
)
from saga_core.retry import FixedRetry

S = SagaStatus
DONE = frozenset({StepStatus.SUCCEEDED, StepStatus.SKIPPED})
UNDONE = frozenset({StepStatus.COMPENSATED, StepStatus.NOT_COMPENSATED})
WORKER_SCHEDULES = frozenset({ScheduleKind.HOLD, ScheduleKind.RETRY_IN_PLACE, ScheduleKind.DUE})
SEC = timedelta(seconds=1)

# Where each function may be called from (SEMANTICS.md, "Administration" and "Statuses").
ALLOWED: dict[str, frozenset[SagaStatus]] = {
    "step_succeeded": frozenset({S.RUNNING}),
    "step_failed": frozenset({S.RUNNING}),
    "compensation_succeeded": frozenset({S.COMPENSATING}),
    "compensation_failed": frozenset({S.COMPENSATING}),
    "claimed": frozenset({S.RUNNING, S.SUSPENDED, S.COMPENSATING}),
    "suspended_for_event": frozenset({S.RUNNING}),
    "notified": frozenset({S.SUSPENDED}),
    "admin_retry": frozenset({S.SUSPENDED, S.FAILED}),
    "admin_skip": frozenset({S.SUSPENDED, S.FAILED}),
    "admin_compensate": frozenset({S.SUSPENDED, S.FAILED, S.RUNNING}),
    "admin_abort": frozenset(ACTIVE_STATUSES),
}
ADMIN_RESUMING = frozenset({"admin_retry", "admin_skip", "admin_compensate"})

# (delay answered by the retry policy, in-place threshold): exhausted, in place, suspend.
FAILURES: tuple[tuple[timedelta | None, timedelta], ...] = (
    (None, timedelta(0)),
    (timedelta(0), timedelta(0)),
    (SEC, 5 * SEC),
    (5 * SEC, 5 * SEC),
    (5 * SEC, SEC),
)


@dataclass(frozen=True)
class Action:
    """One call into the machine, with its arguments."""

    name: str
    delay: timedelta | None = None
    threshold: timedelta = timedelta(0)
    lease_live: bool = False

    def allowed(self, status: SagaStatus) -> bool:
        if self.name == "admin_compensate" and status is S.RUNNING and self.lease_live:
            return False
        return status in ALLOWED[self.name]

    def apply(self, state: MachineState, shape: Shape) -> Transition:
        """Call the function; ``claimed`` (which returns a state) becomes a HOLD transition:
        the worker that claimed the saga holds it under its lease."""
        n = self.name
        if n == "step_succeeded":
            return m.step_succeeded(state, shape)
        if n == "step_failed":
            return m.step_failed(state, shape, self.delay, in_place_threshold=self.threshold)
        if n == "compensation_succeeded":
            return m.compensation_succeeded(state, shape)
        if n == "compensation_failed":
            return m.compensation_failed(
                state, shape, self.delay, in_place_threshold=self.threshold
            )
        if n == "claimed":
            return Transition(m.claimed(state), Schedule.hold())
        if n == "suspended_for_event":
            return m.suspended_for_event(state)
        if n == "notified":
            return m.notified(state)
        if n == "admin_retry":
            return m.admin_retry(state, shape)
        if n == "admin_skip":
            return m.admin_skip(state, shape)
        if n == "admin_compensate":
            return m.admin_compensate(state, shape, lease_live=self.lease_live)
        if n == "admin_abort":
            return m.admin_abort(state)
        raise AssertionError(n)


ALL_ACTIONS: tuple[Action, ...] = (
    Action("step_succeeded"),
    *(Action("step_failed", d, t) for d, t in FAILURES),
    Action("compensation_succeeded"),
    *(Action("compensation_failed", d, t) for d, t in FAILURES),
    Action("claimed"),
    Action("suspended_for_event"),
    Action("notified"),
    Action("admin_retry"),
    Action("admin_skip"),
    Action("admin_compensate", lease_live=False),
    Action("admin_compensate", lease_live=True),
    Action("admin_abort"),
)
assert {a.name for a in ALL_ACTIONS} == set(ALLOWED)


def make_shape(has_compensation: tuple[bool, ...], compensate_on_failure: bool = True) -> Shape:
    ids = tuple(f"s{i}" for i in range(len(has_compensation)))
    return Shape(ids, has_compensation, compensate_on_failure)


def statuses(state: MachineState) -> list[StepStatus]:
    return [s.status for s in state.steps]


# --- invariant checks ----------------------------------------------------------------------


def check_forward(state: MachineState, *, completed: bool = False) -> None:
    st = statuses(state)
    c = state.cursor
    assert state.phase is Phase.EXECUTE
    if completed:
        assert c == len(st)
    else:
        assert 0 <= c < len(st)
    assert all(s in DONE for s in st[:c]), st
    assert all(s is StepStatus.PENDING for s in st[c:]), st


def check_undone_then_pending(tail: list[StepStatus]) -> None:
    """After the rollback point: steps settled by the rollback, then never-run ones."""
    settled = list(itertools.takewhile(lambda s: s in UNDONE, tail))
    rest = tail[len(settled) :]
    assert all(s is StepStatus.PENDING for s in rest), tail


def check_rollback(state: MachineState, shape: Shape) -> None:
    st = statuses(state)
    c = state.cursor
    assert state.phase is Phase.COMPENSATE
    assert 0 <= c < len(st)
    # newest first: the step being compensated is the newest one still to undo
    assert st[c] is StepStatus.SUCCEEDED, st
    assert shape.has_compensation[c]
    assert all(s in DONE for s in st[:c]), st
    check_undone_then_pending(st[c + 1 :])


def check_structure(state: MachineState, shape: Shape) -> None:
    st = statuses(state)
    assert len(st) == len(shape.step_ids)
    assert state.retry_counter >= 0
    # COMPLETED exactly when every step succeeded or was skipped
    assert (state.status is S.COMPLETED) == all(s in DONE for s in st), (state.status, st)
    match state.status:
        case S.RUNNING | S.SUSPENDED:
            check_forward(state)
        case S.COMPLETED:
            check_forward(state, completed=True)
            assert state.retry_counter == 0
        case S.COMPENSATING:
            check_rollback(state, shape)
        case S.COMPENSATED:
            assert state.phase is Phase.COMPENSATE
            assert not any(s in DONE for s in st), st
            check_undone_then_pending(st)
            assert state.retry_counter == 0
        case S.FAILED:
            if state.phase is Phase.EXECUTE:
                assert not shape.compensate_on_failure
                check_forward(state)
            else:
                check_rollback(state, shape)
            assert state.retry_counter >= 1
        case S.ABORTED:
            if state.phase is Phase.EXECUTE:
                check_forward(state)
            else:
                check_rollback(state, shape)


# Each step moves only forward along these edges.
STEP_EDGES = {
    (StepStatus.PENDING, StepStatus.SUCCEEDED),
    (StepStatus.PENDING, StepStatus.SKIPPED),
    (StepStatus.SUCCEEDED, StepStatus.COMPENSATED),
    (StepStatus.SUCCEEDED, StepStatus.NOT_COMPENSATED),
    (StepStatus.SKIPPED, StepStatus.NOT_COMPENSATED),
}


def check_transition(
    action: Action, before: MachineState, t: Transition, shape: Shape
) -> list[int]:
    """Check one allowed transition; return the indices the rollback settled, in order."""
    after, sched = t.state, t.schedule
    check_structure(after, shape)

    # --- never stranded ---
    match after.status:
        case S.RUNNING | S.COMPENSATING:
            assert sched.kind in WORKER_SCHEDULES, (action, sched)
        case S.SUSPENDED:
            if action.name == "suspended_for_event":
                assert sched.kind is ScheduleKind.NONE
            else:
                assert sched.kind is ScheduleKind.DUE, (action, sched)
        case _:
            assert sched.kind is ScheduleKind.NONE, (action, sched)
    assert sched.delay >= timedelta(0)
    if sched.kind is not ScheduleKind.RETRY_IN_PLACE and sched.kind is not ScheduleKind.DUE:
        assert sched.delay == timedelta(0)

    # --- after an operator action that resumes work: RUNNING/COMPENSATING, due now ---
    if action.name in ADMIN_RESUMING and not after.status.is_terminal:
        assert after.status in (S.RUNNING, S.COMPENSATING)
        assert (after.status is S.COMPENSATING) == (after.phase is Phase.COMPENSATE)
        assert sched == Schedule.due(), (action, sched)
        assert after.retry_counter == 0
    if action.name == "admin_abort":
        assert after.status is S.ABORTED
        assert replace(after, status=before.status) == before

    # --- steps only move forward; counters only grow ---
    changed = []
    for i, (b, a) in enumerate(zip(before.steps, after.steps, strict=True)):
        assert a.attempts >= b.attempts
        assert a.compensation_attempts >= b.compensation_attempts
        if a.status is not b.status:
            assert (b.status, a.status) in STEP_EDGES, (action, i, b.status, a.status)
            changed.append(i)

    # --- notes: the steps a rollback passed over, newest first ---
    noted = [shape.step_ids.index(n["step_id"]) for n in t.notes]
    for note, i in zip(t.notes, noted, strict=True):
        assert note["phase"] == "compensate"
        assert {"step_id", "status", "attempt", "reason"} <= set(note)
        assert after.steps[i].status is StepStatus.NOT_COMPENSATED
        if before.steps[i].status is StepStatus.SKIPPED:
            assert note["status"] == "NOT_COMPENSATED"
        else:
            assert before.steps[i].status is StepStatus.SUCCEEDED
            assert not shape.has_compensation[i]
            assert note["status"] == "NOTHING_TO_COMPENSATE"
    assert noted == sorted(noted, reverse=True) and len(set(noted)) == len(noted)

    settled: list[int] = []
    if action.name == "compensation_succeeded":
        assert after.steps[before.cursor].status is StepStatus.COMPENSATED
        settled.append(before.cursor)
    if action.name == "admin_skip" and before.phase is Phase.COMPENSATE:
        assert after.steps[before.cursor].status is StepStatus.NOT_COMPENSATED
        settled.append(before.cursor)
    settled += noted
    # Only the rollback changes statuses to COMPENSATED/NOT_COMPENSATED, all accounted for.
    assert sorted(i for i in changed if after.steps[i].status in UNDONE) == sorted(settled)
    assert settled == sorted(settled, reverse=True)
    if after.status is S.COMPENSATING:
        assert all(i > after.cursor for i in settled)

    # --- per-function effects ---
    c = before.cursor
    match action.name:
        case "step_succeeded":
            assert after.steps[c].status is StepStatus.SUCCEEDED
            assert after.steps[c].attempts == before.steps[c].attempts + 1
            assert changed == [c]
            assert after.retry_counter == 0
            if after.status is S.RUNNING:
                assert after.cursor == c + 1
                assert sched == Schedule.hold()
        case "step_failed":
            assert after.steps[c].attempts == before.steps[c].attempts + 1
            assert after.steps[c].status is StepStatus.PENDING
            if action.delay is not None:
                assert after.retry_counter == before.retry_counter + 1
                assert after.cursor == c
                if action.delay <= action.threshold:
                    assert after.status is S.RUNNING
                    assert sched == Schedule(ScheduleKind.RETRY_IN_PLACE, action.delay)
                else:
                    assert after.status is S.SUSPENDED
                    assert sched == Schedule.due(action.delay)
            elif shape.compensate_on_failure:
                assert after.status in (S.COMPENSATING, S.COMPENSATED)
                assert after.retry_counter == 0
                if after.status is S.COMPENSATING:
                    assert sched == Schedule.hold()  # the worker goes on with the rollback
            else:
                assert after.status is S.FAILED
                assert after.retry_counter == before.retry_counter + 1
                assert after.cursor == c
        case "compensation_succeeded":
            assert after.steps[c].compensation_attempts == (
                before.steps[c].compensation_attempts + 1
            )
            assert after.status in (S.COMPENSATING, S.COMPENSATED)
            assert after.retry_counter == 0
            if after.status is S.COMPENSATING:
                assert after.cursor < c
                assert sched == Schedule.hold()
        case "compensation_failed":
            assert after.steps[c].compensation_attempts == (
                before.steps[c].compensation_attempts + 1
            )
            assert after.cursor == c and not changed
            assert after.retry_counter == before.retry_counter + 1
            if action.delay is None:
                assert after.status is S.FAILED
            else:
                assert after.status is S.COMPENSATING
                kind = (
                    ScheduleKind.RETRY_IN_PLACE
                    if action.delay <= action.threshold
                    else ScheduleKind.DUE
                )
                assert sched == Schedule(kind, action.delay)
        case "claimed":
            expected = S.RUNNING if before.status is S.SUSPENDED else before.status
            assert after == replace(before, status=expected)
        case "suspended_for_event":
            assert after == replace(before, status=S.SUSPENDED)
        case "notified":
            assert after == replace(before, status=S.RUNNING)  # retry counter kept
            assert sched == Schedule.due()
        case "admin_retry":
            assert after == replace(
                before,
                status=S.COMPENSATING if before.phase is Phase.COMPENSATE else S.RUNNING,
                retry_counter=0,
            )
        case "admin_skip":
            if before.phase is Phase.EXECUTE:
                assert after.steps[c].status is StepStatus.SKIPPED
                assert changed == [c]
                assert after.status in (S.RUNNING, S.COMPLETED)
        case "admin_compensate":
            if before.phase is Phase.COMPENSATE:
                assert after == replace(before, status=S.COMPENSATING, retry_counter=0)
            else:
                assert after.status in (S.COMPENSATING, S.COMPENSATED)
    return settled


def try_action(action: Action, state: MachineState, shape: Shape) -> Transition | None:
    """Apply ``action`` and check it was allowed or refused exactly per the table."""
    if action.allowed(state.status):
        t = action.apply(state, shape)
        check_transition(action, state, t, shape)
        return t
    with pytest.raises(SagaStateError) as info:
        action.apply(state, shape)
    assert info.value.status == state.status.value
    assert state.status.value in str(info.value)
    return None


# --- exhaustive search of small definitions ------------------------------------------------


def all_shapes(max_steps: int) -> list[Shape]:
    return [
        make_shape(flags, cof)
        for n in range(1, max_steps + 1)
        for flags in itertools.product((False, True), repeat=n)
        for cof in (True, False)
    ]


def explore(shape: Shape) -> dict[tuple[Any, ...], tuple[MachineState, ScheduleKind]]:
    """Every reachable (state, schedule) up to counters, by breadth-first search. Counters
    do not change which transitions exist, so states differing only in them are merged."""
    start = MachineState.initial(len(shape.step_ids))

    def key(s: MachineState, kind: ScheduleKind) -> tuple[Any, ...]:
        return (s.status, s.phase, s.cursor, tuple(statuses(s)), kind)

    seen = {key(start, ScheduleKind.DUE): (start, ScheduleKind.DUE)}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for action in ALL_ACTIONS:
            t = try_action(action, state, shape)
            if t is None:
                continue
            k = key(t.state, t.schedule.kind)
            if k not in seen:
                seen[k] = (t.state, t.schedule.kind)
                queue.append(t.state)
    return seen


@pytest.mark.parametrize("shape", all_shapes(3), ids=lambda s: repr(s.has_compensation))
def test_exhaustive_reachable_states(shape: Shape) -> None:
    reached = explore(shape)
    found = {s.status for s, _ in reached.values()}
    expected = set(SagaStatus)
    # A compensation runs only for a step that succeeded and is followed by another (else
    # the saga completes): without one, nothing is ever COMPENSATING...
    if not any(shape.has_compensation[:-1]):
        expected.discard(S.COMPENSATING)
        # ...and with rollback on, FAILED needs an exhausted compensation.
        if shape.compensate_on_failure:
            expected.discard(S.FAILED)
    assert found == expected


def test_exhaustive_covers_every_status_and_schedule() -> None:
    pairs: set[tuple[SagaStatus, ScheduleKind]] = set()
    for shape in all_shapes(2):
        pairs |= {(s.status, kind) for s, kind in explore(shape).values()}
    assert {s for s, _ in pairs} == set(SagaStatus)
    # the only statuses that wait without a deadline
    assert {s for s, k in pairs if k is ScheduleKind.NONE} == {
        S.SUSPENDED,
        S.FAILED,
        *TERMINAL_STATUSES,
    }


# --- hypothesis: random walks --------------------------------------------------------------

# Mostly steps with a compensation: those are what rollbacks have to work through.
shapes = st.builds(
    make_shape,
    st.lists(st.sampled_from([True, True, False]), min_size=1, max_size=6).map(tuple),
    st.booleans(),
)
# None (attempts exhausted) is listed twice: it is what moves a saga on to a rollback.
delays = st.sampled_from([None, None, timedelta(0), timedelta(milliseconds=500), SEC, 10 * SEC])
thresholds = st.sampled_from([timedelta(0), SEC, 5 * SEC])


Rule = Callable[..., None]


def allows(name: str) -> Callable[[Rule], Rule]:
    """Run the rule only from the statuses where ``name`` is allowed."""
    return precondition(lambda self: self.state.status in ALLOWED[name])


class SagaMachine(RuleBasedStateMachine):
    """Random sequences of outcomes and operator actions on one saga (a new one once it
    ends), checking every property after each call."""

    shape: Shape
    state: MachineState

    @initialize(shape=shapes)
    def start(self, shape: Shape) -> None:
        self.shape = shape
        self.new_saga()

    def new_saga(self) -> None:
        self.state = MachineState.initial(len(self.shape.step_ids))
        self.waiting_for_event = False
        self.succeeded_once: set[int] = set()
        self.rollback: list[int] = []  # indices settled by the rollback, in order
        self.skipped_compensations: set[int] = set()
        # step statuses when the rollback began, for the steps it has to settle
        self.done_at_rollback: dict[int, StepStatus] | None = None

    def do(self, action: Action) -> None:
        before = self.state
        t = try_action(action, before, self.shape)
        if t is None:
            assert self.state is before
            return
        if before.phase is Phase.EXECUTE and t.state.phase is Phase.COMPENSATE:
            assert self.done_at_rollback is None
            self.done_at_rollback = {
                i: s.status for i, s in enumerate(before.steps) if s.status in DONE
            }
        if action.name == "admin_skip" and before.phase is Phase.COMPENSATE:
            self.skipped_compensations.add(before.cursor)
        for i, (b, a) in enumerate(zip(before.steps, t.state.steps, strict=True)):
            if a.status is StepStatus.SUCCEEDED and b.status is not StepStatus.SUCCEEDED:
                assert i not in self.succeeded_once  # a step never succeeds twice
                self.succeeded_once.add(i)
        settled = check_transition(action, before, t, self.shape)
        self.rollback += settled
        self.waiting_for_event = (
            t.state.status is S.SUSPENDED and t.schedule.kind is ScheduleKind.NONE
        )
        if action.name == "suspended_for_event":
            assert self.waiting_for_event
        self.state = t.state
        event(f"reached {t.state.status.value}")  # see --hypothesis-show-statistics

    @invariant()
    def rollback_newest_first_and_once(self) -> None:
        assert self.rollback == sorted(self.rollback, reverse=True)
        assert len(set(self.rollback)) == len(self.rollback)
        if self.done_at_rollback is not None:
            # the rollback settles exactly the steps done when it began, newest first
            assert set(self.rollback) <= set(self.done_at_rollback)
            if self.state.status is S.COMPENSATED:
                assert set(self.rollback) == set(self.done_at_rollback)
            for i in self.rollback:
                compensated = (
                    self.done_at_rollback[i] is StepStatus.SUCCEEDED
                    and self.shape.has_compensation[i]
                    and i not in self.skipped_compensations
                )
                assert self.state.steps[i].status is (
                    StepStatus.COMPENSATED if compensated else StepStatus.NOT_COMPENSATED
                )

    @invariant()
    def structure(self) -> None:
        if hasattr(self, "state"):
            check_structure(self.state, self.shape)

    @invariant()
    def terminal_refuses_everything(self) -> None:
        if hasattr(self, "state") and self.state.status.is_terminal:
            for action in ALL_ACTIONS:
                assert not action.allowed(self.state.status)
                with pytest.raises(SagaStateError):
                    action.apply(self.state, self.shape)

    @precondition(lambda self: self.state.status.is_terminal)
    @rule()
    def next_saga(self) -> None:
        self.new_saga()

    # Rules run only where the table allows them, so walks get deep into rollbacks and
    # operator actions; ``refused`` tries everything else and expects SagaStateError.

    @allows("step_succeeded")
    @rule()
    def step_succeeded(self) -> None:
        self.do(Action("step_succeeded"))

    @allows("step_failed")
    @rule(delay=delays, threshold=thresholds)
    def step_failed(self, delay: timedelta | None, threshold: timedelta) -> None:
        self.do(Action("step_failed", delay, threshold))

    @allows("compensation_succeeded")
    @rule()
    def compensation_succeeded(self) -> None:
        self.do(Action("compensation_succeeded"))

    @allows("compensation_failed")
    @rule(delay=delays, threshold=thresholds)
    def compensation_failed(self, delay: timedelta | None, threshold: timedelta) -> None:
        self.do(Action("compensation_failed", delay, threshold))

    @allows("claimed")
    @rule()
    def claimed(self) -> None:
        self.do(Action("claimed"))

    @allows("suspended_for_event")
    @rule()
    def suspended_for_event(self) -> None:
        self.do(Action("suspended_for_event"))

    @allows("notified")
    @rule()
    def notified(self) -> None:
        self.do(Action("notified"))

    @allows("admin_retry")
    @rule()
    def admin_retry(self) -> None:
        self.do(Action("admin_retry"))

    @allows("admin_skip")
    @rule()
    def admin_skip(self) -> None:
        self.do(Action("admin_skip"))

    @allows("admin_compensate")
    @rule(lease_live=st.booleans())
    def admin_compensate(self, lease_live: bool) -> None:
        self.do(Action("admin_compensate", lease_live=lease_live))

    @allows("admin_abort")
    @rule(go=st.integers(0, 3))
    def admin_abort(self, go: int) -> None:
        if go == 3:  # rarely: an abort ends the walk
            self.do(Action("admin_abort"))

    @rule(action=st.sampled_from(ALL_ACTIONS))
    def refused(self, action: Action) -> None:
        if not action.allowed(self.state.status):
            self.do(action)


SagaMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSagaMachine = SagaMachine.TestCase


@given(
    shape=shapes,
    step_attempts=st.integers(1, 4),
    comp_attempts=st.integers(1, 4),
    delay=st.sampled_from([timedelta(0), SEC, 10 * SEC]),
    threshold=thresholds,
    data=st.data(),
)
@settings(max_examples=200, deadline=None)
def test_worker_outcomes_with_retry_policies_always_settle(
    shape: Shape,
    step_attempts: int,
    comp_attempts: int,
    delay: timedelta,
    threshold: timedelta,
    data: st.DataObject,
) -> None:
    """No operator, real retry policies fed with ``retry_counter``: whatever succeeds or
    fails, the saga ends COMPLETED or COMPENSATED, or stops in FAILED, within the attempts
    the policies allow, and never runs a step or a compensation more often than allowed."""
    step_policy = FixedRetry(step_attempts, delay)
    comp_policy = FixedRetry(comp_attempts, delay)
    n = len(shape.step_ids)
    state = MachineState.initial(n)
    settled: list[int] = []
    bound = 2 * n * (step_attempts + comp_attempts) + 1  # executions plus claims
    for _ in range(bound):
        if state.status.is_terminal or state.status is S.FAILED:
            break
        if state.status is S.SUSPENDED:
            action = Action("claimed")
        else:
            rolling_back = state.status is S.COMPENSATING
            policy = comp_policy if rolling_back else step_policy
            outcome = "compensation" if rolling_back else "step"
            if data.draw(st.booleans(), label="succeeds"):
                action = Action(f"{outcome}_succeeded")
            else:
                wait = policy.next_delay(state.retry_counter + 1)
                action = Action(f"{outcome}_failed", wait, threshold)
        t = try_action(action, state, shape)
        assert t is not None
        settled += check_transition(action, state, t, shape)
        state = t.state
    assert state.status in (S.COMPLETED, S.COMPENSATED, S.FAILED), "did not settle"
    assert all(s.attempts <= step_attempts for s in state.steps)
    assert all(s.compensation_attempts <= comp_attempts for s in state.steps)
    assert settled == sorted(settled, reverse=True)
    if state.status is S.FAILED and state.phase is Phase.EXECUTE:
        assert not shape.compensate_on_failure
        assert state.steps[state.cursor].attempts == step_attempts
    if state.status is S.FAILED and state.phase is Phase.COMPENSATE:
        assert state.steps[state.cursor].compensation_attempts == comp_attempts


# --- scenarios -----------------------------------------------------------------------------


def run(shape: Shape, *actions: Action) -> tuple[MachineState, list[Transition]]:
    state = MachineState.initial(len(shape.step_ids))
    transitions = []
    for action in actions:
        t = try_action(action, state, shape)
        assert t is not None, (action, state)
        transitions.append(t)
        state = t.state
    return state, transitions


OK = Action("step_succeeded")
FAIL = Action("step_failed")  # exhausted
COMP_OK = Action("compensation_succeeded")
COMP_FAIL = Action("compensation_failed")  # exhausted


def test_initial_state() -> None:
    state = MachineState.initial(3)
    assert state.status is S.RUNNING and state.phase is Phase.EXECUTE
    assert state.cursor == 0 and state.retry_counter == 0
    assert state.steps == (StepState(),) * 3
    assert StepState().status is StepStatus.PENDING


def test_happy_path_completes() -> None:
    shape = make_shape((True, False, True))
    state, ts = run(shape, OK, OK, OK)
    assert [t.schedule for t in ts] == [Schedule.hold(), Schedule.hold(), Schedule.none()]
    assert [t.state.cursor for t in ts] == [1, 2, 3]
    assert state.status is S.COMPLETED
    assert statuses(state) == [StepStatus.SUCCEEDED] * 3
    assert [s.attempts for s in state.steps] == [1, 1, 1]


def test_failure_rolls_back_newest_first() -> None:
    shape = make_shape((True, True, True, True))
    state, ts = run(shape, OK, OK, OK, FAIL, COMP_OK, COMP_OK, COMP_OK)
    assert [t.state.status for t in ts[3:]] == [S.COMPENSATING] * 3 + [S.COMPENSATED]
    assert [t.state.cursor for t in ts[3:6]] == [2, 1, 0]
    assert [t.schedule.kind for t in ts[3:]] == [ScheduleKind.HOLD] * 3 + [ScheduleKind.NONE]
    assert statuses(state) == [StepStatus.COMPENSATED] * 3 + [StepStatus.PENDING]
    assert [s.compensation_attempts for s in state.steps] == [1, 1, 1, 0]
    assert all(not t.notes for t in ts)


def test_failure_of_first_step_ends_compensated() -> None:
    state, ts = run(make_shape((True, True)), FAIL)
    assert state.status is S.COMPENSATED
    assert ts[0].schedule == Schedule.none()
    assert ts[0].notes == ()
    assert statuses(state) == [StepStatus.PENDING] * 2


def test_rollback_passes_over_steps_without_compensation_with_a_note() -> None:
    shape = make_shape((True, False, False, True))
    state, ts = run(shape, OK, OK, OK, FAIL)
    assert state.status is S.COMPENSATING and state.cursor == 0
    assert [(n["step_id"], n["status"]) for n in ts[-1].notes] == [
        ("s2", "NOTHING_TO_COMPENSATE"),
        ("s1", "NOTHING_TO_COMPENSATE"),
    ]
    assert all(n["phase"] == "compensate" for n in ts[-1].notes)
    assert statuses(state)[1:3] == [StepStatus.NOT_COMPENSATED] * 2
    state, ts = run(shape, OK, OK, OK, FAIL, COMP_OK)
    assert state.status is S.COMPENSATED and ts[-1].notes == ()


def test_rollback_with_nothing_to_undo_ends_compensated_with_notes() -> None:
    state, ts = run(make_shape((False, False, False)), OK, OK, FAIL)
    assert state.status is S.COMPENSATED
    assert [n["step_id"] for n in ts[-1].notes] == ["s1", "s0"]
    assert statuses(state) == [
        StepStatus.NOT_COMPENSATED,
        StepStatus.NOT_COMPENSATED,
        StepStatus.PENDING,
    ]


def test_skipped_step_is_passed_over_by_rollback_with_a_note() -> None:
    shape = make_shape((True, True, True), compensate_on_failure=False)
    state, _ = run(shape, OK, FAIL, Action("admin_skip"))
    assert statuses(state) == [StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.PENDING]
    assert state.status is S.RUNNING and state.cursor == 2
    t = m.admin_compensate(state, shape, lease_live=False)
    assert [(n["step_id"], n["status"]) for n in t.notes] == [("s1", "NOT_COMPENSATED")]
    assert "skipped" in t.notes[0]["reason"]
    assert t.state.status is S.COMPENSATING and t.state.cursor == 0
    assert t.schedule == Schedule.due()


def test_step_failed_without_compensate_on_failure_is_failed() -> None:
    shape = make_shape((True, True), compensate_on_failure=False)
    state, ts = run(shape, OK, FAIL)
    assert state.status is S.FAILED
    assert state.phase is Phase.EXECUTE and state.cursor == 1
    assert ts[-1].schedule == Schedule.none()
    assert state.retry_counter == 1
    assert statuses(state) == [StepStatus.SUCCEEDED, StepStatus.PENDING]


@pytest.mark.parametrize(
    ("delay", "threshold", "kind", "status"),
    [
        (timedelta(0), timedelta(0), ScheduleKind.RETRY_IN_PLACE, S.RUNNING),
        (SEC, timedelta(0), ScheduleKind.DUE, S.SUSPENDED),
        (SEC, 2 * SEC, ScheduleKind.RETRY_IN_PLACE, S.RUNNING),
        (2 * SEC, 2 * SEC, ScheduleKind.RETRY_IN_PLACE, S.RUNNING),
        (2 * SEC + timedelta(microseconds=1), 2 * SEC, ScheduleKind.DUE, S.SUSPENDED),
        (timedelta(hours=1), 5 * SEC, ScheduleKind.DUE, S.SUSPENDED),
    ],
)
def test_in_place_retry_threshold(
    delay: timedelta, threshold: timedelta, kind: ScheduleKind, status: SagaStatus
) -> None:
    shape = make_shape((True, True))
    t = m.step_failed(MachineState.initial(2), shape, delay, in_place_threshold=threshold)
    assert t.state.status is status
    assert t.schedule == Schedule(kind, delay)
    assert t.state.retry_counter == 1 and t.state.cursor == 0
    # compensations follow the same threshold, but wait in COMPENSATING
    state, _ = run(shape, OK, FAIL)
    assert state.status is S.COMPENSATING
    ct = m.compensation_failed(state, shape, delay, in_place_threshold=threshold)
    assert ct.state.status is S.COMPENSATING
    assert ct.schedule == Schedule(kind, delay)


def test_default_threshold_is_zero() -> None:
    shape = make_shape((True,))
    state = MachineState.initial(1)
    assert m.step_failed(state, shape, timedelta(0)).schedule.kind is ScheduleKind.RETRY_IN_PLACE
    assert m.step_failed(state, shape, timedelta(microseconds=1)).state.status is S.SUSPENDED


def test_retry_counter_counts_failures_and_resets_on_success() -> None:
    shape = make_shape((True, True, True))
    retry = Action("step_failed", timedelta(0))
    suspend = Action("step_failed", 10 * SEC)
    state, _ = run(shape, retry, retry, suspend)
    assert state.retry_counter == 3 and state.steps[0].attempts == 3
    state = m.claimed(state)
    assert state.status is S.RUNNING and state.retry_counter == 3
    state = m.step_succeeded(state, shape).state
    assert state.retry_counter == 0 and state.steps[0].attempts == 4
    state = m.step_failed(state, shape, SEC).state
    assert state.retry_counter == 1 and state.steps[1].attempts == 1


def test_retry_counter_resets_on_admin_retry() -> None:
    shape = make_shape((True, True), compensate_on_failure=False)
    state, _ = run(shape, Action("step_failed", SEC), Action("claimed"), FAIL)
    assert state.status is S.FAILED and state.retry_counter == 2
    t = m.admin_retry(state, shape)
    assert t.state.status is S.RUNNING and t.state.retry_counter == 0
    assert t.schedule == Schedule.due()
    assert t.state.steps == state.steps  # attempts are history, not reset


def test_retry_counter_resets_on_compensation_success_and_admin_retry() -> None:
    shape = make_shape((True, True, True))
    state, _ = run(shape, OK, OK, FAIL, Action("compensation_failed", timedelta(0)))
    assert state.status is S.COMPENSATING and state.retry_counter == 1
    state = m.compensation_succeeded(state, shape).state
    assert state.retry_counter == 0 and state.cursor == 0
    state = m.compensation_failed(state, shape, None).state
    assert state.status is S.FAILED and state.phase is Phase.COMPENSATE
    assert state.retry_counter == 1
    t = m.admin_retry(state, shape)
    assert t.state.status is S.COMPENSATING and t.state.retry_counter == 0
    assert t.state.cursor == 0 and t.schedule == Schedule.due()


def test_compensation_exhausted_stops_in_failed() -> None:
    shape = make_shape((True, True, True))
    state, ts = run(shape, OK, OK, FAIL, COMP_OK, COMP_FAIL)
    assert state.status is S.FAILED and state.cursor == 0
    assert ts[-1].schedule == Schedule.none()
    assert statuses(state) == [
        StepStatus.SUCCEEDED,
        StepStatus.COMPENSATED,
        StepStatus.PENDING,
    ]


def test_compensation_waiting_for_retry_stays_compensating() -> None:
    state, ts = run(make_shape((True, True)), OK, FAIL, Action("compensation_failed", 30 * SEC))
    assert state.status is S.COMPENSATING
    assert ts[-1].schedule == Schedule.due(30 * SEC)
    assert m.claimed(state) == state


def test_admin_skip_of_a_compensation_continues_the_rollback() -> None:
    shape = make_shape((True, True, True))
    state, _ = run(shape, OK, OK, FAIL, COMP_FAIL)
    assert state.status is S.FAILED and state.cursor == 1
    t = m.admin_skip(state, shape)
    assert t.state.status is S.COMPENSATING and t.state.cursor == 0
    assert t.schedule == Schedule.due()
    assert t.state.steps[1].status is StepStatus.NOT_COMPENSATED
    done = m.compensation_succeeded(t.state, shape)
    assert done.state.status is S.COMPENSATED


def test_admin_skip_of_the_last_compensation_ends_compensated() -> None:
    shape = make_shape((True, False))
    state, _ = run(shape, OK, FAIL, COMP_FAIL)
    t = m.admin_skip(state, shape)
    assert t.state.status is S.COMPENSATED and t.schedule == Schedule.none()
    assert statuses(t.state) == [StepStatus.NOT_COMPENSATED, StepStatus.PENDING]


def test_admin_skip_forward_continues_and_can_complete() -> None:
    shape = make_shape((True, True), compensate_on_failure=False)
    state, _ = run(shape, FAIL)
    t = m.admin_skip(state, shape)
    assert t.state.status is S.RUNNING and t.state.cursor == 1
    assert t.schedule == Schedule.due() and t.state.retry_counter == 0
    t2 = m.step_failed(t.state, shape, 5 * SEC)
    assert t2.state.status is S.SUSPENDED
    t3 = m.admin_skip(t2.state, shape)
    assert t3.state.status is S.COMPLETED and t3.schedule == Schedule.none()
    assert statuses(t3.state) == [StepStatus.SKIPPED, StepStatus.SKIPPED]


def test_admin_compensate_from_running_needs_no_live_lease() -> None:
    shape = make_shape((True, True, True))
    state, _ = run(shape, OK)
    assert state.status is S.RUNNING
    with pytest.raises(SagaStateError, match="lease") as info:
        m.admin_compensate(state, shape, lease_live=True)
    assert info.value.status == "RUNNING"
    t = m.admin_compensate(state, shape, lease_live=False)
    assert t.state.status is S.COMPENSATING and t.state.cursor == 0
    assert t.schedule == Schedule.due()


@pytest.mark.parametrize("how", ["suspended", "failed", "running", "event"])
def test_admin_compensate_with_nothing_completed_ends_compensated(how: str) -> None:
    shape = make_shape((True, True), compensate_on_failure=False)
    state = MachineState.initial(2)
    if how == "suspended":
        state = m.step_failed(state, shape, 5 * SEC).state
    elif how == "failed":
        state = m.step_failed(state, shape, None).state
    elif how == "event":
        state = m.suspended_for_event(state).state
    t = m.admin_compensate(state, shape, lease_live=False)
    assert t.state.status is S.COMPENSATED
    assert t.schedule == Schedule.none()


def test_admin_compensate_resumes_a_failed_rollback() -> None:
    shape = make_shape((True, True, True))
    state, _ = run(shape, OK, OK, FAIL, COMP_FAIL)
    t = m.admin_compensate(state, shape, lease_live=False)
    assert t.state == replace(state, status=S.COMPENSATING, retry_counter=0)
    assert t.schedule == Schedule.due()


def test_event_wait_and_notify() -> None:
    shape = make_shape((True, True))
    state, _ = run(shape, OK, Action("step_failed", timedelta(0)))
    t = m.suspended_for_event(state)
    assert t.state.status is S.SUSPENDED and t.schedule == Schedule.none()
    n = m.notified(t.state)
    assert n.state.status is S.RUNNING and n.schedule == Schedule.due()
    assert n.state.retry_counter == 1  # kept
    assert n.state.cursor == 1
    with pytest.raises(SagaStateError):
        m.notified(n.state)


def test_notify_of_a_retry_wait_runs_now() -> None:
    shape = make_shape((True,))
    state = m.step_failed(MachineState.initial(1), shape, timedelta(hours=1)).state
    n = m.notified(state)
    assert n.state.status is S.RUNNING and n.schedule == Schedule.due()


@pytest.mark.parametrize("status", sorted(ACTIVE_STATUSES))
def test_abort_from_every_active_status(status: SagaStatus) -> None:
    state = replace(MachineState.initial(2), status=status)
    t = m.admin_abort(state)
    assert t.state == replace(state, status=S.ABORTED)
    assert t.schedule == Schedule.none()


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES))
@pytest.mark.parametrize("action", ALL_ACTIONS, ids=lambda a: a.name)
def test_terminal_states_refuse_every_function(status: SagaStatus, action: Action) -> None:
    for phase in Phase:
        state = replace(MachineState.initial(2), status=status, phase=phase)
        with pytest.raises(SagaStateError) as info:
            action.apply(state, make_shape((True, True)))
        assert info.value.status == status.value
        assert isinstance(info.value, SagaError)


@pytest.mark.parametrize("status", list(SagaStatus))
@pytest.mark.parametrize("action", ALL_ACTIONS, ids=lambda a: f"{a.name}-{a.lease_live}")
def test_allowed_table(status: SagaStatus, action: Action) -> None:
    """Refusal depends on the status alone (and the lease for compensate), per the table."""
    shape = make_shape((True, True, True))
    for phase in Phase:
        base = MachineState.initial(3)
        if phase is Phase.COMPENSATE:
            base = run(shape, OK, OK, FAIL)[0]
        state = replace(base, status=status, phase=phase)
        if action.allowed(status):
            action.apply(state, shape)
        else:
            with pytest.raises(SagaStateError, match=status.value):
                action.apply(state, shape)


def test_admin_table_matches_semantics() -> None:
    assert ALLOWED["admin_retry"] == {S.SUSPENDED, S.FAILED}
    assert ALLOWED["admin_skip"] == {S.SUSPENDED, S.FAILED}
    assert ALLOWED["admin_abort"] == set(SagaStatus) - {S.COMPLETED, S.COMPENSATED, S.ABORTED}
    assert not Action("admin_compensate", lease_live=True).allowed(S.RUNNING)
    assert Action("admin_compensate", lease_live=False).allowed(S.RUNNING)
    assert not Action("admin_compensate").allowed(S.COMPENSATING)


def test_claimed_ends_a_retry_wait() -> None:
    shape = make_shape((True,))
    suspended = m.step_failed(MachineState.initial(1), shape, SEC).state
    assert m.claimed(suspended) == replace(suspended, status=S.RUNNING)
    running = MachineState.initial(1)
    assert m.claimed(running) is running
    failed = replace(running, status=S.FAILED)
    with pytest.raises(SagaStateError):
        m.claimed(failed)


def test_functions_are_pure() -> None:
    shape = make_shape((True, True))
    state = MachineState.initial(2)
    snapshot = replace(state)
    m.step_succeeded(state, shape)
    m.step_failed(state, shape, None)
    m.admin_abort(state)
    assert state == snapshot
    assert m.step_succeeded(state, shape) == m.step_succeeded(state, shape)


# --- small types ---------------------------------------------------------------------------


def test_statuses() -> None:
    assert {S.COMPLETED, S.COMPENSATED, S.ABORTED} == TERMINAL_STATUSES
    assert S.FAILED in ACTIVE_STATUSES  # counts for the one-active-saga rule
    assert set(SagaStatus) == ACTIVE_STATUSES | TERMINAL_STATUSES
    assert all(s.is_terminal == (s in TERMINAL_STATUSES) for s in SagaStatus)
    assert S.RUNNING == "RUNNING" and Phase.COMPENSATE.value == "compensate"


@given(
    status=st.sampled_from(StepStatus),
    attempts=st.integers(0, 1000),
    comp=st.integers(0, 1000),
)
def test_step_state_json_roundtrip(status: StepStatus, attempts: int, comp: int) -> None:
    step = StepState(status, attempts, comp)
    data = step.to_json("s1")
    assert data["step_id"] == "s1" and data["status"] == status.value
    assert StepState.from_json(data) == step


def test_step_state_from_partial_json() -> None:
    assert StepState.from_json({}) == StepState()


def test_shape_validation() -> None:
    with pytest.raises(ValueError):
        Shape(("a", "b"), (True,))
    with pytest.raises(ValueError):
        Shape((), ())
    assert Shape(("a",), (False,)).compensate_on_failure is True


def test_with_step_replaces_one() -> None:
    state = MachineState.initial(3)
    new = state.with_step(1, StepState(StepStatus.SUCCEEDED, 1))
    assert [s.status for s in new] == [
        StepStatus.PENDING,
        StepStatus.SUCCEEDED,
        StepStatus.PENDING,
    ]
    assert statuses(state) == [StepStatus.PENDING] * 3
