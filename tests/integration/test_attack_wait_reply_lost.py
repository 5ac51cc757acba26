"""Attack: the write that suspends a step for its event commits, but the worker never hears
back (the connection dies between COMMIT and its reply, or the run is cancelled — a drain
timeout — while it awaits that reply). The run stops on an "unexpected error" and its
release makes the waiting saga due again after ``unexpected_error_delay``; the next claim
then takes the wait for timed out although its timeout (here: none, or an hour) has not
passed: a TIMEOUT failed attempt, and with no retries left the saga is rolled back.

The lost reply is injected on the client side, after the real (PostgreSQL / SQLite) commit.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from itkit import Harness, Work, from_context
from regresskit import REPLY, Ask, AskLog, describe, event_entries, history, settle

from saga_core import InputContext, SagaBuilder
from saga_core.store import SagaRow


def seen(ctx: InputContext) -> dict[str, int]:
    return {"replies": sum(1 for e in ctx.events if e.get("kind") == "reply")}


def define(h: Harness, ask: Ask) -> None:
    b = SagaBuilder()
    b.add_step(step=Work(h.probe), step_id="a", input_map=from_context)
    b.add_step(step=ask, step_id="ask", input_map=seen)
    b.add_step(step=Work(h.probe), step_id="c", input_map=from_context)
    h.define("flow", b.build())


def lose_reply_of_wait_write(store: Any) -> list[uuid.UUID]:
    """The first locked write that leaves the saga SUSPENDED for an event raises after it
    committed, as when the connection dies between COMMIT and its reply."""
    real = store.saga_update_locked
    lost: list[uuid.UUID] = []

    async def patched(saga_id: uuid.UUID, fn: Any, **kw: Any) -> tuple[SagaRow, bool]:
        row, changed = await real(saga_id, fn, **kw)
        if not lost and row.status == "SUSPENDED" and row.context.get("waits"):
            lost.append(saga_id)
            raise ConnectionResetError("connection reset by peer (after COMMIT)")
        return row, changed

    store.saga_update_locked = patched
    return lost


@pytest.mark.parametrize("timeout", [None, 3600.0])
async def test_a_wait_whose_reply_was_lost_is_not_timed_out(
    h: Harness, timeout: float | None
) -> None:
    log = AskLog()
    define(h, Ask(log, timeout=timeout))
    w = await h.worker()
    w.orch.engine.unexpected_error_delay = timedelta(seconds=0.2)
    lost = lose_reply_of_wait_write(w.orch.engine.store)
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="o-1", inline=True
    )
    assert lost == [sid]
    (run,) = log.of(sid)

    # Another worker claims whatever is due, well past the release's delay.
    other = await h.worker()
    for _ in range(10):
        await other.orch.run_due()
        await asyncio.sleep(0.1)
    row = await h.row(sid)
    timeouts = [e for e in history(row) if e["status"] == "TIMEOUT"]
    assert not timeouts, f"a wait that did not time out was recorded as timed out: {describe(row)}"
    assert row.status == "SUSPENDED", describe(row)
    assert row.deadline_at is None if timeout is None else row.deadline_at is not None

    assert await h.observer.notify(saga_id=sid, token=run.token, event=REPLY), describe(row)
    row = await settle(h, other, sid)
    assert row.status == "COMPLETED", describe(row)
    assert len(event_entries(row, "RECEIVED")) == 1
    assert [r.replies for r in log.of(sid)] == [0, 1]
