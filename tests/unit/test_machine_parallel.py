"""The pure state machine of parallel sagas: readiness, per-branch outcomes, settling, and a
hypothesis random walk over random graphs checking that

* a step only becomes ready once every step it depends on is done;
* finished steps get increasing sequence numbers, and a rollback undoes them newest first;
* COMPLETED exactly when every step is done; a failed branch stops the saga (rollback or
  FAILED) and each success is compensated at most once.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga_core import machine as m
from saga_core.errors import SagaStateError
from saga_core.machine import MachineState, SagaStatus, ScheduleKind, Shape, StepStatus

S = SagaStatus


def diamond(compensate_on_failure: bool = True) -> Shape:
    # a -> (b, c) -> d
    return Shape(
        step_ids=("a", "b", "c", "d"),
        has_compensation=(True, True, True, True),
        compensate_on_failure=compensate_on_failure,
        deps=((), (0,), (0,), (1, 2)),
    )


def test_ready_follows_the_graph() -> None:
    shape = diamond()
    s = MachineState.initial(4)
    assert m.ready(s, shape) == [0]
    s = m.branch_succeeded(s, shape, 0)
    assert m.ready(s, shape) == [1, 2]
    assert m.ready(s, shape, frozenset({1})) == [2]
    s = m.branch_succeeded(s, shape, 2)
    assert m.ready(s, shape) == [1], "d waits for b too"
    s = m.branch_succeeded(s, shape, 1)
    assert m.ready(s, shape) == [3]
    assert [st.seq for st in s.steps] == [1, 3, 2, 0]


def test_settle_completed_suspended_and_draining() -> None:
    shape = diamond()
    s = MachineState.initial(4)
    for i in (0, 1, 2, 3):
        s = m.branch_succeeded(s, shape, i)
    t = m.branches_settled(s, shape)
    assert t is not None and t.state.status is S.COMPLETED
    assert t.schedule.kind is ScheduleKind.NONE and t.state.cursor == 4

    s = m.branch_succeeded(MachineState.initial(4), shape, 0)
    assert m.branches_settled(s, shape) is None, "ready steps not started: hand over"
    s = m.branch_failed(s, shape, 2)
    s = m.branch_succeeded(s, shape, 1)
    assert s.steps[2].failures == 1
    t = m.branches_settled(s, shape, held=frozenset({2}), due_in=timedelta(seconds=60), focus=2)
    assert t is not None and t.state.status is S.SUSPENDED
    assert t.schedule.kind is ScheduleKind.DUE and t.schedule.delay == timedelta(seconds=60)
    assert t.state.cursor == 2 and t.state.retry_counter == 1
    t = m.branches_settled(s, shape, held=frozenset({2}), due_in=None, focus=2)
    assert t is not None and t.schedule.kind is ScheduleKind.NONE, "an event wait"


def test_a_failed_branch_rolls_back_by_finish_order() -> None:
    shape = diamond()
    s = MachineState.initial(4)
    s = m.branch_succeeded(s, shape, 0)
    s = m.branch_succeeded(s, shape, 2)  # c finishes before b fails
    s = m.branch_failed(s, shape, 1)
    t = m.branches_settled(s, shape, failed=1)
    assert t is not None and t.state.status is S.COMPENSATING
    assert t.state.cursor == 2, "c finished last: undone first"
    t = m.compensation_succeeded(t.state, shape)
    assert t.state.cursor == 0
    t = m.compensation_succeeded(t.state, shape)
    assert t.state.status is S.COMPENSATED
    assert [st.status for st in t.state.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.PENDING,
        StepStatus.COMPENSATED,
        StepStatus.PENDING,
    ]


def test_without_rollback_a_failed_branch_is_failed_then_retry_and_skip() -> None:
    shape = diamond(compensate_on_failure=False)
    s = m.branch_succeeded(MachineState.initial(4), shape, 0)
    s = m.branch_failed(s, shape, 1)
    t = m.branches_settled(s, shape, failed=1)
    assert t is not None and t.state.status is S.FAILED and t.state.cursor == 1
    r = m.admin_retry(t.state, shape)
    assert r.state.status is S.RUNNING and all(st.failures == 0 for st in r.state.steps)
    k = m.admin_skip(t.state, shape)
    assert k.state.status is S.RUNNING and k.schedule.kind is ScheduleKind.DUE
    assert k.state.steps[1].status is StepStatus.SKIPPED and k.state.steps[1].seq == 2
    assert m.ready(k.state, shape) == [2]


def test_branch_outcomes_need_a_running_saga() -> None:
    shape = diamond()
    s = MachineState(S.SUSPENDED, m.Phase.EXECUTE, 0, MachineState.initial(4).steps)
    for fn in (m.branch_succeeded, m.branch_failed):
        with pytest.raises(SagaStateError):
            fn(s, shape, 0)
    with pytest.raises(SagaStateError):
        m.branches_settled(s, shape)


@st.composite
def graphs(draw: st.DrawFn) -> Shape:
    n = draw(st.integers(min_value=1, max_value=7))
    deps = tuple(
        tuple(sorted(draw(st.sets(st.integers(min_value=0, max_value=i - 1), max_size=3))))
        if i
        else ()
        for i in range(n)
    )
    return Shape(
        step_ids=tuple(f"s{i}" for i in range(n)),
        has_compensation=tuple(draw(st.lists(st.booleans(), min_size=n, max_size=n))),
        compensate_on_failure=draw(st.booleans()),
        deps=deps,
    )


@settings(max_examples=300, deadline=None)
@given(shape=graphs(), data=st.data())
def test_random_walks_respect_the_graph_and_roll_back_newest_first(
    shape: Shape, data: st.DataObject
) -> None:
    n = len(shape.step_ids)
    s = MachineState.initial(n)
    failed: int | None = None
    while True:
        ready = m.ready(s, shape)
        for i in ready:
            for d in shape.deps[i]:  # type: ignore[index]
                assert s.steps[d].status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED)
        if not ready:
            break
        i = data.draw(st.sampled_from(ready))
        if data.draw(st.integers(0, 9)) == 0:
            s = m.branch_failed(s, shape, i)
            failed = i
            break
        s = m.branch_succeeded(s, shape, i)
    seqs = [st.seq for st in s.steps if st.seq]
    assert sorted(seqs) == list(range(1, len(seqs) + 1))
    t = m.branches_settled(s, shape, failed=failed)
    assert t is not None
    if failed is None:
        assert t.state.status is S.COMPLETED
        return
    if not shape.compensate_on_failure:
        assert t.state.status is S.FAILED and t.state.cursor == failed
        return
    undone: list[int] = []
    state = t.state
    while state.status is S.COMPENSATING:
        undone.append(state.cursor)
        state = m.compensation_succeeded(state, shape).state
    assert state.status is S.COMPENSATED
    finished = [i for i in range(n) if s.steps[i].status is StepStatus.SUCCEEDED]
    expected = sorted(
        (i for i in finished if shape.has_compensation[i]), key=lambda i: -s.steps[i].seq
    )
    assert undone == expected
    assert len(set(undone)) == len(undone), "each success compensated at most once"
    for i in finished:
        assert state.steps[i].status in (StepStatus.COMPENSATED, StepStatus.NOT_COMPENSATED)
