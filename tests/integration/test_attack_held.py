"""Attack checks that held (no finding): a crash between an early event's acceptance and its
consumption (the next claim consumes it once), an event for a waiting branch while its
sibling fails for good (recorded, never left in the inbox), and deliveries by token and by
name racing each other and an operator retry (at most one accepted, each consumed once)."""

from __future__ import annotations

import asyncio

import pytest
from itkit import Harness, StepContext, Work, eventually, from_context
from regresskit import REPLY, Ask, AskLog, assert_consumed_once, describe, history, settle

from saga_core import InputContext, SagaBuilder


def seen(ctx: InputContext) -> dict[str, int]:
    return {"replies": sum(1 for e in ctx.events if e.get("kind") == "reply")}


@pytest.mark.parametrize("shape", ["sequential", "parallel"])
async def test_crash_between_acceptance_and_consumption(h: Harness, shape: str) -> None:
    log = AskLog()
    dead_box: list = []

    async def respond(ctx: StepContext) -> None:
        if ctx.worker == "dead":
            assert await h.observer.notify(saga_id=ctx.saga_id, token=ctx.token, event=REPLY)
            dead_box[0].crash()

    b = SagaBuilder(parallel=shape == "parallel")
    b.add_step(step=Ask(log, respond=respond), step_id="ask", input_map=seen)
    b.add_step(step=Work(h.probe), step_id="c", input_map=from_context)
    h.define("flow", b.build())
    dead = await h.worker("dead", lease=1.0)
    dead_box.append(dead)
    survivor = await h.worker("survivor", lease=1.0)
    sid = await dead.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="o")
    await dead.orch.run_due()
    row = await h.row(sid)
    assert row.lease_owner == "dead" and row.inbox, describe(row)

    async def taken() -> int:
        return await survivor.orch.run_due()

    await eventually(taken, what="takeover", interval=0.05)
    row = await settle(h, survivor, sid)
    assert row.status == "COMPLETED", describe(row)
    assert [r.replies for r in log.of(sid)] == [0, 1]
    assert_consumed_once(row, queued=True)


async def test_parallel_event_for_waiting_branch_while_sibling_fails_for_good(h: Harness) -> None:
    log = AskLog()
    b = SagaBuilder(parallel=True)
    b.add_step(step=Ask(log), step_id="ask", input_map=seen)
    b.add_step(step=Work(h.probe), step_id="x", input_map=from_context)
    h.define("flow", b.build())
    gate = h.probe.block("x")
    h.probe.fail["x"] = 1
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="o")
    holder = w.spawn(w.orch.run_due())
    await h.probe.wait_started("x")
    await asyncio.wait_for(log.waiting_event(sid).wait(), 20)
    (run,) = log.of(sid)
    ok = await w.orch.notify(saga_id=sid, token=run.token, event=REPLY)
    gate.set()
    await asyncio.wait_for(holder, 20)
    row = await settle(h, w, sid)
    assert row.status == "COMPENSATED", describe(row)
    st = [
        (e["phase"], e.get("step_id"), e["status"]) for e in history(row) if e["phase"] == "event"
    ]
    if ok:
        assert ("event", "ask", "RECEIVED") in st
        assert any(s == "UNUSED" for *_, s in st) or any(s == "CONSUMED" for *_, s in st), st
    assert not row.inbox


async def test_concurrent_token_and_name_and_operator(h: Harness) -> None:
    log = AskLog()
    b = SagaBuilder()
    b.add_step(step=Ask(log, name="ok"), step_id="ask", input_map=seen)
    h.define("flow", b.build())
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="o", inline=True)
    (run,) = log.of(sid)
    results = await asyncio.gather(
        w.orch.deliver(saga_id=sid, token=run.token, event=REPLY),
        w.orch.deliver(aggregation_id="o", event_name="ok", event=REPLY),
        w.orch.deliver(saga_id=sid, token=run.token, event=REPLY),
        w.admin.retry_step(sid),
        return_exceptions=True,
    )
    accepted = [r for r in results[:3] if not isinstance(r, BaseException) and r.accepted]
    admin_ok = not isinstance(results[3], BaseException)
    assert len(accepted) + admin_ok >= 1
    assert len(accepted) <= 1, results
    row = await settle(h, w, sid)
    assert row.status == "COMPLETED", describe(row)
    assert len([e for e in row.context["events"] if e.get("kind") == "reply"]) == len(accepted)
