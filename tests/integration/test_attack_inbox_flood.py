"""Attack: inbox flooding with big events nobody waits for. While a worker holds a saga in
forward execution, a delivery by name is accepted for *any* name ("a step in flight may be
about to wait for it"), up to 32 events and 4 x ``max_payload_bytes`` at once. Each such
event is recorded in full in its ``RECEIVED`` history entry, then dropped as ``UNUSED`` when
the step finishes, which empties the inbox for the next flood. Refusals are bounded (a
summary, 100 entries, then a counter), but these accepted-then-unused events are not: a
sender that knows the aggregation id grows the history by megabytes per step execution, so
a long saga (a polling step retried 80 times, say) reaches hundreds of MB — PostgreSQL's
JSONB limit is 255 MB — and every delivery, which reads and rewrites the whole history,
slows down (measured: 3 steps, 96 x 100 KB events accepted, a 9.6 MB history, deliveries up
to 0.86 s each, the saga took 39 s on PostgreSQL)."""

from __future__ import annotations

import asyncio
import json

from itkit import Harness, StepContext, Work, from_context
from regresskit import describe, event_entries, history

from saga_core import SagaBuilder

STEPS = ("a", "b")
FLOOD = 16
BLOB = 64_000
BOUND = 1_000_000


async def test_unused_early_events_do_not_grow_the_history_without_bound(h: Harness) -> None:
    accepted: list[bool] = []

    async def flood(ctx: StepContext) -> None:
        # Whoever knows the business key sends events under names no step waits for.
        for i in range(FLOOD):
            got = await h.observer.deliver(
                aggregation_id=ctx.aggregation_id,
                event_name=f"noise-{ctx.step_id}-{i}",
                event={"blob": "x" * BLOB},
            )
            accepted.append(got.accepted)

    for sid in STEPS:
        h.probe.hooks[sid] = flood
    b = SagaBuilder()
    for sid in STEPS:
        b.add_step(step=Work(h.probe), step_id=sid, input_map=from_context)
    h.define("flow", b.build())
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="o")
    await asyncio.wait_for(w.orch.run_due(), 60)
    row = await h.row(sid)
    assert row.status == "COMPLETED", describe(row)
    size = len(json.dumps(history(row)))
    unused = event_entries(row, "UNUSED")
    assert size < BOUND, (
        f"{sum(accepted)} of {len(accepted)} events for names no step waits for were accepted "
        f"and {len(unused)} dropped as UNUSED; the history of a 2-step saga is {size} bytes"
    )
