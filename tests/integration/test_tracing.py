"""OpenTelemetry tracing (``SagaOrchestrator(tracer_provider=...)``): a ``saga.run`` span per
claim, a ``saga.step``/``saga.compensate`` span per attempt, all in the trace current at
``start`` (kept in the saga's context, so across workers and runs); the step span is current
inside the step's code. Without a provider, saga_core never imports OpenTelemetry."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from itkit import (
    Harness,
    Num,
    Out,
    Work,
    Worker,
    chain,
    eventually,
    from_context,
    outcomes,
)
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, format_trace_id

from saga_core import (
    BaseStep,
    FixedRetry,
    NoRetry,
    SagaBuilder,
    SagaError,
    SagaOrchestrator,
    StepContext,
    current_step,
)

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    return p


def named(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, f"expected one span {name!r}, got {[s.name for s in spans]}"
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_of(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_spans_of_a_retried_step_share_the_trace_current_at_start(
    h: Harness, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    h.define("flow", chain(h.probe, ("a", "b"), retry={"a": FixedRetry(3, 0)}))
    h.probe.fail["a"] = 1
    app_tracer = provider.get_tracer("app")

    async def inner(ctx: StepContext) -> None:
        with app_tracer.start_as_current_span(f"inner {ctx.step_id}"):
            pass

    h.probe.hooks["b"] = inner
    w = await h.worker("w1", tracer_provider=provider)
    with app_tracer.start_as_current_span("POST /orders") as request:
        sid = await w.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="o-1")
    # The worker runs it outside the request's context: the parent comes from the row.
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert await w.drain() == 1
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    tid = request.get_span_context().trace_id
    assert row.trace_id == format_trace_id(tid)
    assert row.context["trace_parent"].split("-")[1:3] == [
        format_trace_id(tid),
        f"{request.get_span_context().span_id:016x}",
    ]

    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == [
        "POST /orders",
        "inner b",
        "saga.run flow",
        "saga.step a",
        "saga.step a",
        "saga.step b",
    ]
    assert {trace_of(s) for s in spans} == {tid}
    run = one(spans, "saga.run flow")
    assert parent_of(run) == request.get_span_context().span_id
    assert attrs(run) == {
        "saga.id": str(sid),
        "saga.name": "flow",
        "saga.aggregation_id": "o-1",
        "saga.worker": "w1",
        "saga.trace_id": format_trace_id(tid),
        "saga.takeover_count": 0,
        "saga.status": "COMPLETED",
    }
    assert run.status.status_code is StatusCode.UNSET

    a1, a2 = sorted(named(spans, "saga.step a"), key=lambda s: attrs(s)["saga.attempt"])
    b = one(spans, "saga.step b")
    for s in (a1, a2, b):
        assert parent_of(s) == span_id(run)
        assert attrs(s)["saga.id"] == str(sid)
        assert attrs(s)["saga.name"] == "flow"
        assert attrs(s)["saga.aggregation_id"] == "o-1"
        assert attrs(s)["saga.phase"] == "execute"
        assert attrs(s)["saga.worker"] == "w1"
        assert "saga.interrupted" not in attrs(s)
    assert (attrs(a1)["saga.attempt"], attrs(a1)["saga.status"]) == (1, "ERROR")
    assert attrs(a1)["error.type"] == "RuntimeError"
    assert attrs(a1)["saga.retry_in_s"] == 0.0
    assert a1.status.status_code is StatusCode.ERROR
    assert a1.status.description == "RuntimeError: injected failure of a"
    (event,) = a1.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == "RuntimeError: injected failure of a"
    assert "injected failure of a" in str(event.attributes["exception.stacktrace"])
    assert (attrs(a2)["saga.attempt"], attrs(a2)["saga.status"]) == (2, "SUCCESS")
    assert a2.status.status_code is StatusCode.UNSET and not a2.events
    assert (attrs(b)["saga.attempt"], attrs(b)["saga.status"], attrs(b)["saga.step_id"]) == (
        1,
        "SUCCESS",
        "b",
    )
    assert a1.end_time is not None and a2.start_time is not None
    assert a1.end_time <= a2.start_time
    # The application's span inside execute is a child of the step's span.
    assert parent_of(one(spans, "inner b")) == span_id(b)


async def test_rollback_without_a_current_span_uses_the_saga_trace_id(
    h: Harness, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    h.define("flow", chain(h.probe, ("a", "b", "c"), retry={"c": NoRetry()}))
    h.probe.fail["c"] = -1
    w = await h.worker("w1", tracer_provider=provider)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="o-2", inline=True)
    row = await h.row(sid)
    assert row.status == "COMPENSATED"
    assert outcomes(row.step_history or [])[-3:] == [
        ("execute", "c", "ERROR"),
        ("compensate", "b", "SUCCESS"),
        ("compensate", "a", "SUCCESS"),
    ]
    assert row.trace_id is not None and len(row.trace_id) == 32
    assert "trace_parent" not in row.context

    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [  # in the order they ended
        "saga.step a",
        "saga.step b",
        "saga.step c",
        "saga.compensate b",
        "saga.compensate a",
        "saga.run flow",
    ]
    assert {format_trace_id(trace_of(s)) for s in spans} == {row.trace_id}
    run = one(spans, "saga.run flow")
    # A synthetic remote parent in the saga's trace id (nothing was current at start).
    assert run.parent is not None and run.parent.is_remote
    assert run.parent.trace_id == trace_of(run)
    assert attrs(run)["saga.status"] == "COMPENSATED"
    assert run.status.status_code is StatusCode.UNSET
    c = one(spans, "saga.step c")
    assert (attrs(c)["saga.status"], c.status.status_code) == ("ERROR", StatusCode.ERROR)
    assert "saga.retry_in_s" not in attrs(c)
    for step_id in ("b", "a"):
        comp = one(spans, f"saga.compensate {step_id}")
        assert parent_of(comp) == span_id(run)
        assert attrs(comp)["saga.phase"] == "compensate"
        assert attrs(comp)["saga.step_id"] == step_id
        assert (attrs(comp)["saga.attempt"], attrs(comp)["saga.status"]) == (1, "SUCCESS")
        assert comp.status.status_code is StatusCode.UNSET


async def test_explicit_trace_id_is_kept_and_a_current_span_still_parents(
    h: Harness, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    h.define("flow", chain(h.probe, ("a",)))
    w = await h.worker(tracer_provider=provider)
    hex_id = uuid.uuid4().hex
    sid = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="o-3", trace_id=hex_id, inline=True
    )
    assert (await h.row(sid)).trace_id == hex_id
    assert {format_trace_id(trace_of(s)) for s in exporter.get_finished_spans()} == {hex_id}

    exporter.clear()
    with provider.get_tracer("app").start_as_current_span("request") as request:
        sid2 = await w.orch.start(
            saga_name="flow", initial_data={}, aggregation_id="o-4", trace_id="req-42", inline=True
        )
    assert (await h.row(sid2)).trace_id == "req-42"
    run = one(exporter.get_finished_spans(), "saga.run flow")
    assert parent_of(run) == request.get_span_context().span_id
    assert attrs(run)["saga.trace_id"] == "req-42"


class Approval(BaseStep[Num, Out]):
    """Waits for an event, then succeeds."""

    async def execute(self, inp: Num) -> Out:
        if inp.n == 0:
            current_step().wait_for_event()
        return Out(n=inp.n)


async def test_wait_for_event_ends_the_step_span_waiting_and_runs_share_the_trace(
    h: Harness, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    b = SagaBuilder()
    b.add_step(step=Work(h.probe), step_id="a", input_map=from_context)
    b.add_step(
        step=Approval(),
        step_id="approve",
        input_map=lambda ctx: Num(n=1 if ctx.latest_event else 0),
    )
    h.define("flow", b.build())
    w1 = await h.worker("w1", tracer_provider=provider)
    w2 = await h.worker("w2", tracer_provider=provider)
    with provider.get_tracer("app").start_as_current_span("request") as request:
        sid = await w1.orch.start(saga_name="flow", initial_data={}, aggregation_id="o-5")
    assert await w1.drain() == 1
    row = await h.row(sid)
    assert row.status == "SUSPENDED"
    assert await w2.orch.notify(saga_id=sid, token=row.step_execution_token, event={"ok": 1})
    assert await w2.drain() == 1
    assert (await h.row(sid)).status == "COMPLETED"

    spans = exporter.get_finished_spans()
    assert {trace_of(s) for s in spans} == {request.get_span_context().trace_id}
    runs = named(spans, "saga.run flow")
    assert [attrs(r)["saga.worker"] for r in runs] == ["w1", "w2"]
    assert [attrs(r)["saga.status"] for r in runs] == ["SUSPENDED", "COMPLETED"]
    assert {parent_of(r) for r in runs} == {request.get_span_context().span_id}
    waiting, resumed = named(spans, "saga.step approve")
    assert parent_of(waiting) == span_id(runs[0]) and parent_of(resumed) == span_id(runs[1])
    assert attrs(waiting)["saga.status"] == "WAITING"
    assert waiting.status.status_code is StatusCode.UNSET and not waiting.events
    assert attrs(resumed)["saga.status"] == "SUCCESS"
    # Waiting is not an attempt: the run after the event is attempt 1 again.
    assert attrs(waiting)["saga.attempt"] == attrs(resumed)["saga.attempt"] == 1


async def test_timeouts_are_error_spans_with_status_timeout(
    h: Harness, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    b = SagaBuilder(compensate_on_failure=False)
    b.add_step(
        step=Work(h.probe),
        step_id="slow",
        input_map=from_context,
        timeout=0.05,
        retry_policy=NoRetry(),
    )
    h.define("flow", b.build())
    h.probe.block("slow")  # never released: the step's own timeout ends it
    w = await h.worker(tracer_provider=provider)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="o-9", inline=True)
    row = await h.row(sid)
    assert row.status == "FAILED"
    slow = one(exporter.get_finished_spans(), "saga.step slow")
    assert attrs(slow)["saga.status"] == "TIMEOUT"
    assert attrs(slow)["error.type"] == "TimeoutError"
    assert slow.status.status_code is StatusCode.ERROR
    assert slow.status.description == "TimeoutError: no result within 0.05s"
    run = one(exporter.get_finished_spans(), "saga.run flow")
    assert attrs(run)["saga.status"] == "FAILED"
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == row.last_error == "TimeoutError: no result within 0.05s"


async def test_a_wait_that_timed_out_is_a_timeout_span(
    h: Harness, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    class Waits(BaseStep[Num, Out]):
        async def execute(self, inp: Num) -> Out:
            current_step().wait_for_event(timeout=0.2)

    b = SagaBuilder(compensate_on_failure=False)
    b.add_step(step=Waits(), step_id="approve", input_map=from_context, retry_policy=NoRetry())
    h.define("flow", b.build())
    w = await h.worker(tracer_provider=provider)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="o-10", inline=True)
    row = await h.row(sid)
    assert row.status == "SUSPENDED" and row.deadline_at is not None

    async def timed_out() -> bool:
        await w.orch.run_due()
        return (await h.row(sid)).status == "FAILED"

    await eventually(timed_out, what="the wait to time out")
    spans = exporter.get_finished_spans()
    waiting, timeout = named(spans, "saga.step approve")
    run1, run2 = named(spans, "saga.run flow")
    assert parent_of(waiting) == span_id(run1) and parent_of(timeout) == span_id(run2)
    assert trace_of(run1) == trace_of(run2)
    assert attrs(waiting)["saga.status"] == "WAITING"
    assert attrs(timeout)["saga.status"] == "TIMEOUT"
    assert attrs(timeout)["saga.attempt"] == 1
    assert attrs(timeout)["saga.waiting_since"] == (row.context["waits"]["approve"]["since"])
    assert timeout.status.status_code is StatusCode.ERROR
    assert timeout.status.description == "TimeoutError: no event within 0.2s"
    assert attrs(run2)["saga.status"] == "FAILED"


async def test_a_saga_failed_for_an_operator_marks_the_run_span(
    h: Harness, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    starter = await h.worker(definitions={"flow": chain(h.probe, ["a", "b"])})
    runner = await h.worker(
        definitions={"flow": chain(h.probe, ["a", "x"])}, tracer_provider=provider
    )
    sid = await starter.orch.start(saga_name="flow", initial_data={}, aggregation_id="o-11")
    assert await runner.orch.run_due() == 1
    assert (await h.row(sid)).status == "FAILED"
    (run,) = exporter.get_finished_spans()
    assert run.name == "saga.run flow"
    assert attrs(run)["saga.status"] == "FAILED"
    assert attrs(run)["saga.failure"] == "DEFINITION_MISMATCH"
    assert run.status.status_code is StatusCode.ERROR
    assert "changed incompatibly" in (run.status.description or "")


async def test_cancelled_run_ends_its_spans_interrupted(
    h: Harness, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    h.define("flow", chain(h.probe, ("a", "b")))
    h.probe.block("b")
    w = await h.worker(tracer_provider=provider)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="o-6")
    task = w.spawn(w.orch.run_due())
    await h.probe.wait_started("b")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = await h.row(sid)
    assert row.status == "RUNNING" and row.lease_owner is None

    spans = exporter.get_finished_spans()
    run = one(spans, "saga.run flow")
    b = one(spans, "saga.step b")
    assert attrs(b)["saga.interrupted"] == "cancelled"
    assert "saga.status" not in attrs(b)
    assert attrs(run)["saga.interrupted"] == "cancelled"
    assert attrs(run)["saga.status"] == "RUNNING"
    assert attrs(one(spans, "saga.step a"))["saga.status"] == "SUCCESS"


async def test_lost_lease_ends_its_spans_interrupted(
    h: Harness, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    h.define("flow", chain(h.probe, ("a",)))
    gate = h.probe.block("a")
    w = await h.worker(tracer_provider=provider)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="o-7")
    task = w.spawn(w.orch.run_due())
    await h.probe.wait_started("a")
    # An operator takes the saga over (its token changes): the checkpoint is refused.
    row = await h.row(sid)
    await _change_token(h, row.id)
    gate.set()
    assert await task == 1

    spans = exporter.get_finished_spans()
    run = one(spans, "saga.run flow")
    a = one(spans, "saga.step a")
    assert attrs(run)["saga.interrupted"] == "lease lost"
    assert attrs(a)["saga.status"] == "SUCCESS"  # the attempt itself succeeded


async def _change_token(h: Harness, saga_id: uuid.UUID) -> None:
    from saga_core.store.base import RowUpdate

    def apply(row: Any, _now: Any) -> RowUpdate:
        upd = RowUpdate()
        upd.new_lease_token = uuid.uuid4()
        return upd

    _, applied = await h.store.saga_update_locked(saga_id, apply)
    assert applied


async def test_tracing_off_creates_no_spans(
    h: Harness, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    h.define("flow", chain(h.probe, ("a",)))
    w: Worker = await h.worker()
    assert w.orch.engine.tracing is None
    with provider.get_tracer("app").start_as_current_span("request"):
        sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="o-8")
    assert await w.drain() == 1
    row = await h.row(sid)
    assert row.status == "COMPLETED" and "trace_parent" not in row.context
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]


def test_not_a_tracer_provider_is_refused() -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    with pytest.raises(SagaError, match="tracer_provider must be an OpenTelemetry TracerProvider"):
        SagaOrchestrator(
            session_maker=async_sessionmaker(create_async_engine("sqlite+aiosqlite://")),
            tracer_provider="jaeger",
        )


NO_OTEL_SCRIPT = """
import asyncio, importlib.abc, sys

