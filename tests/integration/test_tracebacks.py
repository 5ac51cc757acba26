"""Every failed attempt whose code ran keeps its traceback in history (``traceback``):
execute, compensate, input_map, output validation, a step timeout (where the code was when
its timeout cancelled it), in sequential and parallel sagas; a run stopped by an unexpected
error keeps its traceback in its ``INTERRUPTED`` entry. Bounded, user frames kept, saga_core's
folded (``saga_core.tracebacks``)."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import pytest
from itkit import Harness, Num, Work, chain, entries, from_context
from sqlalchemy import text

import saga_core
from saga_core import FixedRetry, InputContext, SagaBuilder, StepContext

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)

SAGA_CORE_DIR = os.path.dirname(os.path.abspath(saga_core.__file__)) + os.sep


def frames(tb: str) -> list[str]:
    """The ``File "...", line N, in f`` lines of a traceback."""
    return [line.strip() for line in tb.splitlines() if line.strip().startswith('File "')]


def assert_user_traceback(tb: str, *, function: str, last_line: str) -> None:
    """A folded traceback: saga_core's frames in ``[N frames in saga_core]`` lines, the
    user's function among the frames, ``last_line`` its last line."""
    assert tb.startswith("Traceback (most recent call last):"), tb
    assert tb.splitlines()[-1] == last_line, tb
    assert any(line.endswith(f", in {function}") for line in frames(tb)), tb
    assert "frames in saga_core]" in tb, tb
    # saga_core's frames are folded away; at most the innermost frame (where it raised)
    # stays, and here the innermost frame is the user's or a library's.
    assert not any(SAGA_CORE_DIR in line for line in frames(tb)), tb
    assert len(tb.encode()) <= 8192


async def _run(h: Harness, **options: Any) -> Any:
    w = await h.worker(**options)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    return await h.row(sid)


async def test_a_failed_execute_keeps_its_traceback(h: Harness) -> None:
    p = h.probe
    p.fail["b"] = 1
    h.define("flow", chain(p, retry={"b": FixedRetry(2, 0)}))
    row = await _run(h)
    failed, ok = entries(row.step_history or [], phase="execute", step_id="b")
    assert (failed["status"], ok["status"], row.status) == ("ERROR", "SUCCESS", "COMPLETED")
    assert_user_traceback(
        failed["traceback"], function="run_execute", last_line="RuntimeError: injected failure of b"
    )
    assert any(line.endswith(", in execute") for line in frames(failed["traceback"])), (
        "the step class's execute, which called the probe"
    )
    assert "traceback" not in ok, "a success has none"
    assert all("traceback" not in e for e in row.step_history if e["status"] == "SUCCESS")


async def test_a_failed_compensation_keeps_its_traceback(h: Harness) -> None:
    p = h.probe
    p.fail["c"] = -1
    p.fail_comp["b"] = -1
    h.define("flow", chain(p, comp_retry={"b": FixedRetry(2, 0)}))
    row = await _run(h)
    assert row.status == "FAILED"
    comp_b = entries(row.step_history or [], phase="compensate", step_id="b")
    assert [e["status"] for e in comp_b] == ["ERROR", "ERROR"]
    for e in comp_b:
        assert_user_traceback(
            e["traceback"],
            function="run_compensate",
            last_line="RuntimeError: injected compensation failure of b",
        )


def _lookup_customer(ctx: InputContext) -> Num:
    return Num(n=ctx.initial_data["customer_id"])


async def test_a_failed_input_map_keeps_its_traceback(h: Harness) -> None:
    p = h.probe
    h.define("flow", chain(p, input_map={"b": _lookup_customer}))
    row = await _run(h)
    (failed,) = entries(row.step_history or [], phase="execute", step_id="b")
    assert failed["error_type"] == "KeyError"
    assert_user_traceback(
        failed["traceback"], function="_lookup_customer", last_line="KeyError: 'customer_id'"
    )
    assert p.effects["b"] == 0, "the step itself never ran"


async def test_an_invalid_output_keeps_its_traceback(h: Harness) -> None:
    p = h.probe
    p.outputs["b"] = {"m": 1}
    h.define("flow", chain(p))
    row = await _run(h)
    (failed,) = entries(row.step_history or [], phase="execute", step_id="b")
    tb = failed["traceback"]
    assert failed["error_type"] == "ValidationError"
    # Raised by pydantic when saga_core validated the step's output: the innermost frame
    # is pydantic's, saga_core's (validate_output) are folded.
    assert tb.startswith("Traceback (most recent call last):")
    assert "frames in saga_core]" in tb
    assert frames(tb)[-1].endswith(", in model_validate") and "pydantic" in frames(tb)[-1]
    assert "ValidationError: 1 validation error for Out" in tb
    assert not any(SAGA_CORE_DIR in line for line in frames(tb))


