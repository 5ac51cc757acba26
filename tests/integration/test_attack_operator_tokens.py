"""Attack: operator actions and step tokens. SEMANTICS.md: after an action that resumes work
the saga is due now "with a new token"; an operator action spends every step's token. A step
that handed out its token and then failed (waiting for its retry time, not for an event) kept
that token through an operator's retry: a late reply to the abandoned attempt was accepted."""

from __future__ import annotations

from itkit import Harness, Work, Worker, from_context
from regresskit import REPLY, Ask, AskLog, describe, settle

from saga_core import FixedRetry, InputContext, SagaBuilder, StepContext


def seen(ctx: InputContext) -> dict[str, int]:
    return {"replies": sum(1 for e in ctx.events if e.get("kind") == "reply")}


async def test_operator_retry_of_a_retry_wait_rotates_the_token(h: Harness) -> None:
    log = AskLog()
    b = SagaBuilder()
    b.add_step(step=Work(h.probe), step_id="a", input_map=from_context)
    b.add_step(
        step=Ask(log, fail_first=True),
        step_id="ask",
        input_map=seen,
        retry_policy=FixedRetry(3, 3600),
    )
    h.define("flow", b.build())
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="o", inline=True
    )
    before = await w.orch.get_snapshot(sid)
    assert before.status.value == "SUSPENDED" and before.deadline_at is not None
    (first,) = log.of(sid)
    assert before.step_execution_token == first.token
    after = await w.admin.retry_step(sid, reason="try again now")
    assert after.step_execution_token != before.step_execution_token, (
        "an operator retry must hand the step a new token"
    )
    delivered = await w.orch.deliver(saga_id=sid, token=first.token, event=REPLY)
    assert not delivered.accepted, (
        f"the abandoned attempt's token still delivers after an operator retry: "
        f"{describe(await h.row(sid))}"
    )


async def test_an_event_queued_for_an_overruled_execution_is_dropped(h: Harness) -> None:
    """The other side answered while the step ran (the event is kept in the inbox until the
    step waits), then the worker died. An operator's rollback of the abandoned saga spends
    the token the event was sent to: the event is dropped (``UNUSED``, saying why), nothing
    is left in the inbox, and the saga rolls back."""
    log = AskLog()
    dead_box: list[Worker] = []

    async def respond(ctx: StepContext) -> None:
        if ctx.worker == "dead":
            assert await h.observer.notify(saga_id=ctx.saga_id, token=ctx.token, event=REPLY)
            dead_box[0].crash()

    b = SagaBuilder()
    b.add_step(step=Work(h.probe), step_id="a", input_map=from_context)
    b.add_step(step=Ask(log, respond=respond), step_id="ask", input_map=seen)
    h.define("flow", b.build())
    dead = await h.worker("dead", lease=1.0)
    dead_box.append(dead)
    operator = await h.worker("operator")
    sid = await dead.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="o")
    await dead.orch.run_due()
    row = await h.row(sid)
    assert row.lease_owner == "dead" and len(row.inbox or []) == 1, describe(row)
    await h.wait_lease_expired(sid)
    after = await operator.admin.compensate_step(sid, reason="give up")
    assert after.step_execution_token != row.step_execution_token
    row = await h.row(sid)
    assert not row.inbox, describe(row)
    (unused,) = [e for e in row.step_history or [] if e["status"] == "UNUSED"]
    assert "operator action (COMPENSATE) spent the token" in unused["reason"], describe(row)
    row = await settle(h, operator, sid)
    assert row.status == "COMPENSATED", describe(row)
    assert [r.replies for r in log.of(sid)] == [0]
