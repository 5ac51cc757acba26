"""Parallel branches (``SagaBuilder(parallel=True)``): steps whose dependencies are done run
concurrently under the saga's one lease, each checkpointed on its own; a branch that fails
for good cancels its running siblings and every finished step is compensated, newest first
(by the order they finished); retry waits and event waits of one branch hold only that
branch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from itkit import (
    SAFETY_TIMEOUT,
    Harness,
    Num,
    Out,
    Probe,
    Work,
    entries,
    eventually,
    from_context,
)

from saga_core import (
    BaseStep,
    FixedRetry,
    InputContext,
    RetryPolicy,
    SagaBuilder,
    SagaDefinition,
    SagaDefinitionError,
    TypeValidationError,
    current_step,
)

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)

LONG = 3600.0


def both(b: Out, c: Out) -> Num:
    """The join's input map: one argument per dependency, in the order given."""
    return Num(n=b.n * 100 + c.n)


def one(prev: Out) -> Num:
    return Num(n=prev.n)


def diamond(
    p: Probe,
    *,
    retry: Mapping[str, RetryPolicy] | None = None,
    compensate_on_failure: bool = True,
    extra: Iterable[str] = (),
) -> SagaDefinition:
    """a -> (b, c, *extra) -> d: b, c (and the extra branches) run concurrently after a; d
    joins b and c."""
    retry = retry or {}
    builder = SagaBuilder(parallel=True, compensate_on_failure=compensate_on_failure)
    comp = FixedRetry(3, 0)
    a = builder.add_step(
        step=Work(p), step_id="a", input_map=from_context, compensation_retry_policy=comp
    )
    refs = {}
    for sid in ("b", "c", *extra):
        refs[sid] = builder.add_step(
            step=Work(p),
            step_id=sid,
            input_map=one,
            depends_on=a,
            retry_policy=retry.get(sid),
            compensation_retry_policy=comp,
        )
    builder.add_step(
        step=Work(p),
        step_id="d",
        input_map=both,
        depends_on=[refs["b"], refs["c"]],
        compensation_retry_policy=comp,
    )
    return builder.build()


async def start(h: Harness, name: str = "flow", *, inline: bool = True) -> uuid.UUID:
    w = h.workers[0]
    return await w.orch.start(
        saga_name=name, initial_data={"n": 1}, aggregation_id="order-1", inline=inline
    )


def finish_order(row: Any) -> list[str]:
    done = [s for s in row.steps_state if s.get("seq")]
    return [s["step_id"] for s in sorted(done, key=lambda s: s["seq"])]


async def test_branches_run_concurrently_and_the_join_sees_both_outputs(h: Harness) -> None:
    p = h.probe
    h.define("flow", diamond(p))
    w = await h.worker()
    gates = {sid: p.block(sid) for sid in ("b", "c")}
    sid = await start(h, inline=False)
    holder = w.spawn(w.orch.run_due())
    # Both branches are inside execute at the same time: neither returned yet.
    await p.wait_started("b")
    await p.wait_started("c")
    assert p.returned["b"] == 0 and p.returned["c"] == 0
    row = await h.row(sid)
    assert row.status == "RUNNING" and row.lease_owner == w.id
    assert [s["status"] for s in row.steps_state] == ["SUCCEEDED", "PENDING", "PENDING", "PENDING"]
    gates["c"].set()
    # c's outcome is checkpointed on its own, while b still runs.
    await eventually(
        lambda: _status_of(h, sid, "c", "SUCCEEDED"), what="c's checkpoint while b runs"
    )
    assert p.returned["b"] == 0
    gates["b"].set()
    await asyncio.wait_for(holder, SAFETY_TIMEOUT)

    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert finish_order(row) == ["a", "c", "b", "d"]
    # a -> 2; b, c -> 3; d gets (b, c) in depends_on order.
    assert row.context["step_inputs"]["d"] == {"n": 303}
    assert row.context["step_outputs"]["d"] == {"n": 304}
    tokens = {c.step_id: c.token for c in p.contexts}
    assert tokens == {s["step_id"]: uuid.UUID(s["token"]) for s in row.steps_state}, (
        "each step hands out its own token"
    )
    assert len(set(tokens.values())) == 4
    assert dict(p.effects) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert row.last_error is None


