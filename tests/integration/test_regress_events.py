"""Regression tests of issue 11, cases 1, 2, 3 and 9: events that arrive while a worker holds
the saga (early, or while a sibling branch runs), a token that must survive re-claims, and
refusals that must stay small.

Semantics asserted (I11_SEMANTICS): a delivery by token or by name to a step that is still
running (the other side answered before the step began to wait), or to a branch of a
parallel saga while a sibling runs, is accepted (``RECEIVED`` with ``queued``) and consumed
exactly once (``CONSUMED``, same ``event_id``) when the step waits; a step's token stays the
same across claims and failed attempts; a refusal records a bounded summary (``event_bytes``),
never the whole event.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest
from itkit import Harness, Num, Out, Probe, StepContext, Work, Worker, eventually, from_context
from regresskit import (
    REPLY,
    Ask,
    AskLog,
    Done,
    assert_consumed_once,
    assert_nothing_stranded,
    describe,
    event_entries,
    history,
    json_size,
    replies,
    settle,
)

from saga_core import FixedRetry, RetryPolicy, SagaBuilder, SagaDefinition

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)

NAME = "reply"


def join(asked: Done, other: Out) -> Num:
    return Num(n=asked.replies * 100 + other.n)


def sequential(h: Harness, ask: Ask, *, ask_retry: RetryPolicy | None = None) -> SagaDefinition:
    """a -> ask -> c."""
    b = SagaBuilder()
    b.add_step(step=Work(h.probe), step_id="a", input_map=from_context)
    b.add_step(step=ask, step_id="ask", input_map=replies, retry_policy=ask_retry)
    b.add_step(step=Work(h.probe), step_id="c", input_map=from_context)
    return h.define("flow", b.build())


def parallel(h: Harness, ask: Ask, *, b_retry: RetryPolicy | None = None) -> SagaDefinition:
    """(ask, b) -> d: ask and b are sibling branches; d joins them."""
    builder = SagaBuilder(parallel=True)
    asking = builder.add_step(step=ask, step_id="ask", input_map=replies)
    other = builder.add_step(
        step=Work(h.probe), step_id="b", input_map=from_context, retry_policy=b_retry
    )
    builder.add_step(step=Work(h.probe), step_id="d", input_map=join, depends_on=[asking, other])
    return h.define("flow", builder.build())


async def deliver(w: Worker, ctx_or_token: Any, form: str, *, saga_id: uuid.UUID) -> bool:
    if form == "token":
        return await w.orch.notify(saga_id=saga_id, token=ctx_or_token, event=REPLY)
    return await w.orch.notify(aggregation_id="order-1", event_name=NAME, event=REPLY)


# --------------------------------------------------------------------------- case 1


@pytest.mark.parametrize("shape", ["sequential", "parallel"])
@pytest.mark.parametrize("form", ["token", "name"])
@pytest.mark.parametrize("how", ["await", "task", "race"])
@pytest.mark.parametrize("driver", ["inline", "run_due"])
async def test_case1_an_early_reply_is_kept_and_consumed_once(
    h: Harness, shape: str, form: str, how: str, driver: str
) -> None:
    """Issue 11 case 1 (early event): the step hands out its token (or expects a named
    event) and the other side answers at once, inside ``execute``, before the step's WAITING
    checkpoint: ``notify`` is accepted, the step sees the event exactly once, the saga
    completes and is never left SUSPENDED without a due time. ``how``: the reply is awaited
    in the step, awaited as a task the step starts, or a task racing the step's wait.
    ``parallel``: the asking step is a branch beside an instant sibling."""
    observer = h.observer
    accepted: list[bool] = []
    racing: list[asyncio.Task[bool]] = []

    async def respond(ctx: StepContext) -> None:
        if form == "token":
            call = observer.notify(saga_id=ctx.saga_id, token=ctx.token, event=REPLY)
        else:
            call = observer.notify(aggregation_id=ctx.aggregation_id, event_name=NAME, event=REPLY)
        if how == "await":
            accepted.append(await call)
        elif how == "task":
            accepted.append(await asyncio.create_task(call))
        else:
            racing.append(asyncio.create_task(call))

    log = AskLog()
    ask = Ask(log, name=NAME if form == "name" else None, respond=respond)
    (sequential if shape == "sequential" else parallel)(h, ask)
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="order-1", inline=driver == "inline"
    )
    if driver == "run_due":
        assert await w.orch.run_due() == 1
    if racing:
        accepted.extend(await asyncio.gather(*racing))
    assert accepted == [True], f"the early reply was refused: {describe(await h.row(sid))}"

    row = await settle(h, w, sid)
    assert row.status == "COMPLETED", describe(row)
    runs = log.of(sid)
    assert [r.replies for r in runs] == [0, 1], (
        f"the step saw the reply exactly once: {row.step_history}"
    )
    assert_consumed_once(row, queued=None if how == "race" else True)
    await assert_nothing_stranded(h)


# --------------------------------------------------------------------------- case 2


@pytest.mark.parametrize("form", ["token", "name"])
async def test_case2_a_reply_while_a_sibling_runs_is_accepted(h: Harness, form: str) -> None:
    """Issue 11 case 2 (parallel, event refused while a sibling runs): branch ``ask`` waits
    (by token / by name) while its sibling ``b`` still runs; the delivery to ``ask`` is
    accepted, and once ``b`` is let go the saga completes, ``ask`` having seen the event
    once."""
    log = AskLog()
    parallel(h, Ask(log, name=NAME if form == "name" else None))
    gate = h.probe.block("b")
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="order-1")
    holder = w.spawn(w.orch.run_due())
    await h.probe.wait_started("b")

    await asyncio.wait_for(log.waiting_event(sid).wait(), 20)

    async def ask_waits() -> bool:
        row = await h.row(sid)
        return any(e.get("step_id") == "ask" and e["status"] == "WAITING" for e in history(row))

    # Deliver once ask's wait is checkpointed (the case of the issue); should an
    # implementation not checkpoint it while b runs, deliver after 2 s all the same: the
    # contract (accepted, consumed once) is the same for a step about to wait.
    with contextlib.suppress(AssertionError):
        await eventually(ask_waits, what="branch ask's WAITING checkpoint", timeout=2)
    (run,) = log.of(sid)
    ok = await deliver(w, run.token, form, saga_id=sid)
    assert ok, f"refused while sibling b runs: {describe(await h.row(sid))}"

    gate.set()
    await asyncio.wait_for(holder, 20)
    row = await settle(h, w, sid)
    assert row.status == "COMPLETED", describe(row)
    assert [r.replies for r in log.of(sid)] == [0, 1]
    assert h.probe.effects["b"] == 1 and h.probe.effects["d"] == 1
    assert_consumed_once(row, queued=True)
    await assert_nothing_stranded(h)


# --------------------------------------------------------------------------- case 3


@pytest.mark.parametrize("when", ["suspended", "while_b_runs"])
async def test_case3_a_token_survives_a_reclaim_for_a_sibling_retry(h: Harness, when: str) -> None:
    """Issue 11 case 3 (parallel, token rotated): ``ask`` waits and hands out its token;
    sibling ``b`` fails and waits for a retry longer than ``in_place_retry_max``, so the saga
    is released and a worker claims it again to retry ``b``. The token ``ask`` handed out is
    still accepted afterwards: with the saga SUSPENDED again (``suspended``), or while the
    re-claimed worker runs ``b``'s retry (``while_b_runs``)."""
    log = AskLog()
    parallel(h, Ask(log), b_retry=FixedRetry(2, 1.5))
    p = h.probe
    p.fail["b"] = 1
    second_b = asyncio.Event()

    async def hold_second_attempt(ctx: StepContext) -> None:
        if ctx.attempt == 2 and when == "while_b_runs":
            await second_b.wait()

    p.hooks["b"] = hold_second_attempt
    w = await h.worker(in_place_retry_max=1.0)
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="order-1", inline=True
    )
    row = await h.row(sid)
    assert row.status == "SUSPENDED" and row.deadline_at is not None, describe(row)
    (run,) = log.of(sid)

    if when == "suspended":

        async def b_retried() -> bool:
            await w.orch.run_due()
            return p.returned["b"] == 1

        await eventually(b_retried, what="b's retry by a new claim")
        row = await h.row(sid)
        assert row.status == "SUSPENDED", describe(row)
        ok = await w.orch.notify(saga_id=sid, token=run.token, event=REPLY)
        assert ok, f"the token was refused after a re-claim: {describe(await h.row(sid))}"
    else:
        holder = w.spawn(eventually(w.orch.run_due, what="b's retry to be due"))
        await eventually(lambda: _effects(p, "b", 2), what="b's second attempt")
        ok = await w.orch.notify(saga_id=sid, token=run.token, event=REPLY)
        assert ok, f"the token was refused while b's retry runs: {describe(await h.row(sid))}"
        second_b.set()
        await asyncio.wait_for(holder, 20)

    row = await settle(h, w, sid)
    assert row.status == "COMPLETED", describe(row)
    assert [r.replies for r in log.of(sid)] == [0, 1]
    assert p.effects["b"] == 2 and p.effects["d"] == 1
    assert_consumed_once(row, queued=None)
    await assert_nothing_stranded(h)


