"""Attack: a worker that is draining (SIGTERM: "running sagas stop after the current step's
checkpoint and are released at once") must not start another step execution. A sequential
step whose early reply is already in the inbox when it waits consumes it under the row lock
(a checkpoint: WAITING, CONSUMED) and the loop runs the step again at once, without looking
at the drain flag; the same holds for ``yielding`` (a suspect waiting to run alone)."""

from __future__ import annotations

from itkit import Harness, StepContext, Work, from_context
from regresskit import REPLY, Ask, AskLog, describe, history, settle

from saga_core import InputContext, SagaBuilder


def seen(ctx: InputContext) -> dict[str, int]:
    return {"replies": sum(1 for e in ctx.events if e.get("kind") == "reply")}


async def test_draining_worker_does_not_rerun_a_step_after_consuming_an_early_event(
    h: Harness,
) -> None:
    log = AskLog()
    holder: list[object] = []

    async def respond(ctx: StepContext) -> None:
        assert await h.observer.notify(saga_id=ctx.saga_id, token=ctx.token, event=REPLY)
        # SIGTERM arrives while the step is still running.
        holder[0].orch.engine.draining = True  # type: ignore[attr-defined]

    b = SagaBuilder()
    b.add_step(step=Ask(log, respond=respond), step_id="ask", input_map=seen)
    b.add_step(step=Work(h.probe), step_id="c", input_map=from_context)
    h.define("flow", b.build())
    w = await h.worker()
    holder.append(w)
    sid = await w.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="o")
    assert await w.orch.run_due() == 1
    row = await h.row(sid)
    runs = log.of(sid)
    assert len(runs) == 1, (
        f"the draining worker ran the step again ({len(runs)} executions): {describe(row)}"
    )
    assert row.lease_owner is None and row.status == "RUNNING", describe(row)
    assert any(e["status"] == "INTERRUPTED" for e in history(row)), describe(row)
    other = await h.worker()
    row = await settle(h, other, sid)
    assert row.status == "COMPLETED", describe(row)
    assert [r.replies for r in log.of(sid)] == [0, 1]
