"""Attack: operator actions and step tokens. I11_SEMANTICS: a step's token is rotated when
"an operator acts on the saga (retry, skip, compensate, abort end every wait)"; SEMANTICS.md:
after an action that resumes work the saga is due now "with a new token". A step that handed
out its token and then failed (waiting for its retry time, not for an event) keeps that
token through an operator's retry: a late reply to the abandoned attempt is still accepted."""

from __future__ import annotations

import pytest
from itkit import Harness, Work, from_context
from regresskit import REPLY, Ask, AskLog, describe

from saga_core import FixedRetry, InputContext, SagaBuilder


def seen(ctx: InputContext) -> dict[str, int]:
    return {"replies": sum(1 for e in ctx.events if e.get("kind") == "reply")}


@pytest.mark.xfail(
    strict=True,
    reason="contract conflict for the lead: I11_SEMANTICS says a step's token is rotated when "
    "an operator acts on the saga and SEMANTICS.md promises a new token after an action that "
    "resumes work, but test_step_context.py::test_idempotency_key_survives_a_new_claim "
    "asserts that an operator retry keeps it (the code rotates only waiting steps' tokens)",
)
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