async def _effects(p: Probe, step_id: str, n: int) -> bool:
    return bool(p.effects[step_id] >= n)


async def test_case3_sequential_token_survives_a_failed_attempt(h: Harness) -> None:
    """Issue 11 case 3, sequential form: the step hands out its token, then its attempt
    fails and is retried after a delay longer than ``in_place_retry_max`` (the saga is
    released and claimed again). The token is the same in the retry, and the reply sent with
    the first attempt's token is accepted and seen once."""
    log = AskLog()
    sequential(h, Ask(log, fail_first=True), ask_retry=FixedRetry(2, 1.5))
    w = await h.worker(in_place_retry_max=1.0)
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="order-1", inline=True
    )
    row = await h.row(sid)
    assert row.status == "SUSPENDED" and row.deadline_at is not None, describe(row)

    async def second_attempt_waits() -> bool:
        await w.orch.run_due()
        return len(log.of(sid)) == 2

    await eventually(second_attempt_waits, what="the retry of ask")
    first, second = log.of(sid)
    assert second.attempt == 2
    ok = await w.orch.notify(saga_id=sid, token=first.token, event=REPLY)
    assert ok, f"the first attempt's token was refused: {describe(await h.row(sid))}"
    assert second.token == first.token, "a step's token is the same across its attempts"
    row = await settle(h, w, sid)
    assert row.status == "COMPLETED", describe(row)
    assert [r.replies for r in log.of(sid)] == [0, 0, 1]
    assert_consumed_once(row, queued=False)


