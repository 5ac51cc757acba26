"""Attack: a lease overestimated from a stale ``updated_at``. ``Run.locked`` confirms the
lease after a locked write as ``deadline_at - updated_at`` of the row it got back; when the
write changed nothing (the inbox holds an event that must wait, e.g. an early reply for a
branch still running) that row is the stored one, whose ``updated_at`` dates from the last
real write while ``deadline_at`` has been pushed on by renewals (which leave ``updated_at``
alone). The worker then believes it holds the lease for as long as the row has been
untouched plus a lease, its keeper stops renewing, the lease runs out in the database and a
second worker takes the saga over while the first still runs the branch: two concurrent
executions of one step."""

from __future__ import annotations

import asyncio
from collections import Counter

from itkit import SAFETY_TIMEOUT, Harness, eventually
from pydantic import BaseModel
from regresskit import Ask, AskLog, describe

from saga_core import BaseStep, InputContext, SagaBuilder, current_step

LEASE = 2.0
LONG_S = 7.0


class Nothing(BaseModel):
    pass


class Long(BaseStep[Nothing, Nothing]):
    """Hands out its token (the other side answers at once, early), then works for a while."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.inflight = 0
        self.most = 0
        self.runs: Counter[str] = Counter()

    async def execute(self, inp: Nothing) -> Nothing:
        ctx = current_step()
        self.runs[ctx.worker] += 1
        self.inflight += 1
        self.most = max(self.most, self.inflight)
        try:
            if ctx.worker == "first":
                await self.h.observer.notify(saga_id=ctx.saga_id, token=ctx.token, event={"k": 1})
            await asyncio.sleep(LONG_S)  # the step's own work
        finally:
            self.inflight -= 1
        return Nothing()


def seen(ctx: InputContext) -> dict[str, int]:
    return {"replies": sum(1 for e in ctx.events if e.get("kind") == "reply")}


async def test_a_branch_is_never_run_twice_at_once(h: Harness) -> None:
    """No fault at all: one worker runs branch ``long`` (7 s, lease 2 s) while branch
    ``ask`` waits; an early reply for ``long`` waits in the inbox. A second worker polls."""
    log = AskLog()
    long = Long(h)
    b = SagaBuilder(parallel=True)
    b.add_step(step=Ask(log), step_id="ask", input_map=seen)  # waits: the run polls the inbox
    b.add_step(step=long, step_id="long", input_map=lambda c: Nothing())
    h.define("flow", b.build())
    first = await h.worker("first", lease=LEASE)
    second = await h.worker("second", lease=LEASE)
    sid = await first.orch.start(saga_name="flow", initial_data={}, aggregation_id="o")
    holder = first.spawn(first.orch.run_due())
    await eventually(lambda: _true(long.runs["first"] == 1), what="long to start")

    async def second_claims() -> bool:
        await second.orch.run_due()
        return bool(long.runs["second"]) or holder.done()

    stop = asyncio.get_running_loop().time() + LONG_S + 3
    taken = False
    while asyncio.get_running_loop().time() < stop:
        if await second_claims():
            taken = bool(long.runs["second"])
            break
        await asyncio.sleep(0.1)
    await asyncio.wait_for(holder, SAFETY_TIMEOUT)
    row = await h.row(sid)
    assert long.most == 1 and not taken, (
        f"branch 'long' ran on both workers at once (the first one's lease ran out while it "
        f"believed it held it): runs={dict(long.runs)}, most at once={long.most}; {describe(row)}"
    )


async def _true(value: bool) -> bool:
    return value
