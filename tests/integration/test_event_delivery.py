"""Event delivery by correlation (``notify(aggregation_id=..., event_name=...)``) to named waits
(``wait_for_event(name=...)``), exactly-once acceptance under concurrent deliveries, and the
``REFUSED`` history record of every refused delivery (capped per saga)."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from itkit import (
    Harness,
    Num,
    Out,
    Work,
    Worker,
    assert_refused,
    define_standard,
    entries,
    eventually,
    from_context,
    outcomes,
    reach,
)

from saga_core import (
    BaseStep,
    InputContext,
    SagaBuilder,
    SagaInputError,
    SagaNotFoundError,
    WaitForEvent,
    current_step,
)
from saga_core.waits import REFUSALS_KEPT

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


class Approval(BaseStep[Num, Out]):
    """Proceeds once the latest event says ``approved``; otherwise waits for ``name``."""

    def __init__(self, name: str | None, timeout: Any = None) -> None:
        self.name = name
        self.timeout = timeout
        self.runs = 0
        self.seen: list[Any] = []

    async def execute(self, inp: Num) -> Out:
        self.runs += 1
        if inp.n == 1:
            return Out(n=1)
        current_step().wait_for_event(self.timeout, name=self.name)


class Seen:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, ctx: InputContext) -> Num:
        self.events.append(ctx.latest_event)
        return Num(n=1 if (ctx.latest_event or {}).get("approved") else 0)


def define(h: Harness, step: Approval, seen: Seen | None = None) -> None:
    b = SagaBuilder()
    b.add_step(step=Work(h.probe), step_id="a", input_map=from_context)
    b.add_step(step=step, step_id="approve", input_map=seen or Seen())
    h.define("flow", b.build())


async def start(w: Worker, aggregation_id: str = "order-7", *, inline: bool = True) -> uuid.UUID:
    return await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id=aggregation_id, inline=inline
    )


def received(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries(history, phase="event") if e["status"] == "RECEIVED"]


def refused(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries(history, phase="event") if e["status"] == "REFUSED"]


async def test_correlation_resumes_a_named_wait(h: Harness) -> None:
    step, seen = Approval("approval"), Seen()
    define(h, step, seen)
    w = await h.worker()
    sid = await start(w)
    before = await h.row(sid)
    assert before.status == "SUSPENDED" and before.deadline_at is None
    assert before.context["waits"]["approve"]["name"] == "approval"
    waiting = entries(before.step_history or [], step_id="approve")[-1]
    assert (waiting["status"], waiting["event_name"]) == ("WAITING", "approval")

    event = {"approved": True, "by": "alice"}
    assert await w.orch.notify(
        aggregation_id="order-7", event_name="approval", event=event, actor="ops"
    )
    after = await h.row(sid)
    assert after.status == "RUNNING" and after.lease_owner is None
    assert after.deadline_at is not None and after.deadline_at <= await h.db_now(), "due now"
    assert after.step_execution_token != before.step_execution_token, "new token"
    assert "waits" not in after.context
    assert after.context["events"] == [event] and after.context["latest_event"] == event
    last = (after.step_history or [])[-1]
    assert {k: last[k] for k in ("phase", "status", "step_id", "event", "event_name", "actor")} == {
        "phase": "event",
        "status": "RECEIVED",
        "step_id": "approve",
        "event": event,
        "event_name": "approval",
        "actor": "ops",
    }

    assert await w.orch.run_due() == 1
    done = await h.row(sid)
    assert done.status == "COMPLETED" and step.runs == 2
    assert seen.events[-1] == event, "the step saw the event"
    assert done.context["step_outputs"]["approve"] == {"n": 1}


async def test_a_token_delivery_to_a_named_wait_records_the_name(h: Harness) -> None:
    step = Approval("approval")
    define(h, step)
    w = await h.worker()
    sid = await start(w)
    token = (await h.row(sid)).step_execution_token
    assert await w.orch.notify(saga_id=sid, token=token, event={"approved": True})
    assert received((await h.row(sid)).step_history or [])[-1]["event_name"] == "approval"


async def test_wrong_name_is_refused_and_recorded(h: Harness) -> None:
    define(h, Approval("approval"))
    w = await h.worker()
    sid = await start(w)
    before = await h.row(sid)
    result = await w.orch.deliver(
        aggregation_id="order-7", event_name="payment", event={"approved": True}, actor="bot"
    )
    assert (result.accepted, result.saga_id, result.status.value, result.reason) == (
        False,
        sid,
        "SUSPENDED",
        "waiting for 'approval', not 'payment'",
    )
    (entry,) = assert_refused(
        before,
        await h.row(sid),
        "waiting for 'approval', not 'payment'",
        event={"approved": True},
        name="payment",
    )
    assert entry["actor"] == "bot" and entry["step_id"] == "approve"
    assert not await w.orch.notify(aggregation_id="order-7", event_name="Approval")  # exact name


async def test_unnamed_wait_refuses_correlation(h: Harness) -> None:
    define(h, Approval(None))
    w = await h.worker()
    sid = await start(w)
    before = await h.row(sid)
    assert before.context["waits"]["approve"]["name"] is None
    assert not await w.orch.notify(aggregation_id="order-7", event_name="approval")
    assert_refused(
        before,
        await h.row(sid),
        "saga is waiting for an unnamed event (deliver it with saga_id and token)",
        name="approval",
    )


@pytest.mark.parametrize("case", ["SUSPENDED", "RUNNING", "FAILED"])
async def test_correlation_refused_unless_waiting_for_the_name(h: Harness, case: str) -> None:
    define_standard(h)
    w = await h.worker()
    reached = await reach(h, w, case, aggregation_id="order-9")
    before = await h.row(reached.saga_id)
    assert not await w.orch.notify(aggregation_id="order-9", event_name="x", event={"n": 1})
    why = {
        "SUSPENDED": "saga is SUSPENDED to retry a failed step, not waiting for an event",
        "RUNNING": "saga is RUNNING, not waiting for an event",
        "FAILED": "saga is FAILED, not waiting for an event",
    }[case]
    assert_refused(before, await h.row(reached.saga_id), why, event={"n": 1}, name="x")


async def test_late_delivery_after_completion_is_refused_and_recorded(h: Harness) -> None:
    step = Approval("approval")
    define(h, step)
    w = await h.worker()
    old = await start(w)
    token = (await h.row(old)).step_execution_token
    assert await w.orch.notify(
        aggregation_id="order-7", event_name="approval", event={"approved": True}
    )
    await w.drain()
    assert (await h.row(old)).status == "COMPLETED"

    # A second saga for the same business key, finished too: refusals go to the newest.
    sid = await start(w)
    assert await w.orch.notify(
        saga_id=sid, token=(await h.row(sid)).step_execution_token, event={"approved": True}
    )
    await w.drain()
    done = await h.row(sid)
    assert done.status == "COMPLETED"
    old_before = await h.row(old)

    late = {"approved": True, "resent": True}
    assert not await w.orch.notify(aggregation_id="order-7", event_name="approval", event=late)
    mid = await h.row(sid)
    assert_refused(
        done,
        mid,
        "no active saga for aggregation_id 'order-7' (newest is COMPLETED)",
        event=late,
        name="approval",
    )
    assert not await w.orch.notify(saga_id=old, token=token, event=late)
    assert not await w.orch.notify(saga_id=sid, token=done.step_execution_token, event=late)
    assert_refused(mid, await h.row(sid), "saga is COMPLETED", event=late)
    assert_refused(old_before, await h.row(old), "saga is COMPLETED", event=late)
    assert step.runs == 4, "nothing ran again"


async def test_a_named_wait_times_out_like_an_unnamed_one(h: Harness) -> None:
    define(h, Approval("approval", timeout=0.2))
    w = await h.worker()
    sid = await start(w)
    row = await h.row(sid)
    wait = row.context["waits"]["approve"]
    since, until = (datetime.fromisoformat(wait[k]) for k in ("since", "until"))
    assert row.deadline_at is not None and until - since == timedelta(seconds=0.2)

    async def timed_out() -> bool:
        await w.orch.run_due()
        return any(e["status"] == "TIMEOUT" for e in (await h.row(sid)).step_history or [])

    await eventually(timed_out, what="the wait to time out")


# --------------------------------------------------------------------------- exactly once


async def _concurrently(h: Harness, n: int, deliver: Any) -> list[bool]:
    """``n`` deliveries at once, spread over several orchestrators (connection pools)."""
    senders = [await h.worker(f"sender-{i}") for i in range(5)]
    results = await asyncio.gather(*(deliver(senders[i % 5].orch, i) for i in range(n)))
    return list(results)


@pytest.mark.parametrize("form", ["token", "correlation"])
async def test_concurrent_duplicates_are_accepted_exactly_once(h: Harness, form: str) -> None:
    step, seen = Approval("approval"), Seen()
    define(h, step, seen)
    w = await h.worker()
    sid = await start(w)
    before = await h.row(sid)
    token = before.step_execution_token

    async def deliver(orch: Any, i: int) -> bool:
        event = {"approved": True, "copy": i}
        if form == "token":
            return bool(await orch.notify(saga_id=sid, token=token, event=event))
        return bool(await orch.notify(aggregation_id="order-7", event_name="approval", event=event))

    results = await _concurrently(h, 10, deliver)
    assert results.count(True) == 1
    row = await h.row(sid)
    (accepted,) = received(row.step_history or [])
    assert accepted["event"] == {"approved": True, "copy": results.index(True)}
    refusals = refused(row.step_history or [])
    assert len(refusals) == 9
    copies = {json.loads(e["event_preview"])["copy"] for e in refusals}
    assert copies == set(range(10)) - {results.index(True)}
    assert {e["reason"] for e in refusals} == {
        "stale token" if form == "token" else "saga is RUNNING, not waiting for an event"
    }
    assert row.context["events"] == [accepted["event"]]

    await w.drain()
    done = await h.row(sid)
    assert done.status == "COMPLETED"
    assert step.runs == 2, "the step ran again exactly once"
    assert outcomes(done.step_history or []).count(("execute", "approve", "SUCCESS")) == 1


async def test_token_and_correlation_race_for_one_wait(h: Harness) -> None:
    step = Approval("approval")
    define(h, step)
    w = await h.worker()
    sid = await start(w)
    token = (await h.row(sid)).step_execution_token

    async def deliver(orch: Any, i: int) -> bool:
        if i % 2:
            return bool(await orch.notify(saga_id=sid, token=token, event={"approved": True}))
        return bool(
            await orch.notify(
                aggregation_id="order-7", event_name="approval", event={"approved": True}
            )
        )

    results = await _concurrently(h, 10, deliver)
    assert results.count(True) == 1
    row = await h.row(sid)
    assert len(received(row.step_history or [])) == 1 and len(refused(row.step_history or [])) == 9
    await w.drain()
    assert (await h.row(sid)).status == "COMPLETED" and step.runs == 2


# --------------------------------------------------------------------------- a worker holds it


async def test_deliveries_while_a_worker_holds_the_saga_lose_nothing(h: Harness) -> None:
    """While a step runs: unknown tokens are refused; events by name are kept for the steps
    running then (one per name), and end UNUSED once those finish without waiting for them;
    the worker's checkpoints and every delivery's record all land."""
    step = Approval("approval")
    define(h, step)
    gate = h.probe.block("a")
    w = await h.worker()
    sid = await start(w, inline=False)
    holder = w.spawn(w.orch.run_due())
    await h.probe.wait_started("a")
    held = await h.row(sid)
    assert held.lease_owner == w.id and held.status == "RUNNING"

    sender = await h.worker("sender")

    async def deliver(i: int) -> bool:
        if i % 2:
            return bool(await sender.orch.notify(saga_id=sid, token=uuid.uuid4(), event={"i": i}))
        return bool(
            await sender.orch.notify(
                aggregation_id="order-7", event_name=f"other-{i % 6}", event={"i": i}
            )
        )

    async def let_go() -> None:
        gate.set()
        await holder

    first = await asyncio.gather(*(deliver(i) for i in range(10)))
    assert sum(first) == 3, "three names, one kept each; the rest refused"
    rest = await asyncio.gather(let_go(), *(deliver(i) for i in range(10, 30)))
    row = await h.row(sid)
    assert row.status == "SUSPENDED", "the worker's checkpoints all landed"
    assert row.context["step_outputs"]["a"] == {"n": 1}
    assert row.context["waits"]["approve"]["name"] == "approval"
    history = row.step_history or []
    accepted = sum(first) + sum(bool(r) for r in rest[1:])
    kept = [e for e in history if e.get("status") == "RECEIVED"]
    assert len(kept) == accepted and len(refused(history)) == 30 - accepted
    assert all(e["queued"] for e in kept)
    assert ("execute", "a", "SUCCESS") in outcomes(history)
    assert ("execute", "approve", "WAITING") in outcomes(history)
    assert row.lease_owner is None and row.deadline_at is None

    result = await w.orch.deliver(
        aggregation_id="order-7", event_name="approval", event={"approved": True}
    )
    assert result.accepted and not result.queued
    await w.drain()
    done = await h.row(sid)
    assert done.status == "COMPLETED" and done.inbox is None
    unused = [e for e in done.step_history or [] if e.get("status") == "UNUSED"]
    assert {e["event_id"] for e in kept} == {e["event_id"] for e in unused}, (
        "every event kept for a step that never waited for it is dropped once that step is done"
    )


# --------------------------------------------------------------------------- the cap


async def test_refusals_beyond_the_cap_are_only_counted(h: Harness) -> None:
    define(h, Approval("approval"))
    w = await h.worker()
    sid = await start(w)
    before = await h.row(sid)
    extra = 7
    for i in range(REFUSALS_KEPT + extra):
        if i % 2:
            ok = await w.orch.notify(saga_id=sid, token=uuid.uuid4(), event={"i": i})
        else:
            ok = await w.orch.notify(aggregation_id="order-7", event_name="nope", event={"i": i})
        assert not ok
    row = await h.row(sid)
    history = row.step_history or []
    old = before.step_history or []
    assert history[: len(old)] == old
    added = history[len(old) :]
    assert len(added) == REFUSALS_KEPT + 1
    assert [json.loads(e["event_preview"])["i"] for e in added[:-1]] == list(range(REFUSALS_KEPT))
    summary = added[-1]
    assert (summary["phase"], summary["status"], summary["count"]) == (
        "event",
        "REFUSALS_UNRECORDED",
        extra,
    )
    assert summary["last_reason"] == "waiting for 'approval', not 'nope'"  # i = 106
    assert summary["last_at"] >= summary["at"]
    assert replace(row, step_history=None) == replace(before, step_history=None), (
        "nothing else changed"
    )
    # Still deliverable.
    assert await w.orch.notify(
        aggregation_id="order-7", event_name="approval", event={"approved": True}
    )


# --------------------------------------------------------------------------- bad input


async def test_bad_argument_combinations_change_nothing(h: Harness) -> None:
    define(h, Approval("approval"))
    w = await h.worker()
    sid = await start(w)
    before = await h.row(sid)
    token = before.step_execution_token
    n = w.orch.notify
    forms = "exactly one of two forms"
    bad: list[tuple[dict[str, Any], str]] = [
        ({}, forms),
        ({"saga_id": sid}, forms),
        ({"token": token}, forms),
        ({"aggregation_id": "order-7"}, forms),
        ({"event_name": "approval"}, forms),
        ({"saga_id": sid, "event_name": "approval"}, forms),
        ({"saga_id": sid, "token": token, "event_name": "approval"}, forms),
        ({"saga_id": sid, "token": token, "aggregation_id": "order-7"}, forms),
        ({"aggregation_id": "order-7", "token": token}, forms),
        (
            {"saga_id": sid, "token": token, "aggregation_id": "order-7", "event_name": "x"},
            forms,
        ),
        ({"aggregation_id": "order-7", "event_name": ""}, "event_name must be"),
        ({"aggregation_id": "order-7", "event_name": "x" * 201}, "event_name must be"),
        ({"aggregation_id": "order-7", "event_name": "a\x00b"}, "event_name must be"),
        ({"aggregation_id": "order-7", "event_name": 5}, "event_name must be"),
        ({"aggregation_id": "", "event_name": "approval"}, "aggregation_id must be"),
        ({"aggregation_id": 7, "event_name": "approval"}, "aggregation_id must be"),
        ({"aggregation_id": "o\x00", "event_name": "approval"}, "aggregation_id must be"),
        (
            {"aggregation_id": "order-7", "event_name": "approval", "event": [1]},
            "event",
        ),
        (
            {"aggregation_id": "order-7", "event_name": "approval", "actor": "a\x00"},
            "actor must be",
        ),
        ({"saga_id": sid, "token": "nope"}, "token must be a UUID"),
    ]
    for kwargs, match in bad:
        with pytest.raises(SagaInputError, match=match):
            await n(**kwargs)
    assert await h.row(sid) == before
    with pytest.raises(SagaNotFoundError, match="no saga with aggregation_id 'order-8'"):
        await n(aggregation_id="order-8", event_name="approval")
    with pytest.raises(SagaNotFoundError):
        await n(saga_id=uuid.uuid4(), token=token)
    assert await h.row(sid) == before


def test_bad_wait_names() -> None:
    for bad in ("", "x" * 201, "a\x00b", 3):
        with pytest.raises(SagaInputError, match="name of an event wait"):
            WaitForEvent(name=bad)  # type: ignore[arg-type]
    wait = WaitForEvent(timedelta(seconds=3), name="approval")
    assert (wait.name, wait.timeout) == ("approval", timedelta(seconds=3))
    assert "'approval'" in str(wait)


async def test_the_cap_while_a_worker_holds_the_saga(h: Harness) -> None:
    define(h, Approval("approval"))
    gate = h.probe.block("a")
    w = await h.worker()
    sid = await start(w, inline=False)
    holder = w.spawn(w.orch.run_due())
    await h.probe.wait_started("a")
    sender = await h.worker("sender")

    async def refuse(i: int) -> bool:
        return bool(await sender.orch.notify(saga_id=sid, token=uuid.uuid4(), event={"i": i}))

    for i in range(REFUSALS_KEPT + 3):
        assert not await refuse(i)

    async def let_go() -> None:
        gate.set()
        await holder

    results = await asyncio.gather(let_go(), *(refuse(i) for i in range(200, 210)))
    assert not any(results[1:])
    row = await h.row(sid)
    assert row.status == "SUSPENDED" and row.context["step_outputs"]["a"] == {"n": 1}
    history = row.step_history or []
    assert len(refused(history)) == REFUSALS_KEPT
    (summary,) = [e for e in history if e["status"] == "REFUSALS_UNRECORDED"]
    assert summary["count"] == 3 + 10
    assert ("execute", "a", "SUCCESS") in outcomes(history)
    assert ("execute", "approve", "WAITING") in outcomes(history)