async def _status_of(h: Harness, sid: uuid.UUID, step_id: str, status: str) -> bool:
    row = await h.row(sid)
    return any(s["step_id"] == step_id and s["status"] == status for s in row.steps_state)


async def test_a_failed_branch_cancels_its_siblings_and_rolls_back_newest_first(
    h: Harness,
) -> None:
    p = h.probe
    h.define("flow", diamond(p, extra=("x", "y")))
    w = await h.worker()
    gate_b = p.block("b")
    gate_x = p.block("x")
    gate_y = p.block("y")
    release_c = p.block("c")
    p.fail["y"] = -1
    sid = await start(h, inline=False)
    holder = w.spawn(w.orch.run_due())
    for s in ("b", "c", "x", "y"):
        await p.wait_started(s)
    # c finishes first, then x; b is still running when y fails for good.
    release_c.set()
    await eventually(lambda: _status_of(h, sid, "c", "SUCCEEDED"), what="c done")
    gate_x.set()
    await eventually(lambda: _status_of(h, sid, "x", "SUCCEEDED"), what="x done")
    gate_y.set()
    await asyncio.wait_for(holder, SAFETY_TIMEOUT)
    assert not gate_b.is_set()

    row = await h.row(sid)
    assert row.status == "COMPENSATED"
    # Newest first by the order they finished: x, c, then a. b was cancelled mid-flight: it
    # never finished, so there is nothing recorded to undo.
    assert p.undone == ["x", "c", "a"]
    b_entries = entries(row.step_history or [], step_id="b")
    assert [e["status"] for e in b_entries] == ["CANCELLED"]
    assert "branch y failed" in b_entries[0]["reason"]
    assert b_entries[0]["attempt"] == 1
    states = {s["step_id"]: s for s in row.steps_state}
    assert states["b"]["attempts"] == 0, "a cancelled branch is not a failed attempt"
    assert states["b"]["status"] == "PENDING"
    assert states["d"]["status"] == "PENDING" and p.effects["d"] == 0
    assert row.last_error is not None and "injected failure of y" in row.last_error


async def test_in_place_retry_of_one_branch_leaves_the_others_alone(h: Harness) -> None:
    p = h.probe
    h.define("flow", diamond(p, retry={"c": FixedRetry(3, 0.01)}))
    await h.worker()
    p.fail["c"] = 2
    sid = await start(h)
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert dict(p.effects) == {"a": 1, "b": 1, "c": 3, "d": 1}
    c_hist = [e["status"] for e in entries(row.step_history or [], step_id="c")]
    assert c_hist == ["ERROR", "ERROR", "SUCCESS"]
    c_state = next(s for s in row.steps_state if s["step_id"] == "c")
    assert c_state["attempts"] == 3 and "failures" not in c_state


async def test_a_long_retry_wait_suspends_once_the_other_branches_are_done(h: Harness) -> None:
    p = h.probe
    h.define("flow", diamond(p, retry={"c": FixedRetry(3, LONG)}))
    w = await h.worker()
    p.fail["c"] = 1
    sid = await start(h)
    row = await h.row(sid)
    assert row.status == "SUSPENDED"
    assert p.returned["b"] == 1, "b ran to the end while c waits for its retry"
    assert row.current_step_index == 2 and row.retry_counter == 1
    assert row.deadline_at is not None and row.lease_owner is None
    assert set(row.context["retry_at"]) == {"c"}
    assert await w.orch.run_due() == 0, "not due before c's retry time"

    await w.admin.retry_step(sid, reason="upstream fixed")
    await w.drain()
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert "retry_at" not in row.context
    assert dict(p.effects) == {"a": 1, "b": 1, "c": 2, "d": 1}


class Approval(BaseStep[Num, Out]):
    """Waits for an event unless one with ``approved`` arrived."""

    async def execute(self, inp: Num) -> Out:
        if inp.n == 1:
            return Out(n=7)
        current_step().wait_for_event()


def approved(prev: Out) -> Num:
    return Num(n=0)


