"""The delivery rule and the inbox (``saga_core.waits``), decided on rows without a database:
which deliveries a saga accepts, whether an accepted event is consumed at once or kept for
its step, the reason recorded for the others, and what the holder does with its inbox."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from saga_core import SagaInputError, WaitForEvent
from saga_core.context import check_event_name
from saga_core.rows import WAITS_KEY, Wait, machine_state, shape_of, waits_of
from saga_core.store.base import DeadlineChange, RowUpdate, SagaRow
from saga_core.waits import INBOX_MAX, Delivering, consume, settle_inbox

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
T0, T1 = uuid.uuid4(), uuid.uuid4()


def row(
    status: str = "SUSPENDED",
    *,
    waits: dict[str, Wait] | None = None,
    held: bool = False,
    inbox: list[dict[str, Any]] | None = None,
    parallel: bool = False,
    cursor: int = 0,
    step_status: tuple[str, str] = ("PENDING", "PENDING"),
    phase: str = "execute",
) -> SagaRow:
    steps = [
        {
            "step_id": "a",
            "status": step_status[0],
            "attempts": 0,
            "compensation_attempts": 0,
            "token": str(T0),
        },
        {
            "step_id": "b",
            "status": step_status[1],
            "attempts": 0,
            "compensation_attempts": 0,
            "token": str(T1),
        },
    ]
    if parallel:
        for s in steps:
            s["after"] = []
    ctx: dict[str, Any] = {"events": [], "latest_event": None, "options": {"parallel": parallel}}
    if waits:
        ctx[WAITS_KEY] = {k: w.to_json() for k, w in waits.items()}
    return SagaRow(
        id=uuid.uuid4(),
        saga_name="s",
        aggregation_id="o-1",
        status=status,
        phase=phase,
        current_step_index=cursor,
        steps_state=steps,
        step_execution_token=T0,
        context=ctx,
        deadline_at=None if not held else NOW + timedelta(minutes=5),
        lease_owner="w1" if held else None,
        retry_counter=0,
        takeover_count=0,
        last_error=None,
        definition_fingerprint="f",
        trace_id=None,
        created_at=NOW,
        updated_at=NOW,
        finished_at=None,
        lease_token=uuid.uuid4(),
        inbox=inbox,
    )


def waiting(name: str | None = None, *, until: datetime | None = None) -> Wait:
    return Wait(NOW.isoformat(), None if until is None else until.isoformat(), name)


def by_token(r: SagaRow, token: uuid.UUID = T0) -> Delivering:
    d = Delivering(event={"n": 1}, token=token)
    d.preview(r, NOW)
    return d


def by_name(r: SagaRow, name: str = "approval") -> Delivering:
    d = Delivering(event={"n": 1}, aggregation_id="o-1", event_name=name)
    d.preview(r, NOW)
    return d


# --- by token ------------------------------------------------------------------------------


def test_a_waiting_step_takes_its_token_and_is_due_now() -> None:
    r = row(waits={"a": waiting()})
    d = Delivering(event={"n": 1}, token=T0)
    upd = d(r, NOW)
    assert isinstance(upd, RowUpdate) and d.result().accepted and not d.result().queued
    assert upd.status == "RUNNING" and upd.deadline is DeadlineChange.AFTER
    assert upd.context is not None and upd.context["events"] == [{"n": 1}]
    assert WAITS_KEY not in upd.context, "the wait is over"
    assert upd.steps_state is not None and upd.steps_state[0]["token"] != str(T0), "token spent"
    assert upd.new_lease_token is not None
    assert [e["status"] for e in upd.history] == ["RECEIVED"]


def test_a_retry_wait_takes_the_token_too() -> None:
    assert by_token(row()).reason is None


def test_refusals_by_token() -> None:
    assert by_token(row(), uuid.uuid4()).reason == "stale token"
    assert by_token(row(), T1).reason == "stale token", "not the current step of a sequential saga"
    assert by_token(row(step_status=("SUCCEEDED", "PENDING"), cursor=1)).reason == "stale token"
    for status in ("FAILED", "COMPLETED", "COMPENSATED", "ABORTED", "COMPENSATING"):
        assert by_token(row(status)).reason == f"saga is {status}"
    timed_out = row(waits={"a": waiting(until=NOW - timedelta(seconds=1))})
    assert by_token(timed_out).reason == "stale token: its wait timed out"


def test_a_running_step_gets_its_event_queued() -> None:
    r = row("RUNNING", held=True)
    d = Delivering(event={"n": 1}, token=T0)
    upd = d(r, NOW)
    assert isinstance(upd, RowUpdate) and d.result().queued
    assert upd.set_inbox and upd.inbox is not None and len(upd.inbox) == 1
    assert upd.inbox[0]["token"] == str(T0) and upd.inbox[0]["event"] == {"n": 1}
    assert upd.status is None and upd.context is None and upd.steps_state is None, "state untouched"
    assert upd.history[0]["queued"] is True
    again = row("RUNNING", held=True, inbox=upd.inbox)
    assert "duplicate" in str(by_token(again).reason)


def test_the_inbox_is_bounded() -> None:
    full = [
        {"event_id": str(i), "token": None, "name": f"n{i}", "event": {}} for i in range(INBOX_MAX)
    ]
    assert "inbox full" in str(by_token(row("RUNNING", held=True, inbox=full)).reason)
    big = Delivering(event={"x": "y" * 100}, token=T0, max_inbox_bytes=50)
    big.preview(row("RUNNING", held=True), NOW)
    assert "inbox full" in str(big.reason)


# --- by name -------------------------------------------------------------------------------


def test_by_name() -> None:
    assert by_name(row(waits={"a": waiting("approval")})).reason is None
    assert by_name(row(waits={"a": waiting("approval")}), "Approval").reason == (
        "waiting for 'approval', not 'Approval'"
    )
    assert by_name(row(waits={"a": waiting()})).reason == (
        "saga is waiting for an unnamed event (deliver it with saga_id and token)"
    )
    assert (
        by_name(row()).reason
        == "saga is SUSPENDED to retry a failed step, not waiting for an event"
    )
    assert by_name(row("RUNNING")).reason == "saga is RUNNING, not waiting for an event"
    assert by_name(row("COMPLETED")).reason == (
        "no active saga for aggregation_id 'o-1' (newest is COMPLETED)"
    )
    late = row(waits={"a": waiting("approval", until=NOW)})
    assert by_name(late).reason == "the wait for 'approval' timed out"


def test_an_early_named_event_is_kept_while_a_worker_runs_the_saga() -> None:
    d = by_name(row("RUNNING", held=True))
    assert d.reason is None and d.queued
    upd = Delivering(event={"n": 1}, aggregation_id="o-1", event_name="approval")(
        row("RUNNING", held=True), NOW
    )
    assert isinstance(upd, RowUpdate) and upd.inbox is not None
    queued = upd.inbox
    assert queued[0]["token"] is None and queued[0]["name"] == "approval"
    assert "duplicate" in str(by_name(row("RUNNING", held=True, inbox=queued)).reason)


def test_parallel_branches_each_have_their_token() -> None:
    r = row("RUNNING", held=True, parallel=True, waits={"b": waiting("b-done")})
    d = by_token(r, T1)
    assert d.reason is None and d.queued, "a sibling runs: kept for b"
    named = by_name(r, "b-done")
    assert named.reason is None and named.queued
    suspended = row(parallel=True, waits={"a": waiting(), "b": waiting("b-done")})
    upd = Delivering(event={"n": 2}, token=T1)(suspended, NOW)
    assert isinstance(upd, RowUpdate) and upd.context is not None
    assert list(waits_of(upd.context)) == ["a"], "only b's wait ends"


# --- the holder's side ----------------------------------------------------------------------


def inbox_entry(token: uuid.UUID | None, name: str | None = None) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "token": None if token is None else str(token),
        "name": name,
        "event": {"n": 9},
    }


def test_settle_consumes_unused_and_keeps() -> None:
    r = row("RUNNING", held=True, parallel=True, waits={"b": waiting("b-done")})
    state, shape = machine_state(r), shape_of(r)
    early_a = inbox_entry(T0)
    for_b = inbox_entry(None, "b-done")
    later = inbox_entry(None, "someday")
    out = settle_inbox(
        state,
        shape,
        r.context,
        r.steps_state,
        [early_a, for_b, later],
        at=NOW.isoformat(),
        now=NOW,
        in_flight=frozenset({0}),
    )
    assert out.released == [1], "b waited for it"
    assert [e["event_id"] for e in out.inbox] == [early_a["event_id"], later["event_id"]]
    assert [e["status"] for e in out.history] == ["CONSUMED"]
    assert out.context["events"] == [{"n": 9}] and "b" not in waits_of(out.context)

    done = replace(r, steps_state=[{**r.steps_state[0], "status": "SUCCEEDED"}, r.steps_state[1]])
    gone = settle_inbox(
        machine_state(done),
        shape,
        done.context,
        done.steps_state,
        [early_a],
        at=NOW.isoformat(),
        now=NOW,
    )
    assert [e["status"] for e in gone.history] == ["UNUSED"] and gone.inbox == []


def test_settle_after_the_saga_ended_drops_everything() -> None:
    r = row("COMPLETED", step_status=("SUCCEEDED", "SUCCEEDED"))
    out = settle_inbox(
        machine_state(r),
        shape_of(r),
        r.context,
        r.steps_state,
        [inbox_entry(T0), inbox_entry(None, "x")],
        at=NOW.isoformat(),
        now=NOW,
    )
    assert [e["status"] for e in out.history] == ["UNUSED", "UNUSED"] and out.inbox == []


def test_consume_without_an_event_keeps_events() -> None:
    r = row(waits={"a": waiting()})
    ctx, steps = consume(r.context, r.steps_state, 0, None)
    assert ctx["events"] == [] and WAITS_KEY not in ctx and steps[0]["token"] != str(T0)


@pytest.mark.parametrize("bad", ["", "x" * 201, "a\x00b", None, 7, "a\udcffb"])
def test_event_names_are_checked(bad: object) -> None:
    with pytest.raises(SagaInputError, match="event_name"):
        check_event_name(bad, "event_name")
    if bad is not None:  # None is no name
        with pytest.raises(SagaInputError, match="name of an event wait"):
            WaitForEvent(name=bad)  # type: ignore[arg-type]


def test_a_wait_keeps_its_name() -> None:
    assert WaitForEvent(name="x" * 200).name == "x" * 200
    assert WaitForEvent().name is None
