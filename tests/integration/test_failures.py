"""Failures follow the policy: timeouts and errors anywhere in running a step are recorded as
that step's failed attempts; short retry waits are spent in place, long ones suspend the saga;
rollback compensates newest first, passes over steps without ``compensate``, retries
compensations by their own policy and stops in FAILED when one is exhausted. No row is ever
left stuck."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from typing import Any

import pytest
from itkit import Harness, Num, chain, entries, eventually, outcomes

from saga_core import FixedRetry, InputContext, StepContext

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


def assert_settled(row: Any) -> None:
    """Not stuck: finished, FAILED for an operator, or due at a known time."""
    if row.status in ("COMPLETED", "COMPENSATED", "ABORTED", "FAILED"):
        assert row.deadline_at is None and row.lease_owner is None
    else:
        assert row.deadline_at is not None


async def test_timeout_is_a_failed_attempt(h: Harness) -> None:
    p = h.probe
    cancelled: list[int] = []

    async def hang(ctx: StepContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(ctx.attempt)
            raise

    p.hooks["b"] = hang
    h.define("flow", chain(p, retry={"b": FixedRetry(2, 0)}, timeout={"b": 0.2}))
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    row = await h.row(sid)
    b_runs = entries(row.step_history or [], phase="execute", step_id="b")
    assert [(e["status"], e["attempt"], e["error_type"]) for e in b_runs] == [
        ("TIMEOUT", 1, "TimeoutError"),
        ("TIMEOUT", 2, "TimeoutError"),
    ]
    assert cancelled == [1, 2], "the timed-out step was cancelled"
    assert row.status == "COMPENSATED" and p.undone == ["a"]
    assert row.last_error is not None and "TimeoutError" in row.last_error
    assert_settled(row)


async def test_compensation_timeout_is_a_failed_compensation(h: Harness) -> None:
    p = h.probe

    async def hang(ctx: StepContext) -> None:
        await asyncio.Event().wait()

    p.fail["c"] = -1
    p.comp_hooks["b"] = hang
    h.define("flow", chain(p, comp_retry={"b": FixedRetry(2, 0)}, comp_timeout={"b": 0.2}))
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    row = await h.row(sid)
    comp_b = entries(row.step_history or [], phase="compensate", step_id="b")
    assert [(e["status"], e["attempt"]) for e in comp_b] == [("TIMEOUT", 1), ("TIMEOUT", 2)]
    assert (row.status, row.phase, row.current_step_index) == ("FAILED", "compensate", 1)
    assert p.undone == []
    assert_settled(row)


async def test_history_records_every_attempt_in_full(h: Harness) -> None:
    p = h.probe
    p.fail["b"] = 1
    h.define("flow", chain(p, ["a", "b"], retry={"b": FixedRetry(2, 0)}))
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 10}, aggregation_id="x", inline=True
    )
    history = (await h.row(sid)).step_history or []
    assert [(e["phase"], e["step_id"], e["status"], e["attempt"]) for e in history] == [
        ("execute", "a", "SUCCESS", 1),
        ("execute", "b", "ERROR", 1),
        ("execute", "b", "SUCCESS", 2),
    ]
    common = {"at", "phase", "step_id", "step_class", "attempt", "status", "duration_ms", "worker"}
    for e in history:
        assert common <= set(e), set(e)
        assert e["step_class"] == "Work" and e["worker"] == w.id and e["duration_ms"] >= 0
    ok_a, failed_b, ok_b = history
    assert (ok_a["input"], ok_a["output"]) == ({"n": 10}, {"n": 11})
    assert failed_b["input"] == {"n": 11} and "output" not in failed_b
    assert failed_b["error_type"] == "RuntimeError"
    assert failed_b["error"] == "RuntimeError: injected failure of b"
    assert (ok_b["input"], ok_b["output"]) == ({"n": 11}, {"n": 12})
    ats = [e["at"] for e in history]
    assert ats == sorted(ats), "oldest first"


def _raise_in_input_map(ctx: InputContext) -> Num:
    raise KeyError("customer_id")


def _invalid_input(ctx: InputContext) -> dict[str, Any]:
    return {"n": "not a number"}


def _not_an_input(ctx: InputContext) -> Any:
    return 42


async def _async_input(ctx: InputContext) -> Num:
    raise LookupError("async input_map failed")


def _huge_input(ctx: InputContext) -> Num:
    return Num(n=10**2000)


async def _raise_with_nul(ctx: StepContext) -> None:
    raise RuntimeError("bad\x00thing")


ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    # case -> (chain(...) options for step b / probe outputs, expected error_type)
    "input_map raises": ({"input_map": {"b": _raise_in_input_map}}, "KeyError"),
    "async input_map raises": ({"input_map": {"b": _async_input}}, "LookupError"),
    "input fails validation": ({"input_map": {"b": _invalid_input}}, "ValidationError"),
    "input_map returns a non-model": ({"input_map": {"b": _not_an_input}}, "TypeError"),
    "step raises": ({"fail": -1}, "RuntimeError"),
    "output fails validation": ({"output": {"m": 1}}, "ValidationError"),
    "output of the wrong type": ({"output": "text"}, "TypeError"),
    "output too large": ({"output": {"n": 1, "note": "x" * 2000}, "v2": ["b"]}, "SagaInputError"),
    "input too large": ({"input_map": {"b": _huge_input}}, "SagaInputError"),
    # What the database cannot store (PostgreSQL JSONB refuses NUL characters and NaN, SQLite's
    # JSON functions refuse NaN) is the step's failure, the same on every backend.
    "output with a NUL character": (
        {"output": {"n": 1, "note": "a\x00b"}, "v2": ["b"]},
        "SagaInputError",
    ),
    "output with NaN": ({"output": {"n": 1, "ratio": math.nan}, "v2": ["b"]}, "SagaInputError"),
    "output with infinity": (
        {"output": {"n": 1, "ratio": math.inf}, "v2": ["b"]},
        "SagaInputError",
    ),
    "error message with a NUL character": ({"hook": _raise_with_nul}, "RuntimeError"),
}


@pytest.mark.parametrize("case", list(ERRORS))
async def test_errors_anywhere_are_recorded_failures(h: Harness, case: str) -> None:
    p = h.probe
    options, error_type = ERRORS[case]
    options = dict(options)
    if "fail" in options:
        p.fail["b"] = options.pop("fail")
    if "output" in options:
        p.outputs["b"] = options.pop("output")
    if "hook" in options:
        p.hooks["b"] = options.pop("hook")
    h.define("flow", chain(p, retry={"b": FixedRetry(2, 0)}, **options))
    w = await h.worker(max_payload_bytes=1000)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    row = await h.row(sid)
    b_runs = entries(row.step_history or [], phase="execute", step_id="b")
    assert [(e["status"], e["attempt"], e["error_type"]) for e in b_runs] == [
        ("ERROR", 1, error_type),
        ("ERROR", 2, error_type),
    ], "two attempts, as FixedRetry(2) allows"
    assert all(e["error"] for e in b_runs)
    assert row.status == "COMPENSATED" and p.undone == ["a"], "then the rollback"
    assert row.last_error is not None and error_type in row.last_error
    assert "b" not in row.context["step_outputs"]
    assert_settled(row)
    assert await w.orch.run_due() == 0


async def test_short_retry_waits_are_spent_in_place(h: Harness) -> None:
    p = h.probe
    p.fail["b"] = 2
    h.define("flow", chain(p, retry={"b": FixedRetry(3, 0.05)}))
    w = await h.worker(in_place_retry_max=1.0)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x")
    assert await w.orch.run_due() == 1, "one claim carried the saga through its retries"
    row = await h.row(sid)
    assert row.status == "COMPLETED" and row.retry_counter == 0 and row.takeover_count == 0
    b_runs = entries(row.step_history or [], phase="execute", step_id="b")
    assert [(e["status"], e["attempt"], e["worker"]) for e in b_runs] == [
        ("ERROR", 1, w.id),
        ("ERROR", 2, w.id),
        ("SUCCESS", 3, w.id),
    ]
    assert [e.get("retry_in_s") for e in b_runs[:2]] == [0.05, 0.05]
    assert row.last_error is None, "cleared by the success"


async def test_long_retry_waits_suspend_until_due(h: Harness) -> None:
    p = h.probe
    p.fail["b"] = 1
    h.define("flow", chain(p, retry={"b": FixedRetry(3, 60)}))
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    row = await h.row(sid)
    now = await h.db_now()
    assert (row.status, row.retry_counter, row.lease_owner) == ("SUSPENDED", 1, None)
    assert row.deadline_at is not None
    assert now + timedelta(seconds=50) < row.deadline_at <= now + timedelta(seconds=60)
    assert await w.orch.run_due() == 0, "not due yet"


async def test_retry_wait_threshold_is_configurable(h: Harness) -> None:
    """With ``in_place_retry_max=0`` even a short wait releases the saga; it is claimed again
    once due (by whichever worker), and the failure counter carries over."""
    p = h.probe
    p.fail["b"] = 1
    h.define("flow", chain(p, retry={"b": FixedRetry(3, 0.2)}))
    w = await h.worker(in_place_retry_max=0)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    row = await h.row(sid)
    assert (row.status, row.retry_counter) == ("SUSPENDED", 1)

    async def claimed() -> int:
        return await w.orch.run_due()

    await eventually(claimed, what="the retry to fall due", interval=0.05)
    row = await h.row(sid)
    assert (row.status, row.takeover_count) == ("COMPLETED", 0)
    b_runs = entries(row.step_history or [], phase="execute", step_id="b")
    assert [(e["status"], e["attempt"]) for e in b_runs] == [("ERROR", 1), ("SUCCESS", 2)]


async def test_rollback_is_newest_first_and_passes_over_steps_without_compensate(
    h: Harness,
) -> None:
    p = h.probe
    p.fail["d"] = -1
    h.define("flow", chain(p, ["a", "b", "c", "d"], no_undo=["b"]))
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    row = await h.row(sid)
    assert row.status == "COMPENSATED"
    assert p.undone == ["c", "a"]
    assert outcomes(entries(row.step_history or [], phase="compensate")) == [
        ("compensate", "c", "SUCCESS"),
        ("compensate", "b", "NOTHING_TO_COMPENSATE"),
        ("compensate", "a", "SUCCESS"),
    ]
    assert [s["status"] for s in row.steps_state] == [
        "COMPENSATED",
        "NOT_COMPENSATED",
        "COMPENSATED",
        "PENDING",
    ]
    comp_c = entries(row.step_history or [], phase="compensate", step_id="c")[0]
    assert comp_c["input"] == {"n": 2} and comp_c["output"] == {"n": 3}, "what c got and gave"
    assert_settled(row)


async def test_nothing_to_compensate_at_all(h: Harness) -> None:
    p = h.probe
    p.fail["a"] = -1
    h.define("flow", chain(p))
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    row = await h.row(sid)
    assert row.status == "COMPENSATED" and p.undone == [] and p.comp_effects == {}
    assert_settled(row)


async def test_compensation_retries_by_its_own_policy(h: Harness) -> None:
    p = h.probe
    p.fail["c"] = -1
    p.fail_comp["a"] = 2
    h.define("flow", chain(p, comp_retry={"a": FixedRetry(3, 0)}))
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    row = await h.row(sid)
    assert row.status == "COMPENSATED" and p.undone == ["b", "a"]
    comp_a = entries(row.step_history or [], phase="compensate", step_id="a")
    assert [(e["status"], e["attempt"]) for e in comp_a] == [
        ("ERROR", 1),
        ("ERROR", 2),
        ("SUCCESS", 3),
    ]


async def test_compensation_waiting_for_its_retry_is_compensating(h: Harness) -> None:
    p = h.probe
    p.fail["c"] = -1
    p.fail_comp["b"] = 1
    h.define("flow", chain(p, comp_retry={"b": FixedRetry(3, 0.2)}))
    w = await h.worker(in_place_retry_max=0)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    row = await h.row(sid)
    assert (row.status, row.phase, row.current_step_index) == ("COMPENSATING", "compensate", 1)
    assert row.lease_owner is None and row.deadline_at is not None

    async def claimed() -> int:
        return await w.orch.run_due()

    await eventually(claimed, what="the compensation retry to fall due", interval=0.05)
    assert (await h.row(sid)).status == "COMPENSATED" and p.undone == ["b", "a"]


async def test_compensation_exhausted_stops_in_failed(h: Harness) -> None:
    p = h.probe
    p.fail["c"] = -1
    p.fail_comp["b"] = -1
    h.define("flow", chain(p, comp_retry={"b": FixedRetry(2, 0)}))
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    row = await h.row(sid)
    assert (row.status, row.phase, row.current_step_index) == ("FAILED", "compensate", 1)
    assert p.undone == [], "the rollback stopped at b: a is not compensated"
    assert p.comp_effects == {"b": 2}
    assert row.last_error is not None and "compensation of b" in row.last_error
    assert_settled(row)
    assert row.finished_at is None, "FAILED waits for an operator"


async def test_no_rollback_when_compensate_on_failure_is_off(h: Harness) -> None:
    p = h.probe
    p.fail["b"] = -1
    h.define("flow", chain(p, retry={"b": FixedRetry(2, 0)}, compensate_on_failure=False))
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    row = await h.row(sid)
    assert (row.status, row.phase, row.current_step_index) == ("FAILED", "execute", 1)
    assert p.comp_effects == {} and p.effects == {"a": 1, "b": 2}
    assert row.last_error is not None and "injected failure of b" in row.last_error
    assert row.retry_counter == 2
    assert_settled(row)
