"""``current_step()`` inside ``execute`` and ``compensate``: what a running step knows about
itself."""

from __future__ import annotations

import uuid

import pytest
from itkit import Harness, chain, eventually

from saga_core import FixedRetry, SagaError, StepContext, current_step

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


async def test_current_step_in_execute_and_compensate(h: Harness) -> None:
    p = h.probe
    p.fail["b"] = 2  # b: fails twice, succeeds on its 3rd attempt
    p.fail["c"] = -1  # c: fails: roll back b and a
    p.fail_comp["b"] = 1  # b's compensation: fails once
    tokens_seen: list[tuple[uuid.UUID, uuid.UUID]] = []

    async def compare_token(ctx: StepContext) -> None:
        row = await h.store.saga_get(ctx.saga_id, with_history=False)
        assert row is not None
        tokens_seen.append((ctx.token, row.step_execution_token))

    p.hooks["a"] = compare_token
    h.define(
        "flow",
        chain(p, retry={"b": FixedRetry(3, 0)}, comp_retry={"b": FixedRetry(2, 0)}),
    )
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="agg-9", trace_id="trace-77", inline=True
    )
    assert (await h.row(sid)).status == "COMPENSATED"

    ctxs = p.contexts
    assert [(c.step_id, c.phase, c.attempt) for c in ctxs] == [
        ("a", "execute", 1),
        ("b", "execute", 1),
        ("b", "execute", 2),
        ("b", "execute", 3),
        ("c", "execute", 1),
        ("b", "compensate", 1),
        ("b", "compensate", 2),
        ("a", "compensate", 1),
    ]
    assert {c.saga_id for c in ctxs} == {sid}
    assert {c.trace_id for c in ctxs} == {"trace-77"}
    assert {c.aggregation_id for c in ctxs} == {"agg-9"}
    assert {c.saga_name for c in ctxs} == {"flow"}
    assert {c.worker for c in ctxs} == {w.id}
    assert tokens_seen and tokens_seen[0][0] == tokens_seen[0][1], "the saga's current token"

    def keys(step_id: str, phase: str) -> set[str]:
        return {c.idempotency_key for c in ctxs if (c.step_id, c.phase) == (step_id, phase)}

    assert len(keys("b", "execute")) == 1, "stable across retries"
    assert len(keys("b", "compensate")) == 1
    pairs = [("a", "execute"), ("b", "execute"), ("c", "execute"), ("b", "compensate")]
    all_keys = [keys(s, ph) for s, ph in [*pairs, ("a", "compensate")]]
    assert len(set().union(*all_keys)) == 5, "distinct per step and per phase"
    assert all(isinstance(k, str) for k in set().union(*all_keys))


async def test_idempotency_key_survives_a_new_claim(h: Harness) -> None:
    """A retry after a suspension runs under a new claim with the same idempotency key
    (``f"{saga_id}:{step_id}"``, not derived from the token: stable across every retry of
    that step, an operator's included) but, after an operator retry, a NEW token: an
    operator action spends every token handed out, so a late reply to the overruled attempt
    is refused. The saga's ``step_execution_token`` follows: the one the retry runs with."""
    p = h.probe
    p.fail["b"] = 1
    h.define("flow", chain(p, retry={"b": FixedRetry(2, 3600)}))
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    before = await w.orch.get_snapshot(sid)
    after = await w.admin.retry_step(sid)
    assert after.step_execution_token != before.step_execution_token
    await w.drain()
    b_runs = [c for c in p.contexts if c.step_id == "b"]
    assert [c.attempt for c in b_runs] == [1, 2]
    assert b_runs[0].token == before.step_execution_token
    assert b_runs[1].token == after.step_execution_token != b_runs[0].token
    assert b_runs[0].idempotency_key == b_runs[1].idempotency_key == f"{sid}:b"
    late = await w.orch.deliver(saga_id=sid, token=b_runs[0].token, event={"late": True})
    assert not late.accepted


async def test_a_plain_new_claim_keeps_the_token(h: Harness) -> None:
    """No operator action: a failed attempt retried after its backoff (longer than
    ``in_place_retry_max``, so the saga is released and claimed again) runs with the same
    token and idempotency key, and the saga's ``step_execution_token`` stays that token."""
    p = h.probe
    p.fail["b"] = 1
    h.define("flow", chain(p, retry={"b": FixedRetry(2, 0.3)}))
    w = await h.worker(in_place_retry_max=0.1)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    suspended = await w.orch.get_snapshot(sid)
    assert suspended.status.value == "SUSPENDED"

    async def done() -> bool:
        await w.orch.run_due()
        return (await w.orch.get_snapshot(sid)).status.value == "COMPLETED"

    await eventually(done, what="the retry of b after its backoff")
    b_runs = [c for c in p.contexts if c.step_id == "b"]
    assert [c.attempt for c in b_runs] == [1, 2]
    assert b_runs[0].token == b_runs[1].token == suspended.step_execution_token
    assert b_runs[0].idempotency_key == b_runs[1].idempotency_key


def test_current_step_outside_a_step() -> None:
    with pytest.raises(SagaError, match="only available inside"):
        current_step()