class BlockOtel(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, BlockOtel())

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from saga_core import BaseStep, InputContext, SagaBuilder, SagaError, SagaOrchestrator

class N(BaseModel):
    n: int = 0

class Inc(BaseStep[N, N]):
    async def execute(self, inp: N) -> N:
        return N(n=inp.n + 1)

async def main() -> None:
    sessions = async_sessionmaker(create_async_engine(sys.argv[1]))
    try:
        SagaOrchestrator(session_maker=sessions, tracer_provider=object())
    except SagaError as exc:
        print("REFUSED:", exc)
    orch = SagaOrchestrator(session_maker=sessions)
    b = SagaBuilder()
    b.add_step(step=Inc(), step_id="inc", input_map=lambda ctx: N(n=ctx.initial_data["n"]))
    orch.register("inc", b.build())
    await orch.create_tables()
    sid = await orch.start(saga_name="inc", initial_data={"n": 1}, aggregation_id="x", inline=True)
    snap = await orch.get_snapshot(sid)
    print("STATUS:", snap.status.value)
    print("OTEL LOADED:", any(m.split(".")[0] == "opentelemetry" for m in sys.modules))

asyncio.run(main())
"""


def test_without_a_provider_opentelemetry_is_never_imported(tmp_path: Path) -> None:
    script = tmp_path / "no_otel.py"
    script.write_text(textwrap.dedent(NO_OTEL_SCRIPT))
    url = f"sqlite+aiosqlite:///{tmp_path / 'saga.db'}"
    res = subprocess.run(
        [sys.executable, str(script), url], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "STATUS: COMPLETED" in lines
    assert "OTEL LOADED: False" in lines
    (refused,) = [line for line in lines if line.startswith("REFUSED:")]
    assert "pip install 'saga-core[otel]'" in refused


async def test_branches_of_a_parallel_saga_get_a_span_each_under_the_run(
    h: Harness, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    p = h.probe
    builder = SagaBuilder(parallel=True)
    a = builder.add_step(step=Work(p), step_id="a", input_map=from_context)
    builder.add_step(
        step=Work(p),
        step_id="b",
        input_map=lambda out: Num(n=out.n),
        depends_on=a,
        retry_policy=FixedRetry(2, 0),
    )
    builder.add_step(step=Work(p), step_id="c", input_map=lambda out: Num(n=out.n), depends_on=a)
    h.define("flow", builder.build())
    p.fail["b"] = 1
    app_tracer = provider.get_tracer("app")

    async def inner(ctx: StepContext) -> None:
        with app_tracer.start_as_current_span(f"inner {ctx.step_id}"):
            pass

    p.hooks["c"] = inner
    w = await h.worker("w1", tracer_provider=provider)
    sid = await w.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="o-1")
    assert await w.drain() == 1
    assert (await h.row(sid)).status == "COMPLETED"
    spans = exporter.get_finished_spans()
    run = one(spans, "saga.run flow")
    assert attrs(run)["saga.status"] == "COMPLETED"
    b_spans = named(spans, "saga.step b")
    assert [attrs(s)["saga.attempt"] for s in b_spans] == [1, 2]
    assert [attrs(s)["saga.status"] for s in b_spans] == ["ERROR", "SUCCESS"]
    assert b_spans[0].status.status_code is StatusCode.ERROR
    for name in ("saga.step a", "saga.step c"):
        assert parent_of(one(spans, name)) == span_id(run)
    assert all(parent_of(s) == span_id(run) for s in b_spans)
    assert parent_of(one(spans, "inner c")) == span_id(one(spans, "saga.step c"))
    assert len({trace_of(s) for s in spans}) == 1
