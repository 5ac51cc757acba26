"""Steps that wait for an event (``current_step().wait_for_event(timeout=...)`` or ``raise
WaitForEvent(...)``): the saga is SUSPENDED (history ``WAITING``), due at the timeout or
never; ``notify`` resumes it exactly once; a timeout is a failed attempt (``TIMEOUT``) under
the step's retry policy; operator actions end the wait."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from itkit import Harness, Num, Out, Work, Worker, entries, eventually, from_context, outcomes

from saga_core import (
    BaseStep,
    FixedRetry,
    InputContext,
    NoRetry,
    RetryPolicy,
    SagaBuilder,
    SagaError,
    WaitForEvent,
    current_step,
)

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


class Approval(BaseStep[Num, Out]):
    """Proceeds once an event with ``approved`` arrived; otherwise waits for one."""

    def __init__(self, timeout: Any, *, raise_directly: bool = False) -> None:
        self.timeout = timeout
        self.raise_directly = raise_directly
        self.runs = 0
        self.tokens: list[uuid.UUID] = []

    async def execute(self, inp: Num) -> Out:
        self.runs += 1
        self.tokens.append(current_step().token)
        if inp.n == 1:
            return Out(n=inp.n)
        if self.raise_directly:
            raise WaitForEvent(self.timeout)
        current_step().wait_for_event(timeout=self.timeout)


def approved(ctx: InputContext) -> Num:
    return Num(n=1 if (ctx.latest_event or {}).get("approved") else 0)


def define(h: Harness, step: BaseStep[Any, Any], retry: RetryPolicy | None = None) -> None:
    b = SagaBuilder()
    b.add_step(step=Work(h.probe), step_id="a", input_map=from_context)
    b.add_step(step=step, step_id="approve", input_map=approved, retry_policy=retry)
    h.define("flow", b.build())


async def start(w: Worker) -> uuid.UUID:
    return await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)


async def test_wait_without_timeout_then_notify_exactly_once(h: Harness) -> None:
    step = Approval(None)
    define(h, step)
    w = await h.worker()
    sid = await start(w)
    row = await h.row(sid)
    assert row.status == "SUSPENDED" and row.deadline_at is None and row.lease_owner is None
    assert row.retry_counter == 0
    waiting = entries(row.step_history or [], step_id="approve")[-1]
    assert (waiting["phase"], waiting["status"], waiting["attempt"]) == ("execute", "WAITING", 1)
    assert row.context["waits"]["approve"]["until"] is None, "no timeout"
    assert await w.orch.run_due() == 0

    token = step.tokens[-1]
    assert token == row.step_execution_token, "current_step().token is the notify token"
    assert await w.orch.notify(saga_id=sid, token=token, event={"approved": True})
    assert not await w.orch.notify(saga_id=sid, token=token, event={"approved": True})
    assert "waits" not in (await h.row(sid)).context
    assert await w.orch.run_due() == 1
    done = await h.row(sid)
    assert done.status == "COMPLETED" and step.runs == 2
    assert [o for o in outcomes(done.step_history or []) if o[1] == "approve"] == [
        ("execute", "approve", "WAITING"),
        ("event", "approve", "RECEIVED"),
        ("event", "approve", "REFUSED"),  # the duplicate: its token is spent
        ("execute", "approve", "SUCCESS"),
    ]
    assert done.steps_state[1]["attempts"] == 1, "a wait is not an attempt"


async def test_an_event_that_does_not_satisfy_the_step_waits_again(h: Harness) -> None:
    step = Approval(timedelta(hours=1))
    define(h, step)
    w = await h.worker()
    sid = await start(w)
    assert await w.orch.notify(saga_id=sid, token=step.tokens[-1], event={"approved": False})
    assert await w.orch.run_due() == 1
    row = await h.row(sid)
    assert row.status == "SUSPENDED" and row.deadline_at is not None
    assert row.deadline_at > await h.db_now() + timedelta(minutes=59)
    wait = row.context["waits"]["approve"]
    since, until = (datetime.fromisoformat(wait[k]) for k in ("since", "until"))
    assert until - since == timedelta(hours=1)


@pytest.mark.parametrize("raise_directly", [False, True], ids=["method", "exception"])
async def test_a_timeout_is_a_failed_attempt_under_the_retry_policy(
    h: Harness, raise_directly: bool
) -> None:
    step = Approval(0.3, raise_directly=raise_directly)
    define(h, step, FixedRetry(2, 0))
    w = await h.worker()
    sid = await start(w)
    first_token = step.tokens[-1]
    row = await h.row(sid)
    assert row.status == "SUSPENDED" and row.deadline_at is not None
    assert await w.orch.run_due() == 0, "not before the timeout"

    async def timed_out_once() -> bool:
        await w.orch.run_due()
        hist = (await h.row(sid)).step_history or []
        return any(e["status"] == "TIMEOUT" for e in hist)

    await eventually(timed_out_once, what="the first wait to time out")
    # The retry ran at once (delay 0) and waits again.
    row = await h.row(sid)
    assert row.status == "SUSPENDED" and row.retry_counter == 1 and step.runs == 2
    assert not await w.orch.notify(saga_id=sid, token=first_token, event={"approved": True}), (
        "a notify for the timed-out wait is stale"
    )

    async def finished() -> bool:
        await w.orch.run_due()
        return (await h.row(sid)).status == "COMPENSATED"

    await eventually(finished, what="the second timeout to exhaust the retries")
    hist = (await h.row(sid)).step_history or []
    assert [o for o in outcomes(hist) if o[1] == "approve"] == [
        ("execute", "approve", "WAITING"),
        ("execute", "approve", "TIMEOUT"),
        ("execute", "approve", "WAITING"),
        ("event", "approve", "REFUSED"),  # the stale notify
        ("execute", "approve", "TIMEOUT"),
    ]
    timeout = entries(hist, step_id="approve")[1]
    assert timeout["attempt"] == 1 and "no event within 0.3s" in timeout["error"]
    # Decided by the clock with no code running: no stack to record.
    assert not [e for e in hist if e["status"] == "TIMEOUT" and "traceback" in e]
    assert ("compensate", "a", "SUCCESS") in outcomes(hist)
    assert "TimeoutError" in ((await h.row(sid)).last_error or "")


async def test_notify_before_the_timeout_wins(h: Harness) -> None:
    step = Approval(5)
    define(h, step, NoRetry())
    w = await h.worker()
    sid = await start(w)
    assert await w.orch.notify(saga_id=sid, token=step.tokens[-1], event={"approved": True})
    assert await w.orch.run_due() == 1
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert all(e["status"] != "TIMEOUT" for e in row.step_history or [])


async def test_an_operator_retry_ends_the_wait_without_a_timeout(h: Harness) -> None:
    step = Approval(0.2)
    define(h, step, NoRetry())
    w = await h.worker()
    sid = await start(w)
    await w.admin.retry_step(sid, reason="poke")
    assert "waiting" not in (await h.row(sid)).context
    await asyncio.sleep(0.3)
    assert await w.orch.run_due() == 1
    row = await h.row(sid)
    assert row.status == "SUSPENDED", "the step ran again and waits again"
    assert step.runs == 2
    assert all(e["status"] != "TIMEOUT" for e in row.step_history or [])


class WaitsInCompensate(BaseStep[Num, Out]):
    async def execute(self, inp: Num) -> Out:
        return Out(n=0)

    async def compensate(self, inp: Num, out: Out) -> None:
        current_step().wait_for_event(timeout=1)


class Fails(BaseStep[Num, Out]):
    async def execute(self, inp: Num) -> Out:
        raise RuntimeError("no")


async def test_waiting_is_for_execute_only(h: Harness) -> None:
    b = SagaBuilder()
    b.add_step(
        step=WaitsInCompensate(),
        step_id="w",
        input_map=from_context,
        compensation_retry_policy=NoRetry(),
    )
    b.add_step(step=Fails(), step_id="f", input_map=from_context)
    h.define("flow", b.build())
    w = await h.worker()
    sid = await start(w)
    row = await h.row(sid)
    assert row.status == "FAILED"
    comp = entries(row.step_history or [], phase="compensate")[-1]
    assert comp["status"] == "ERROR" and comp["error_type"] == "WaitForEvent"


def test_bad_timeouts() -> None:
    for bad in (0, -1, timedelta(0), "soon", True):
        with pytest.raises(SagaError, match="timeout"):
            WaitForEvent(bad)  # type: ignore[arg-type]
    assert WaitForEvent(2).timeout == timedelta(seconds=2)
    assert WaitForEvent().timeout is None


async def test_sagactl_show_explains_the_wait(h: Harness) -> None:
    from rich.console import Console

    from sagactl.render_show import show_page

    step = Approval(timedelta(hours=1))
    define(h, step)
    w = await h.worker()
    sid = await start(w)
    console = Console(record=True, width=200, no_color=True)
    console.print(show_page(await w.admin.get_saga(sid), await h.db_now()))
    text = console.export_text()
    assert "waiting for an event, notify with the token below; the wait times out then" in text
    assert "WAITING" in text