async def test_a_branch_waiting_for_an_event_holds_only_itself(h: Harness) -> None:
    p = h.probe
    builder = SagaBuilder(parallel=True)
    a = builder.add_step(step=Work(p), step_id="a", input_map=from_context)
    b = builder.add_step(step=Work(p), step_id="b", input_map=one, depends_on=a)

    def gate(ctx: InputContext) -> Num:
        return Num(n=1 if (ctx.latest_event or {}).get("approved") else 0)

    c = builder.add_step(step=Approval(), step_id="approve", input_map=gate)
    builder.add_step(step=Work(p), step_id="d", input_map=both, depends_on=[b, c])
    h.define("flow", builder.build())
    w = await h.worker()
    sid = await start(h)
    row = await h.row(sid)
    assert row.status == "SUSPENDED" and row.deadline_at is None
    assert p.returned["a"] == 1 and p.returned["b"] == 1, "the other branch went on"
    assert list(row.context["waits"]) == ["approve"]
    assert row.steps_state[row.current_step_index]["step_id"] == "approve"

    assert await w.orch.notify(
        saga_id=sid, token=row.step_execution_token, event={"approved": True}
    )
    await w.drain()
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert row.context["step_inputs"]["d"] == {"n": 3 * 100 + 7}
    assert p.effects["b"] == 1, "b is not run again"


async def test_without_rollback_a_failed_branch_stops_failed_and_retry_runs_the_rest(
    h: Harness,
) -> None:
    p = h.probe
    h.define("flow", diamond(p, compensate_on_failure=False))
    w = await h.worker()
    gate_b = p.block("b")
    p.fail["c"] = 1
    sid = await start(h, inline=False)
    holder = w.spawn(w.orch.run_due())
    await asyncio.wait_for(holder, SAFETY_TIMEOUT)
    assert not gate_b.is_set()
    row = await h.row(sid)
    assert row.status == "FAILED"
    assert row.steps_state[row.current_step_index]["step_id"] == "c"
    assert [e["status"] for e in entries(row.step_history or [], step_id="b")] == ["CANCELLED"]
    assert p.undone == []

    p.hooks.clear()
    await w.admin.retry_step(sid, reason="fixed")
    await w.drain()
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert p.effects["b"] == 2, "b was cancelled, then ran again"
    assert p.effects["c"] == 2 and p.effects["d"] == 1


async def test_skip_of_a_failed_branch_continues_with_the_mock_output(h: Harness) -> None:
    p = h.probe
    h.define("flow", diamond(p, compensate_on_failure=False))
    w = await h.worker()
    p.fail["c"] = -1
    sid = await start(h)
    assert (await h.row(sid)).status == "FAILED"
    p.fail.clear()
    # b may have been cancelled or finished, depending on timing; the skip resumes either way.
    await w.admin.skip_step(sid, mock_output={"n": 50}, reason="done by hand")
    await w.drain()
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert row.context["step_inputs"]["d"] == {"n": 3 * 100 + 50}
    assert p.effects["c"] == 1


async def test_a_worker_lost_mid_branches_is_taken_over(h: Harness) -> None:
    p = h.probe
    h.define("flow", diamond(p))
    w1 = await h.worker(lease=1.0)
    gate_b = p.block("b", only_worker=w1.id)
    gate_c = p.block("c", only_worker=w1.id)
    sid = await start(h, inline=False)
    w1.spawn(w1.orch.run_due())
    await p.wait_started("b")
    await p.wait_started("c")
    w1.crash()
    await h.wait_lease_expired(sid)
    w2 = await h.worker(lease=30.0)
    await w2.drain()
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert p.effects["b"] == 2 and p.effects["c"] == 2, "both branches ran again on w2"
    assert row.takeover_count >= 1
    assert not gate_b.is_set() and not gate_c.is_set()


# --------------------------------------------------------------------------- definitions


def test_builder_rejects_a_cycle_naming_it() -> None:
    p = Probe()
    builder = SagaBuilder(parallel=True)
    builder.add_step(step=Work(p), step_id="a", input_map=one, depends_on="c")
    builder.add_step(step=Work(p), step_id="b", input_map=one, depends_on="a")
    builder.add_step(step=Work(p), step_id="c", input_map=one, depends_on="b")
    with pytest.raises(SagaDefinitionError, match="forms a cycle: a -> b -> c -> a"):
        builder.build()


def test_builder_accepts_forward_references_in_a_graph() -> None:
    p = Probe()
    builder = SagaBuilder(parallel=True)
    builder.add_step(step=Work(p), step_id="late", input_map=one, depends_on="early")
    builder.add_step(step=Work(p), step_id="early", input_map=from_context)
    definition = builder.build()
    assert definition.parallel
    assert definition.steps[0].dependencies == ("early",)