# --------------------------------------------------------------------------- case 9

BIG = 400_000
REFUSALS = 120
HISTORY_BOUND = 200_000


async def test_case9_refused_big_events_keep_the_history_small(h: Harness) -> None:
    """Issue 11 case 9 (refusal history bounded in bytes): 120 refused deliveries of 400 KB
    events (by unknown token and by a wrong name) to one waiting saga: the history stays
    under 200 KB at every point, no refusal entry holds the whole event (each records
    ``event_bytes``), refusals beyond 100 are only counted, and the saga still takes the
    right event and completes."""
    log = AskLog()
    sequential(h, Ask(log, name="approval"))
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="order-1", inline=True
    )
    before = await h.row(sid)
    assert before.status == "SUSPENDED", describe(before)
    big = {"kind": "noise", "blob": "x" * BIG}
    size = json_size(big)
    for i in range(REFUSALS):
        if i % 2:
            ok = await w.orch.notify(saga_id=sid, token=uuid.uuid4(), event=big)
        else:
            ok = await w.orch.notify(aggregation_id="order-1", event_name="other", event=big)
        assert not ok
        row = await h.row(sid)
        hist_size = json_size(history(row))
        assert hist_size < HISTORY_BOUND, (
            f"after {i + 1} refusal(s) of {size} bytes the history is {hist_size} bytes"
        )
    row = await h.row(sid)
    refusals = event_entries(row, "REFUSED")
    assert len(refusals) == 100
    for e in refusals:
        assert json_size(e) < 4096, "a refusal entry is a bounded summary"
        assert abs(e["event_bytes"] - size) <= size // 100, "event_bytes: the event's JSON size"
    (summary,) = event_entries(row, "REFUSALS_UNRECORDED")
    assert summary["count"] == REFUSALS - 100

    assert await w.orch.notify(aggregation_id="order-1", event_name="approval", event=REPLY)
    row = await settle(h, w, sid)
    assert row.status == "COMPLETED", describe(row)
    assert [r.replies for r in log.of(sid)] == [0, 1]