async def test_a_too_large_output_keeps_saga_cores_raising_frame(h: Harness) -> None:
    p = h.probe
    p.outputs["b"] = {"n": 1, "note": "x" * 2000}
    h.define("flow", chain(p, v2=["b"]))
    row = await _run(h, max_payload_bytes=1000)
    (failed,) = entries(row.step_history or [], phase="execute", step_id="b")
    tb = failed["traceback"]
    assert failed["error_type"] == "SagaInputError"
    # Nothing but saga_core ran: its frames are folded but the one that raised.
    (frame,) = frames(tb)
    assert frame.startswith(f'File "{SAGA_CORE_DIR}payload.py"'), tb
    assert tb.splitlines()[-1].startswith("saga_core.errors.SagaInputError: output of step 'b'")


async def test_a_step_timeout_keeps_where_the_step_was(h: Harness) -> None:
    p = h.probe

    async def stuck_on_the_network(ctx: StepContext) -> None:
        await asyncio.Event().wait()

    p.hooks["b"] = stuck_on_the_network
    h.define("flow", chain(p, timeout={"b": 0.2}))
    row = await _run(h)
    (failed,) = entries(row.step_history or [], phase="execute", step_id="b")
    tb = failed["traceback"]
    assert failed["status"] == "TIMEOUT"
    assert any(line.endswith(", in stuck_on_the_network") for line in frames(tb)), tb
    assert any(line.endswith(", in run_execute") for line in frames(tb)), tb
    assert tb.splitlines()[-2:] == [
        "asyncio.exceptions.CancelledError",
        "TimeoutError: no result within 0.2s (the step was cancelled here by its timeout)",
    ], tb


async def test_a_parallel_branch_keeps_its_traceback(h: Harness) -> None:
    p = h.probe
    p.fail["b"] = -1
    builder = SagaBuilder(parallel=True)
    a = builder.add_step(step=Work(p), step_id="a", input_map=from_context)
    builder.add_step(
        step=Work(p),
        step_id="b",
        input_map=lambda prev: Num(n=prev.n),
        depends_on=a,
        retry_policy=FixedRetry(2, 0),
    )
    h.define("flow", builder.build())
    row = await _run(h)
    assert row.status == "COMPENSATED"
    failed = entries(row.step_history or [], phase="execute", step_id="b")
    assert [e["status"] for e in failed] == ["ERROR", "ERROR"]
    for e in failed:
        assert_user_traceback(
            e["traceback"], function="run_execute", last_line="RuntimeError: injected failure of b"
        )


async def _refuse_step_a_checkpoint(h: Harness) -> None:
    """The database refuses every write that moves the saga past step a (a non-transient
    error: the run stops on an unexpected error)."""
    table = h.table_name
    assert h._observer_sql is not None
    async with h._observer_sql.begin() as conn:
        if h.backend == "postgresql":
            name = f"ck_{uuid.uuid4().hex[:8]}"
            await conn.execute(
                text(
                    f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK (current_step_index < 1) "
                    "NOT VALID"
                )
            )
        else:
            await conn.execute(
                text(
                    f"CREATE TRIGGER refuse_{table} BEFORE UPDATE ON {table} "
                    "WHEN NEW.current_step_index >= 1 "
                    "BEGIN SELECT RAISE(ABORT, 'step a refused'); END"
                )
            )


@pytest.mark.sql_only  # the database refuses a write
async def test_a_run_stopped_by_an_unexpected_error_keeps_its_traceback(h: Harness) -> None:
    h.define("flow", chain(h.probe))
    await _refuse_step_a_checkpoint(h)
    row = await _run(h)
    note = next(e for e in row.step_history or [] if e["status"] == "INTERRUPTED")
    refusal = "violates check constraint" if h.backend == "postgresql" else "step a refused"
    assert note["reason"].startswith("run stopped by an unexpected error (")
    assert refusal in note["reason"]
    tb = note["traceback"]
    # An error of the engine's own: saga_core's frames are kept (not folded).
    assert "frames in saga_core]" not in tb
    assert any(f'File "{SAGA_CORE_DIR}executor.py"' in line for line in frames(tb)), tb
    assert any(f'File "{SAGA_CORE_DIR}checkpoint.py"' in line for line in frames(tb)), tb
    assert refusal in tb
    assert len(tb.encode()) <= 8192
    assert row.steps_state[0]["status"] == "PENDING", "step a's outcome was not recorded"
