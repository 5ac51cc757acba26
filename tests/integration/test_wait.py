"""``wait()``: returns once a saga is COMPLETED, COMPENSATED, ABORTED, FAILED or SUSPENDED;
``TimeoutError`` after ``timeout`` (seconds or a timedelta)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from itkit import STATUS_CASES, Harness, define_standard, reach

from saga_core import SagaNotFoundError

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)

WAITED = {
    "SUSPENDED": "SUSPENDED",
    "COMPLETED": "COMPLETED",
    "COMPENSATED": "COMPENSATED",
    "FAILED": "FAILED",
    "ABORTED": "ABORTED",
}


@pytest.mark.parametrize("case", list(WAITED))
async def test_wait_returns_once_the_saga_stops_moving(h: Harness, case: str) -> None:
    """``wait`` is started while the saga is still RUNNING and a worker picks it up later."""
    define_standard(h)
    w = await h.worker()
    p = h.probe
    if case == "SUSPENDED":
        p.fail["b"] = -1
    elif case == "COMPENSATED":
        p.fail["c"] = -1
    name = "flow_noroll" if case == "FAILED" else "flow"
    if case == "FAILED":
        p.fail["c"] = -1
    sid = await w.orch.start(saga_name=name, initial_data={}, aggregation_id="x")
    waiter = asyncio.create_task(w.orch.wait(sid, timeout=15))
    if case == "ABORTED":
        await w.admin.abort(sid)
    else:
        assert await w.orch.run_due() == 1
    snap = await waiter
    assert snap.id == sid and snap.status.value == WAITED[case]


@pytest.mark.parametrize(
    "timeout", [0.1, timedelta(milliseconds=100)], ids=["seconds", "timedelta"]
)
async def test_wait_times_out(h: Harness, timeout: float | timedelta) -> None:
    define_standard(h)
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x")
    with pytest.raises(TimeoutError):
        await w.orch.wait(sid, timeout=timeout)
    assert (await h.row(sid)).status == "RUNNING"


@pytest.mark.parametrize("case", [c for c in STATUS_CASES if c != "RUNNING_LEASED"])
async def test_wait_on_a_saga_already_there(h: Harness, case: str) -> None:
    define_standard(h)
    w = await h.worker()
    reached = await reach(h, w, case)
    if case in ("RUNNING", "COMPENSATING"):
        with pytest.raises(TimeoutError):
            await w.orch.wait(reached.saga_id, timeout=0.05)
    else:
        assert (await w.orch.wait(reached.saga_id, timeout=5)).status.value == case


async def test_wait_for_an_unknown_saga(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    with pytest.raises(SagaNotFoundError):
        await w.orch.wait(uuid.uuid4(), timeout=1)
