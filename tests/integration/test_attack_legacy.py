"""Attack: saga rows written by the previous version of the run layer (schema 4): no
``lease_token``, no per-step tokens in ``steps_state``, one token in
``step_execution_token`` (rotated by every claim in that version, so every step running in
one claim handed out the same one), and the single wait marker ``context["waiting"]``
(``step_id``, ``since``, ``timeout_s``, ``event_name``; for a parallel saga ``branches`` and
``branch_event_names``). After the upgrade such a saga must still be resumed by the token
its steps handed out, and run to its end."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from itkit import SAFETY_TIMEOUT, Harness, Work, Worker, eventually, from_context
from regresskit import REPLY, Ask, AskLog, describe, event_entries, history, settle
from sqlalchemy import update

from saga_core import FixedRetry, InputContext, SagaBuilder


def seen(ctx: InputContext) -> dict[str, int]:
    return {"replies": sum(1 for e in ctx.events if e.get("kind") == "reply")}


async def make_legacy(
    h: Harness,
    sid: uuid.UUID,
    token: uuid.UUID,
    waiting: dict[str, Any],
) -> None:
    """Rewrite the row as the previous version stored it."""
    row = await h.row(sid)
    steps = [{k: v for k, v in s.items() if k != "token"} for s in row.steps_state]
    ctx = {k: v for k, v in row.context.items() if k != "waits"}
    ctx["waiting"] = waiting
    table = h.model.__table__  # type: ignore[attr-defined]
    assert h._observer_sql is not None
    async with h._observer_sql.begin() as conn:
        await conn.execute(
            update(table)
            .where(table.c.id == sid)
            .values(
                steps_state=steps,
                context=ctx,
                lease_token=None,
                inbox=None,
                step_execution_token=token,
            )
        )


async def test_legacy_sequential_wait_is_resumed_by_its_old_token(h: Harness) -> None:
    log = AskLog()
    b = SagaBuilder()
    b.add_step(step=Work(h.probe), step_id="a", input_map=from_context)
    b.add_step(step=Ask(log, name="approval"), step_id="ask", input_map=seen)
    b.add_step(step=Work(h.probe), step_id="c", input_map=from_context)
    h.define("flow", b.build())
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="o-1", inline=True
    )
    (run,) = log.of(sid)
    since = datetime.now(UTC).isoformat()
    await make_legacy(
        h,
        sid,
        run.token,
        {"step_id": "ask", "since": since, "timeout_s": 3600.0, "event_name": "approval"},
    )
    snap = await w.orch.get_snapshot(sid)
    assert snap.step_execution_token == run.token
    assert (await w.admin.preview_delivery(saga_id=sid, token=run.token)).accepted
    assert await w.orch.notify(saga_id=sid, token=run.token, event=REPLY)
    row = await settle(h, w, sid)
    assert row.status == "COMPLETED", describe(row)
    assert [r.replies for r in log.of(sid)] == [0, 1]


async def test_legacy_sequential_named_wait_is_resumed_by_correlation(h: Harness) -> None:
    log = AskLog()
    b = SagaBuilder()
    b.add_step(step=Ask(log, name="approval"), step_id="ask", input_map=seen)
    h.define("flow", b.build())
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="o-1", inline=True
    )
    (run,) = log.of(sid)
    await make_legacy(
        h,
        sid,
        run.token,
        {
            "step_id": "ask",
            "since": datetime.now(UTC).isoformat(),
            "timeout_s": None,
            "event_name": "approval",
        },
    )
    assert not await w.orch.notify(aggregation_id="o-1", event_name="other", event=REPLY)
    assert await w.orch.notify(aggregation_id="o-1", event_name="approval", event=REPLY)
    row = await settle(h, w, sid)
    assert row.status == "COMPLETED", describe(row)


async def test_legacy_parallel_branches_waiting_on_the_shared_token(h: Harness) -> None:
    """Two branches ``x`` and ``y`` waited in one claim of the previous version, so both
    handed out that claim's token ``T`` (the version had one token per saga). Each side
    answers with the token it was given: both replies must reach their branch."""
    log_x, log_y = AskLog(), AskLog()
    b = SagaBuilder(parallel=True)
    x = b.add_step(step=Ask(log_x), step_id="x", input_map=seen)
    y = b.add_step(step=Ask(log_y), step_id="y", input_map=seen)
    b.add_step(step=Work(h.probe), step_id="d", input_map=from_context, depends_on=[x, y])
    h.define("flow", b.build())
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="o-1", inline=True
    )
    row = await h.row(sid)
    assert row.status == "SUSPENDED" and set(row.context["waits"]) == {"x", "y"}, describe(row)
    shared = uuid.uuid4()
    await make_legacy(
        h,
        sid,
        shared,
        {
            "step_id": "x",
            "since": datetime.now(UTC).isoformat(),
            "timeout_s": None,
            "branches": ["x", "y"],
        },
    )
    assert await w.orch.notify(saga_id=sid, token=shared, event=REPLY), describe(await h.row(sid))
    await w.drain()
    row = await h.row(sid)
    # The other branch's side answers with the token it was given, too.
    delivered = await w.orch.deliver(saga_id=sid, token=shared, event=REPLY)
    await w.drain()
    row = await h.row(sid)
    assert delivered.accepted or row.status == "COMPLETED", (
        f"branch y can no longer be resumed (its wait has a token nobody was given; "
        f"refused: {delivered.reason}): {describe(row)}"
    )
    row = await settle(h, w, sid)
    assert row.status == "COMPLETED", describe(row)
    assert len(event_entries(row, "RECEIVED")) >= 1


def legacy_retry_and_wait(h: Harness) -> tuple[Any, asyncio.Event]:
    """Parallel: ``x`` (fails once, retried after 1.5 s; its retry blocks on the returned
    gate) and ``y`` (waits for the event named ``ok``), joined by ``d``."""
    log_y = AskLog()
    b = SagaBuilder(parallel=True)
    x = b.add_step(
        step=Work(h.probe), step_id="x", input_map=from_context, retry_policy=FixedRetry(2, 1.5)
    )
    y = b.add_step(step=Ask(log_y, name="ok"), step_id="y", input_map=seen)
    b.add_step(step=Work(h.probe), step_id="d", input_map=from_context, depends_on=[x, y])
    h.define("flow", b.build())
    p = h.probe
    p.fail["x"] = 1
    gate = asyncio.Event()

    async def hold_retry(ctx: Any) -> None:
        if ctx.attempt == 2:
            await gate.wait()

    p.hooks["x"] = hold_retry
    return log_y, gate


async def start_legacy_retry_and_wait(h: Harness, w: Worker) -> uuid.UUID:
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="o-1", inline=True
    )
    row = await h.row(sid)
    assert row.status == "SUSPENDED" and "y" in row.context["waits"], describe(row)
    assert "x" in row.context.get("retry_at", {}), describe(row)
    await make_legacy(
        h,
        sid,
        uuid.uuid4(),
        {
            "step_id": "y",
            "since": datetime.now(UTC).isoformat(),
            "timeout_s": None,
            "event_name": "ok",
            "event_names": ["ok"],
            "branches": ["y"],
            "branch_event_names": {"y": "ok"},
        },
    )
    return sid


async def claim_when_due(w: Worker) -> int:
    while True:
        n = await w.orch.run_due()
        if n:
            return n
        await asyncio.sleep(0.05)


async def test_legacy_parallel_saga_with_a_waiting_branch_runs_its_other_branches(
    h: Harness,
) -> None:
    """Legacy parallel saga: branch ``x`` waits for its retry time, branch ``y`` for an
    event. A new worker claims it for ``x``'s retry: ``x`` must run (its step token comes
    from the run, not from the stored steps, which have none)."""
    _log_y, gate = legacy_retry_and_wait(h)
    gate.set()
    w = await h.worker(in_place_retry_max=1.0)
    sid = await start_legacy_retry_and_wait(h, w)
    await asyncio.wait_for(claim_when_due(w), SAFETY_TIMEOUT)
    row = await h.row(sid)
    errors = [e.get("error") for e in history(row) if e["status"] == "ERROR"]
    assert errors == ["RuntimeError: injected failure of x"], describe(row)
    assert h.probe.effects["x"] == 2, describe(row)
    assert row.status == "SUSPENDED" and "y" in row.context["waits"], describe(row)


async def test_legacy_parallel_named_event_while_a_sibling_runs_is_not_dropped(
    h: Harness,
) -> None:
    """The same legacy saga; while ``x``'s retry runs (before the run's first checkpoint
    has written per-step tokens), the event ``ok`` arrives by correlation. It is accepted
    (queued, bound to ``y``'s token as the delivery computed it); it must reach ``y``, not
    be dropped as UNUSED because the worker gave ``y`` another token."""
    _log_y, gate = legacy_retry_and_wait(h)
    w = await h.worker(in_place_retry_max=1.0)
    sid = await start_legacy_retry_and_wait(h, w)
    holder = w.spawn(claim_when_due(w))

    async def x_retry_started() -> bool:
        return h.probe.effects["x"] >= 2 or holder.done()

    await eventually(x_retry_started, what="x's retry")
    assert h.probe.effects["x"] == 2, describe(await h.row(sid))
    got = await w.orch.deliver(aggregation_id="o-1", event_name="ok", event=REPLY)
    assert got.accepted and got.queued, got
    gate.set()
    await asyncio.wait_for(holder, SAFETY_TIMEOUT)
    row = await settle(h, w, sid, timeout=10)
    assert row.status == "COMPLETED", describe(row)
    assert not event_entries(row, "UNUSED"), describe(row)
