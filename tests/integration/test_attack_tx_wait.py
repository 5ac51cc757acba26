"""Attack: a transactional step that waits for an event (docs/concepts.md: "A step that raises, times
out or waits for an event (WaitForEvent) ... leave none of the step's rows"). On SQLite the
step's transaction holds this process's write lock until the run's checkpoint; the write that
suspends the step for its event is made under the row lock *before* that transaction is
closed, and waits for the lock the step's own transaction holds: the worker hangs."""

from __future__ import annotations

import asyncio

from itkit import Harness
from pydantic import BaseModel
from regresskit import REPLY, describe, settle

from saga_core import BaseStep, SagaBuilder, current_step


class Seen(BaseModel):
    replies: int = 0


class Done(BaseModel):
    replies: int


class TxAsk(BaseStep[Seen, Done]):
    transactional = True

    def __init__(self) -> None:
        self.tokens: list[object] = []

    async def execute(self, inp: Seen) -> Done:
        ctx = current_step()
        self.tokens.append(ctx.token)
        if inp.replies:
            return Done(replies=inp.replies)
        ctx.wait_for_event(name="ok")


async def test_a_transactional_step_can_wait_for_an_event(h: Harness) -> None:
    step = TxAsk()
    b = SagaBuilder()
    b.add_step(
        step=step,
        step_id="ask",
        input_map=lambda c: Seen(replies=sum(1 for e in c.events if e.get("kind") == "reply")),
    )
    h.define("flow", b.build())
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="o")
    try:
        await asyncio.wait_for(w.orch.run_due(), 15)
    except TimeoutError:
        raise AssertionError(
            f"the worker hung suspending a transactional step: {describe(await h.row(sid))}"
        ) from None
    row = await h.row(sid)
    assert row.status == "SUSPENDED", describe(row)
    assert await w.orch.notify(aggregation_id="o", event_name="ok", event=REPLY)
    row = await settle(h, w, sid)
    assert row.status == "COMPLETED", describe(row)
