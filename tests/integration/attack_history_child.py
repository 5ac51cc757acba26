"""Child process of ``test_attack_sqlite_history_append``: runs one scenario on a SQLite file
and prints the saga's final status and history counts as JSON. A hang is the parent's
timeout (a stuck checkpoint cannot be cancelled from inside the process)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from itkit import Harness, StepContext, Work, from_context

from saga_core import SagaBuilder

BRANCHES = 40


async def wide(h: Harness) -> str:
    """40 branches at once; b0 fails for good: 39 are cancelled in one checkpoint."""
    gate = asyncio.Event()

    async def hold(ctx: StepContext) -> None:
        if ctx.step_id != "b0":
            await gate.wait()

    b = SagaBuilder(parallel=True)
    for i in range(BRANCHES):
        b.add_step(step=Work(h.probe), step_id=f"b{i}", input_map=from_context)
        h.probe.hooks[f"b{i}"] = hold
    h.probe.fail["b0"] = -1
    h.define("flow", b.build())
    return "COMPENSATED"


async def full_inbox(h: Harness) -> str:
    """32 early events by name while step a runs; a finishes without waiting: 32 UNUSED."""

    async def flood(ctx: StepContext) -> None:
        for i in range(32):
            got = await h.observer.deliver(
                aggregation_id=ctx.aggregation_id, event_name=f"n{i}", event={"i": i}
            )
            assert got.accepted and got.queued, got

    h.probe.hooks["a"] = flood
    b = SagaBuilder()
    b.add_step(step=Work(h.probe), step_id="a", input_map=from_context)
    b.add_step(step=Work(h.probe), step_id="b", input_map=from_context)
    h.define("flow", b.build())
    return "COMPLETED"


async def main(scenario: str, db: str) -> None:
    h = Harness("sqlite", f"sqlite+aiosqlite:///{db}")
    await h.setup()
    want = await {"wide": wide, "full_inbox": full_inbox}[scenario](h)
    w = await h.worker(max_recoveries=1)
    w.orch.engine.unexpected_error_delay = timedelta(seconds=0.05)
    sid = await w.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="o")
    for _ in range(20):
        await w.orch.run_due()
        row = await h.row(sid)
        if row.status in (want, "FAILED"):
            break
        await asyncio.sleep(0.05)
    row = await h.row(sid)
    counts = Counter(e["status"] for e in row.step_history or [])
    print(json.dumps({"status": row.status, "counts": counts, "inbox": row.inbox}), flush=True)
    await h.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