def test_join_input_map_takes_one_argument_per_dependency() -> None:
    p = Probe()
    builder = SagaBuilder(parallel=True)
    a = builder.add_step(step=Work(p), step_id="a", input_map=from_context)
    b = builder.add_step(step=Work(p), step_id="b", input_map=one, depends_on=a)
    builder.add_step(step=Work(p), step_id="d", input_map=one, depends_on=[a, b])
    with pytest.raises(SagaDefinitionError, match="2 positional arguments"):
        builder.build()


class Other(BaseStep[Num, Num]):
    async def execute(self, inp: Num) -> Num:
        return inp


def test_join_input_map_types_are_checked_per_argument() -> None:
    p = Probe()
    builder = SagaBuilder(parallel=True)
    a = builder.add_step(step=Work(p), step_id="a", input_map=from_context)
    b = builder.add_step(step=Other(), step_id="b", input_map=one, depends_on=a)
    builder.add_step(step=Work(p), step_id="d", input_map=both, depends_on=[a, b])
    with pytest.raises(TypeValidationError, match="takes Out but receives Num"):
        builder.build()


def test_parallel_fingerprint_differs_from_the_sequential_one() -> None:
    p = Probe()

    def build(parallel: bool) -> SagaDefinition:
        builder = SagaBuilder(parallel=parallel)
        a = builder.add_step(step=Work(p), step_id="a", input_map=from_context)
        builder.add_step(step=Work(p), step_id="b", input_map=one, depends_on=a)
        return builder.build()

    assert build(True).fingerprint != build(False).fingerprint
    assert not build(False).parallel


class NamedWait(BaseStep[Num, Out]):
    """Waits for an event named ``name`` until one with ``{"kind": name}`` arrived."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def execute(self, inp: Num) -> Out:
        if inp.n == 1:
            return Out(n=1)
        current_step().wait_for_event(name=self.name)


def seen(kind: str) -> Any:
    def input_map(ctx: InputContext) -> Num:
        return Num(n=1 if any(e.get("kind") == kind for e in ctx.events) else 0)

    return input_map


async def test_branches_waiting_for_named_events_take_deliveries_by_correlation(
    h: Harness,
) -> None:
    builder = SagaBuilder(parallel=True)
    pay = builder.add_step(step=NamedWait("payment"), step_id="pay", input_map=seen("payment"))
    ok = builder.add_step(step=NamedWait("approval"), step_id="ok", input_map=seen("approval"))
    builder.add_step(step=Work(h.probe), step_id="d", input_map=both, depends_on=[pay, ok])
    h.define("flow", builder.build())
    w = await h.worker()
    sid = await start(h)
    row = await h.row(sid)
    assert row.status == "SUSPENDED"
    assert {k: w["name"] for k, w in row.context["waits"].items()} == {
        "ok": "approval",
        "pay": "payment",
    }

    assert not await w.orch.notify(aggregation_id="order-1", event_name="refund")
    assert await w.orch.notify(
        aggregation_id="order-1", event_name="payment", event={"kind": "payment"}
    )
    await w.drain()
    row = await h.row(sid)
    assert row.status == "SUSPENDED", "the approval branch still waits"
    assert {k: w["name"] for k, w in row.context["waits"].items()} == {"ok": "approval"}
    assert {s["step_id"]: s["status"] for s in row.steps_state}["pay"] == "SUCCEEDED"

    assert await w.orch.notify(
        aggregation_id="order-1", event_name="approval", event={"kind": "approval"}
    )
    await w.drain()
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    refused = [e for e in row.step_history or [] if e.get("status") == "REFUSED"]
    assert len(refused) == 1 and "refund" in refused[0]["reason"]


class Ledger(BaseStep[Num, Out]):
    transactional = True

    async def execute(self, inp: Num) -> Out:
        return Out(n=inp.n)


def test_a_parallel_saga_refuses_transactional_steps() -> None:
    builder = SagaBuilder(parallel=True)
    builder.add_step(step=Ledger(), step_id="post", input_map=from_context)
    with pytest.raises(SagaDefinitionError, match="transactional steps are not supported"):
        builder.build()
