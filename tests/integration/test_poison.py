"""Poison sagas: a step whose worker is lost every time it runs it (the step crashes or kills
its process) is quarantined after ``max_recoveries`` takeovers in a row, not retried forever.

Each "crash" is one worker claiming the saga and vanishing (``Worker.crash``) while the step
runs; the next worker's claim finds the expired lease and counts a recovery. A recorded
outcome resets the count, so only consecutive losses of the same step count.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from itkit import Harness, Worker, chain, entries, eventually
from sqlalchemy.ext.asyncio import async_sessionmaker

from saga_core import SagaError, SagaOrchestrator

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


async def crash_in_step(w: Worker, h: Harness, step: str) -> None:
    """``w`` claims the due saga, enters ``step``, and dies there."""
    h.probe.block(step, only_worker=w.id)

    async def claimed() -> int:
        return 1 if h.probe.started_event(step).is_set() else 0

    runner = w.spawn(w.orch.run_due())
    await eventually(claimed, what=f"{w.id} to start {step}")
    w.crash()
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    h.probe.started_event(step).clear()


async def test_poison_step_is_quarantined_after_max_recoveries(h: Harness) -> None:
    h.define("flow", chain(h.probe))
    starter = await h.worker("starter")
    sid = await starter.orch.start(saga_name="flow", initial_data={}, aggregation_id="p-1")
    max_recoveries = 2
    # Run 1 is the first claim (no recovery); runs 2..3 are recoveries 1..2.
    for i in range(max_recoveries + 1):
        w = await h.worker(f"doomed-{i}", lease=1.0, max_recoveries=max_recoveries)
        # Run 1 also records step a (which resets nothing: the count is 0); b is the poison.
        await crash_in_step(w, h, "b")
        await h.wait_lease_expired(sid)
        row = await h.row(sid)
        assert row.status == "RUNNING" and row.recovery_count == i

    last = await h.worker("last", lease=1.0, max_recoveries=max_recoveries)
    assert await last.orch.run_due() == 1
    row = await h.row(sid)
    assert row.status == "FAILED"
    assert row.recovery_count == max_recoveries + 1
    assert row.takeover_count == max_recoveries + 1
    assert row.last_error == (
        f"quarantined: the run of step b ended abnormally {max_recoveries + 1} times in a row "
        "(worker crashed or killed, or an unexpected error); see history"
    )
    assert row.lease_owner is None and row.deadline_at is None
    (q,) = [e for e in row.step_history or [] if e.get("status") == "QUARANTINED"]
    assert (q["phase"], q["step_id"], q["worker"]) == ("admin", "b", "last")
    assert h.probe.effects["b"] == max_recoveries + 1, "the step did not run again"
    assert not entries(row.step_history or [], phase="execute", step_id="b")

    # An operator retry resets the count: the step gets a fresh set of recoveries.
    await last.admin.retry_step(sid)
    assert (await h.row(sid)).recovery_count == 0
    assert await last.drain() >= 1
    done = await h.row(sid)
    assert done.status == "COMPLETED" and done.recovery_count == 0


async def test_recorded_outcome_resets_the_count(h: Harness) -> None:
    """Losses of different steps do not add up: a recorded outcome resets the count."""
    h.define("flow", chain(h.probe))
    starter = await h.worker("starter")
    sid = await starter.orch.start(saga_name="flow", initial_data={}, aggregation_id="p-2")
    w1 = await h.worker("w1", lease=1.0, max_recoveries=1)
    await crash_in_step(w1, h, "a")
    await h.wait_lease_expired(sid)
    w2 = await h.worker("w2", lease=1.0, max_recoveries=1)
    await crash_in_step(w2, h, "b")  # a recorded (reset), then b crashes
    await h.wait_lease_expired(sid)
    row = await h.row(sid)
    assert (row.recovery_count, row.takeover_count) == (0, 1)
    w3 = await h.worker("w3", lease=1.0, max_recoveries=1)
    await crash_in_step(w3, h, "c")
    await h.wait_lease_expired(sid)
    survivor = await h.worker("survivor", lease=1.0, max_recoveries=1)
    assert await survivor.drain() >= 1
    row = await h.row(sid)
    assert row.status == "COMPLETED", row.last_error
    assert (row.recovery_count, row.takeover_count) == (0, 3)


@pytest.mark.sql_only
async def test_unlimited_and_invalid_settings(h: Harness) -> None:
    h.define("flow", chain(h.probe))
    w = await h.worker("w", max_recoveries=None)
    assert w.orch.engine.max_recoveries is None
    sql = h.sql_engine()
    try:
        for bad in (-1, True, 1.5, "3"):
            with pytest.raises(SagaError, match="max_recoveries"):
                SagaOrchestrator(session_maker=async_sessionmaker(sql), max_recoveries=bad)
    finally:
        await sql.dispose()


async def test_a_run_that_keeps_stopping_on_an_unexpected_error_is_quarantined(
    h: Harness,
) -> None:
    """A checkpoint refused for a reason the executor does not know (injected here into the
    engine's checkpoint writer: step b's outcome can never be written) stops the run; the
    saga is tried again after ``unexpected_error_delay`` with the lease owner kept, so each
    such run counts as a recovery and the saga ends quarantined instead of re-running b
    forever."""
    from datetime import timedelta

    h.define("flow", chain(h.probe))
    max_recoveries = 2
    w = await h.worker("w", max_recoveries=max_recoveries)
    w.orch.engine.unexpected_error_delay = timedelta(0)
    writer = w.orch.engine.writer
    real_write = writer.write

    async def refusing_write(cp: Any) -> Any:
        steps = cp.update.steps_state or []
        if any(s["step_id"] == "b" and s["status"] == "SUCCEEDED" for s in steps):
            raise RuntimeError("checkpoint refused: injected")
        return await real_write(cp)

    writer.write = refusing_write  # type: ignore[method-assign]
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="e-1")
    for _ in range(max_recoveries + 2):
        await w.orch.run_due()
    row = await h.row(sid)
    assert row.status == "FAILED", row.status
    assert row.last_error is not None and row.last_error.startswith(
        f"quarantined: the run of step b ended abnormally {max_recoveries + 1} times"
    )
    assert h.probe.effects["b"] == max_recoveries + 1, "b ran once per run, then no more"
    stopped = [e for e in row.step_history or [] if e.get("status") == "INTERRUPTED"]
    assert len(stopped) == max_recoveries + 1
    assert all("checkpoint refused: injected" in e["reason"] for e in stopped)


async def test_a_bystander_of_a_poison_saga_runs_alone_and_is_not_quarantined(
    h: Harness,
) -> None:
    """A saga that shared each dead worker with a poison saga (in flight on it at every
    crash) becomes a suspect like the poison, and suspects run on their own: the bystander
    then finishes, and only the poison is quarantined."""
    from itkit import SAFETY_TIMEOUT

    from saga_core import StepContext

    p = h.probe
    h.define("poison", chain(p, ("a", "b")))
    h.define("slow", chain(p, ("s",)))
    max_recoveries = 2
    crashed: dict[str, asyncio.Event] = {}

    async def poison_hook(ctx: StepContext) -> None:
        crashed[ctx.worker].set()  # the step brings its worker down
        await asyncio.Event().wait()

    async def bystander_hook(ctx: StepContext) -> None:
        # A step that takes a while: when the poison shares its worker, the worker dies
        # under it; alone, it finishes.
        try:
            await asyncio.wait_for(crashed[ctx.worker].wait(), timeout=1.0)
        except TimeoutError:
            return
        await asyncio.Event().wait()

    p.hooks["b"] = poison_hook
    p.hooks["s"] = bystander_hook
    starter = await h.worker("starter")
    poison = await starter.orch.start(saga_name="poison", initial_data={}, aggregation_id="p")
    slow = await starter.orch.start(saga_name="slow", initial_data={}, aggregation_id="s")
    for i in range(2 * max_recoveries + 4):
        if (await h.row(poison)).status == "FAILED" and (await h.row(slow)).status != "RUNNING":
            break
        w = await h.worker(f"w{i}", lease=1.0, max_recoveries=max_recoveries)
        crashed[w.id] = asyncio.Event()
        runner = w.spawn(w.orch.run_due())
        dead = asyncio.ensure_future(crashed[w.id].wait())
        await asyncio.wait({runner, dead}, timeout=SAFETY_TIMEOUT, return_when="FIRST_COMPLETED")
        dead.cancel()
        if crashed[w.id].is_set():
            w.crash()
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            for sid in (poison, slow):
                row = await h.row(sid)
                if row.lease_owner == w.id:
                    await h.wait_lease_expired(sid)
    bystander = await h.row(slow)
    assert bystander.status == "COMPLETED", bystander.last_error
    assert bystander.recovery_count == 0
    assert p.effects["s"] >= 2, "it was lost with the poison before running alone"
    row = await h.row(poison)
    assert row.status == "FAILED"
    assert row.last_error is not None and row.last_error.startswith("quarantined:")
