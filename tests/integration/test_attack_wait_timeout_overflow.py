"""Attack: a wait timeout or a retry delay too long for a date (``timedelta.max``, or
"3,000,000 days" meant as "practically never"). ``WaitForEvent`` and ``FixedRetry`` accept
any positive timedelta, but the wait's end (``since + timeout``) or the due time cannot be
computed or stored: the run stops on an unexpected ``OverflowError`` (or a refused
checkpoint) every time, the step and its side effect run again every few seconds, and the
saga ends quarantined as a poison saga, instead of the bad value being refused up front with
a clear error."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from itkit import Harness
from pydantic import BaseModel
from regresskit import describe, history

from saga_core import BaseStep, FixedRetry, SagaBuilder, SagaError, current_step
from saga_core.context import WaitForEvent


class Nothing(BaseModel):
    pass


class Runs:
    count = 0


class WaitsLong(BaseStep[Nothing, Nothing]):
    def __init__(self, timeout: timedelta, runs: Runs) -> None:
        self.timeout = timeout
        self.runs = runs

    async def execute(self, inp: Nothing) -> Nothing:
        self.runs.count += 1  # the side effect of asking the other side
        current_step().wait_for_event(self.timeout)


class FailsOnce(BaseStep[Nothing, Nothing]):
    def __init__(self, runs: Runs) -> None:
        self.runs = runs

    async def execute(self, inp: Nothing) -> Nothing:
        self.runs.count += 1
        if self.runs.count == 1:
            raise RuntimeError("first attempt fails")
        return Nothing()


async def drive(h: Harness, step: BaseStep[Nothing, Nothing], **step_kw: object) -> object:
    b = SagaBuilder()
    b.add_step(step=step, step_id="w", input_map=lambda c: Nothing(), **step_kw)  # type: ignore[arg-type]
    h.define("flow", b.build())
    w = await h.worker(max_recoveries=2)
    w.orch.engine.unexpected_error_delay = timedelta(seconds=0.05)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="o", inline=True)
    for _ in range(30):
        await w.orch.run_due()
        row = await h.row(sid)
        if row.lease_owner is None and row.status != "RUNNING":
            break
        await asyncio.sleep(0.05)
    return await h.row(sid)


@pytest.mark.parametrize("timeout", [timedelta.max, timedelta(days=3_000_000)])
async def test_a_huge_wait_timeout_does_not_poison_the_saga(h: Harness, timeout: timedelta) -> None:
    runs = Runs()
    row = await drive(h, WaitsLong(timeout, runs))
    errors = [e for e in history(row) if e["status"] == "INTERRUPTED"]  # type: ignore[attr-defined]
    assert not errors, f"the run kept stopping on an unexpected error: {describe(row)}"  # type: ignore[arg-type]
    assert runs.count == 1, f"the step ran {runs.count} times: {describe(row)}"  # type: ignore[arg-type]


def test_wait_for_event_refuses_a_timeout_no_date_can_hold() -> None:
    with pytest.raises(SagaError, match="timeout"):
        WaitForEvent(timedelta.max)


def test_fixed_retry_refuses_a_delay_no_date_can_hold() -> None:
    with pytest.raises(ValueError, match="delay"):
        FixedRetry(3, timedelta.max)


async def test_a_huge_retry_delay_does_not_poison_the_saga(h: Harness) -> None:
    runs = Runs()
    try:
        policy = FixedRetry(2, timedelta.max)
    except ValueError:
        return  # refused up front: nothing can go wrong at run time
    row = await drive(h, FailsOnce(runs), retry_policy=policy)
    errors = [e for e in history(row) if e["status"] == "INTERRUPTED"]  # type: ignore[arg-type]
    assert not errors, f"the run kept stopping on an unexpected error: {describe(row)}"  # type: ignore[arg-type]
