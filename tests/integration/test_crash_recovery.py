"""Crash recovery: a worker dies at each point between claim, step and checkpoint; once its
lease (1 s) expires another worker (another orchestrator, another worker id, its own
connections) takes the saga over and finishes it. Steps are at-least-once: the step in flight
at the crash runs twice, the others once, and the takeover is counted, not charged to the retry
policy.

How a crash is modelled: see ``itkit.Worker.crash`` — from the crash point nothing of the dead
worker reaches the database (no checkpoint, no renewal, no release), and its task is dropped.
Cancelling ``drive()`` by itself would model a graceful stop instead (it releases the lease).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from itkit import Harness, Worker, chain, entries, eventually

from saga_core import StepContext
from saga_core.store import SagaFilter

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)

CRASH_POINTS = ("after_claim", "in_step", "before_checkpoint", "in_compensation")


async def take_over(survivor: Worker) -> int:
    """Poll ``run_due`` on the survivor until it claims the saga (once the lease expired)."""

    async def claimed() -> int:
        return await survivor.orch.run_due()

    return await eventually(claimed, what="another worker to take the saga over", interval=0.05)


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_crash_then_takeover(h: Harness, point: str) -> None:
    p = h.probe
    h.define("flow", chain(p))
    dead = await h.worker("dead", lease=1.0)
    survivor = await h.worker("survivor", lease=1.0)
    sid = await dead.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="o-1")

    if point == "after_claim":
        (row,) = await dead.orch.engine.claim(1)
        dead.crash()  # claimed (lease taken, token rotated), never ran anything
    elif point == "in_step":
        p.block("b", only_worker="dead")  # b performs its side effect, then hangs
        runner = dead.spawn(dead.orch.run_due())
        await p.wait_started("b")
        dead.crash()
        runner.cancel()  # the process is gone: its task with it
        await asyncio.gather(runner, return_exceptions=True)
    elif point == "before_checkpoint":

        async def crash_on_return(ctx: StepContext) -> None:
            if ctx.worker == "dead":
                dead.crash()  # b's side effect is done; its result never gets recorded

        p.hooks["b"] = crash_on_return
        await dead.orch.run_due()  # ends by itself: nothing it writes arrives
    elif point == "in_compensation":
        p.fail["c"] = -1  # c fails (no retry): roll back b, then a
        gate = asyncio.Event()

        async def hang_on_dead(ctx: StepContext) -> None:
            if ctx.worker == "dead":
                await gate.wait()

        p.comp_hooks["b"] = hang_on_dead
        runner = dead.spawn(dead.orch.run_due())
        await p.wait_started("b:compensate")
        dead.crash()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    held = await h.row(sid)
    assert held.lease_owner == "dead", "the dead worker still holds the lease"
    assert held.status in ("RUNNING", "COMPENSATING")

    assert await take_over(survivor) == 1
    row = await h.row(sid)
    history = row.step_history or []
    assert row.takeover_count == 1
    assert row.retry_counter == 0, "a takeover is not a failed attempt"
    assert row.lease_owner is None and row.deadline_at is None

    if point == "in_compensation":
        assert row.status == "COMPENSATED"
        assert dict(p.effects) == {"a": 1, "b": 1, "c": 1}
        assert dict(p.comp_effects) == {"b": 2, "a": 1}, "the compensation in flight ran twice"
        assert p.undone == ["b", "a"]
        comp_b = entries(history, phase="compensate", step_id="b")
        assert [(e["status"], e["worker"]) for e in comp_b] == [("SUCCESS", "survivor")]
        return

    assert row.status == "COMPLETED"
    crashed_step_runs = 1 if point == "after_claim" else 2
    assert dict(p.effects) == {"a": 1, "b": crashed_step_runs, "c": 1}
    assert row.context["step_outputs"] == {"a": {"n": 2}, "b": {"n": 3}, "c": {"n": 4}}
    done = [(e["step_id"], e["status"], e["attempt"], e["worker"]) for e in history]
    a_worker = "survivor" if point == "after_claim" else "dead"
    assert done == [
        ("a", "SUCCESS", 1, a_worker),
        ("b", "SUCCESS", 1, "survivor"),
        ("c", "SUCCESS", 1, "survivor"),
    ]
    b_runs = [c for c in p.contexts if c.step_id == "b"]
    assert [c.attempt for c in b_runs] == [1] * crashed_step_runs
    assert len({c.idempotency_key for c in b_runs}) == 1, "same key for the re-run"
    assert len({c.token for c in b_runs}) == 1, "the step keeps its token across takeovers"


async def test_zombie_worker_cannot_overwrite_the_new_owner(h: Harness) -> None:
    """A worker cut off from the database cannot renew its lease: once the lease is known to
    have run out it cancels its own step (before another worker may take the saga over),
    and when it reaches the database again it writes nothing: fenced off, it stops."""
    p = h.probe
    h.define("flow", chain(p))
    zombie = await h.worker("zombie", lease=1.0)
    survivor = await h.worker("survivor")
    gate = p.block("b", only_worker="zombie")
    sid = await zombie.orch.start(saga_name="flow", initial_data={}, aggregation_id="o-1")
    runner = zombie.spawn(zombie.orch.run_due())
    await p.wait_started("b")
    zombie.crash()  # a network partition: it lives on, but cannot renew its lease

    assert await take_over(survivor) == 1
    finished = await h.row(sid)
    assert finished.status == "COMPLETED" and finished.takeover_count == 1

    zombie.heal()
    gate.set()  # would let the zombie's step return, had it not been cancelled
    assert await asyncio.wait_for(runner, 10) == 1
    assert p.returned["b"] == 1, "the zombie's step was cancelled when its lease ran out"
    assert await h.row(sid) == finished, "the zombie changed nothing"
    assert dict(p.effects) == {"a": 1, "b": 2, "c": 1}


async def test_graceful_stop_releases_the_lease_at_once(h: Harness) -> None:
    """The opposite of a crash: cancelling the driving task gives the saga back at once (no
    lease to wait for), records the interruption, and is no takeover and no failed attempt."""
    p = h.probe
    h.define("flow", chain(p))
    leaving = await h.worker("leaving", lease=30.0)
    other = await h.worker("other")
    p.block("b", only_worker="leaving")
    sid = await leaving.orch.start(saga_name="flow", initial_data={}, aggregation_id="o-1")
    runner = leaving.spawn(leaving.orch.run_due())
    await p.wait_started("b")
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    row = await h.row(sid)
    assert row.lease_owner is None and row.deadline_at is not None
    assert row.deadline_at <= await h.db_now(), "due now, not after the 30 s lease"
    assert await other.orch.run_due() == 1
    row = await h.row(sid)
    assert (row.status, row.takeover_count, row.retry_counter) == ("COMPLETED", 0, 0)
    statuses: list[Any] = [(e["step_id"], e["status"]) for e in row.step_history or []]
    assert statuses == [("a", "SUCCESS"), ("b", "INTERRUPTED"), ("b", "SUCCESS"), ("c", "SUCCESS")]


async def test_inline_caller_dies_and_a_worker_takes_over(h: Harness) -> None:
    """``start(inline=True)`` drives the saga under a lease like any worker: when the caller
    dies mid-step, a worker finishes the saga once the lease expires."""
    p = h.probe
    h.define("flow", chain(p))
    caller = await h.worker("caller", lease=1.0)
    survivor = await h.worker("survivor")
    p.block("b", only_worker="caller")
    starting = caller.spawn(
        caller.orch.start(saga_name="flow", initial_data={}, aggregation_id="o", inline=True)
    )
    await p.wait_started("b")
    caller.crash()
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    (saga,) = await h.store.saga_list(SagaFilter())
    assert saga.lease_owner == "caller"

    assert await take_over(survivor) == 1
    row = await h.row(saga.id)
    assert (row.status, row.takeover_count, row.retry_counter) == ("COMPLETED", 1, 0)
    assert dict(p.effects) == {"a": 1, "b": 2, "c": 1}
