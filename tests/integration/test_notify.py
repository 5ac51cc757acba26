"""``notify``: accepted only for a SUSPENDED saga with its current token; the event is stored
and seen by the step when it runs again; otherwise ``False`` and nothing changed but a
``REFUSED`` history entry."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from itkit import (
    LONG_WAIT,
    Harness,
    Num,
    Worker,
    assert_refused,
    chain,
    define_standard,
    entries,
    reach,
)

from saga_core import FixedRetry, InputContext, SagaInputError, SagaNotFoundError

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


def define_event_flow(h: Harness, seen: list[InputContext]) -> None:
    """a, then b, whose input comes from the latest event; b fails (and waits an hour) until
    told otherwise."""

    def from_event(ctx: InputContext) -> Num:
        seen.append(ctx)
        return Num(n=int((ctx.latest_event or {}).get("n", 0)))

    h.define(
        "flow",
        chain(
            h.probe,
            ["a", "b"],
            retry={"b": FixedRetry(5, LONG_WAIT)},
            input_map={"b": from_event},
        ),
    )


async def suspended(h: Harness, w: Worker) -> uuid.UUID:
    h.probe.fail["b"] = 1
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    assert (await h.row(sid)).status == "SUSPENDED"
    return sid


async def test_notify_resumes_a_suspended_saga_with_the_event(h: Harness) -> None:
    seen: list[InputContext] = []
    define_event_flow(h, seen)
    w = await h.worker()
    sid = await suspended(h, w)
    before = await h.row(sid)

    event = {"n": 41, "source": "payment-service"}
    assert await w.orch.notify(saga_id=sid, token=before.step_execution_token, event=event)
    after = await h.row(sid)
    now = await h.db_now()
    assert after.status == "RUNNING"
    assert after.deadline_at is not None and after.deadline_at <= now, "due now"
    assert after.lease_owner is None
    assert after.step_execution_token != before.step_execution_token, "new token"
    assert after.retry_counter == before.retry_counter == 1, "the retry counter is kept"
    assert after.context["events"] == [event]
    assert after.context["latest_event"] == event
    last = (after.step_history or [])[-1]
    assert (last["phase"], last["status"], last["step_id"], last["event"]) == (
        "event",
        "RECEIVED",
        "b",
        event,
    )

    await w.drain()
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert seen[-1].latest_event == event and seen[-1].events == [event]
    b_runs = entries(row.step_history or [], phase="execute", step_id="b")
    assert [(e["status"], e["input"]) for e in b_runs] == [
        ("ERROR", {"n": 0}),
        ("SUCCESS", {"n": 41}),
    ]
    assert row.context["step_outputs"]["b"] == {"n": 42}


async def test_events_accumulate(h: Harness) -> None:
    seen: list[InputContext] = []
    define_event_flow(h, seen)
    w = await h.worker()
    sid = await suspended(h, w)
    h.probe.fail["b"] = 1  # still failing after the first event
    assert await w.orch.notify(
        saga_id=sid, token=(await h.row(sid)).step_execution_token, event={"n": 1}
    )
    await w.drain()
    assert (await h.row(sid)).status == "SUSPENDED"
    token = (await h.row(sid)).step_execution_token
    assert await w.orch.notify(saga_id=sid, token=token, event={"n": 2})
    await w.drain()
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert row.context["events"] == [{"n": 1}, {"n": 2}]
    assert seen[-1].events == [{"n": 1}, {"n": 2}] and seen[-1].latest_event == {"n": 2}


async def test_notify_without_an_event(h: Harness) -> None:
    define_event_flow(h, [])
    w = await h.worker()
    sid = await suspended(h, w)
    assert await w.orch.notify(saga_id=sid, token=(await h.row(sid)).step_execution_token)
    row = await h.row(sid)
    assert row.status == "RUNNING" and row.context["events"] == []


async def test_stale_or_wrong_token_is_refused(h: Harness) -> None:
    define_event_flow(h, [])
    w = await h.worker()
    sid = await suspended(h, w)
    first = await h.row(sid)
    for token in (uuid.uuid4(), str(uuid.uuid4())):
        before = await h.row(sid)
        assert not await w.orch.notify(saga_id=sid, token=token, event={"n": 1})  # type: ignore[arg-type]
        assert_refused(before, await h.row(sid), "stale token", event={"n": 1})
    first = await h.row(sid)

    # The token is used up by the first accepted notify; the saga then suspends again.
    h.probe.fail["b"] = 1
    assert await w.orch.notify(saga_id=sid, token=first.step_execution_token, event={"n": 1})
    await w.drain()
    again = await h.row(sid)
    assert again.status == "SUSPENDED"
    assert not await w.orch.notify(saga_id=sid, token=first.step_execution_token, event={"n": 2})
    assert_refused(again, await h.row(sid), "stale token", event={"n": 2})


@pytest.mark.parametrize("case", ["COMPENSATING", "FAILED", "COMPLETED", "COMPENSATED", "ABORTED"])
async def test_notify_refused_once_forward_execution_is_over(h: Harness, case: str) -> None:
    define_standard(h)
    w = await h.worker()
    reached = await reach(h, w, case)
    try:
        before = await h.row(reached.saga_id)
        accepted = await w.orch.notify(
            saga_id=reached.saga_id, token=before.step_execution_token, event={"n": 1}
        )
        assert accepted is False
        assert_refused(before, await h.row(reached.saga_id), f"saga is {case}", event={"n": 1})
    finally:
        await reached.let_go()


async def test_notify_to_a_running_saga_nobody_holds_is_consumed_at_once(h: Harness) -> None:
    """Due but not claimed yet: the event is stored for the step, whose token is spent."""
    define_standard(h)
    w = await h.worker()
    reached = await reach(h, w, "RUNNING")
    before = await h.row(reached.saga_id)
    assert await w.orch.notify(
        saga_id=reached.saga_id, token=before.step_execution_token, event={"n": 1}
    )
    after = await h.row(reached.saga_id)
    assert after.status == "RUNNING" and after.context["events"] == [{"n": 1}]
    assert after.step_execution_token != before.step_execution_token, "the token is spent"
    assert after.inbox is None
    await w.drain()
    assert (await h.row(reached.saga_id)).status == "COMPLETED"


async def test_notify_while_the_step_runs_is_kept_then_unused(h: Harness) -> None:
    """A worker holds the saga: the event waits in the inbox for its step; the step finishes
    without waiting for it, so it is recorded as unused and dropped."""
    define_standard(h)
    w = await h.worker()
    reached = await reach(h, w, "RUNNING_LEASED")
    sid = reached.saga_id
    before = await h.row(sid)
    result = await w.orch.deliver(saga_id=sid, token=before.step_execution_token, event={"n": 1})
    assert result.accepted and result.queued and result.event_id is not None
    held = await h.row(sid)
    assert held.inbox is not None and [e["event"] for e in held.inbox] == [{"n": 1}]
    assert held.context == before.context and held.steps_state == before.steps_state
    await reached.let_go()
    await w.drain()
    done = await h.row(sid)
    assert done.status == "COMPLETED" and done.inbox is None
    events = entries(done.step_history or [], phase="event")
    assert [(e["status"], e["event_id"]) for e in events] == [
        ("RECEIVED", result.event_id),
        ("UNUSED", result.event_id),
    ]
    assert events[0]["queued"] is True and done.context["events"] == []


async def test_bad_notify_input(h: Harness) -> None:
    define_event_flow(h, [])
    w = await h.worker(max_payload_bytes=256)
    sid = await suspended(h, w)
    before = await h.row(sid)
    token = before.step_execution_token
    bad_events: list[Any] = [
        {"s": {1}},
        [1],
        "x",
        {"x": float("nan")},
        {"s": "x" * 300},
        {"s": "a\x00b"},
    ]
    for event in bad_events:
        with pytest.raises(SagaInputError):
            await w.orch.notify(saga_id=sid, token=token, event=event)
    with pytest.raises(SagaInputError):
        await w.orch.notify(saga_id=sid, token="not-a-uuid", event={})  # type: ignore[arg-type]
    assert await h.row(sid) == before
    with pytest.raises(SagaNotFoundError):
        await w.orch.notify(saga_id=uuid.uuid4(), token=token, event={})
