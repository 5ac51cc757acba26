"""saga_core.tracing on its own, with the OpenTelemetry SDK's in-memory exporter: what
``start`` captures, which parent a run gets, the outcome recorded on a step span, and that
the step span is the current span in a task created the way the executor runs steps."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import StatusCode, format_trace_id

from saga_core import SagaError
from saga_core import machine as m
from saga_core.attempt import Outcome
from saga_core.lease import LeaseLost
from saga_core.store.base import SagaRow
from saga_core.tracing import NO_SPAN, Tracing, note_failure, otel_trace_id


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    return p


@pytest.fixture
def tracing(provider: TracerProvider) -> Tracing:
    return Tracing(provider)


def make_row(*, trace_id: str | None = None, context: dict[str, Any] | None = None) -> SagaRow:
    now = datetime.now(UTC)
    return SagaRow(
        id=uuid.uuid4(),
        saga_name="orders",
        aggregation_id="order-1",
        status="RUNNING",
        phase="execute",
        current_step_index=0,
        steps_state=[{"step_id": "a"}, {"step_id": "b"}],
        step_execution_token=uuid.uuid4(),
        context=context or {},
        deadline_at=None,
        lease_owner="w",
        retry_counter=0,
        takeover_count=2,
        last_error=None,
        definition_fingerprint="f",
        trace_id=trace_id,
        created_at=now,
        updated_at=now,
        finished_at=None,
    )


STATE = m.MachineState(
    m.SagaStatus.RUNNING,
    m.Phase.EXECUTE,
    1,
    (m.StepState(m.StepStatus.SUCCEEDED, 1), m.StepState(attempts=2, compensation_attempts=4)),
)


def outcome(status: str, **entry: Any) -> Outcome:
    kind = {"SUCCESS": "success", "WAITING": "wait"}.get(status, "failure")
    return Outcome(kind, {"status": status, **entry}, error=entry.get("error"))


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


# --------------------------------------------------------------------------- setup


def test_missing_opentelemetry_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] == "opentelemetry"]:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    with pytest.raises(SagaError, match=r"pip install 'saga-core\[otel\]'"):
        Tracing(object())


def test_not_a_provider_is_refused() -> None:
    with pytest.raises(SagaError, match="must be an OpenTelemetry TracerProvider"):
        Tracing("console")


def test_otel_trace_id() -> None:
    assert otel_trace_id("0af7651916cd43dd8448eb211c80319c") == 0x0AF7651916CD43DD8448EB211C80319C
    for bad in (None, "", "0" * 32, "0AF7651916CD43DD8448EB211C80319C", "abc", "req-1", "a" * 33):
        assert otel_trace_id(bad) is None, bad


# --------------------------------------------------------------------------- capture


def test_capture_without_a_current_span_keeps_the_trace_id(tracing: Tracing) -> None:
    assert tracing.capture(None) == (None, {})
    assert tracing.capture("req-7") == ("req-7", {})


def test_capture_under_a_span(tracing: Tracing, provider: TracerProvider) -> None:
    with provider.get_tracer("t").start_as_current_span("request") as span:
        tid, entries = tracing.capture(None)
        given, _ = tracing.capture("req-7")
    ctx = span.get_span_context()
    assert tid == format_trace_id(ctx.trace_id)
    assert given == "req-7"
    assert ctx.trace_flags.sampled
    assert entries == {"trace_parent": f"00-{tid}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"}


def test_capture_keeps_the_tracestate(tracing: Tracing, provider: TracerProvider) -> None:
    parent = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=0x1234,
            span_id=0x99,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            trace_state=trace.TraceState([("vendor", "x1")]),
        )
    )
    with trace.use_span(parent):
        tid, entries = tracing.capture(None)
    assert tid == format_trace_id(0x1234)
    assert entries == {
        "trace_parent": f"00-{tid}-{0x99:016x}-01",
        "trace_state": "vendor=x1",
    }


# --------------------------------------------------------------------------- parents


def run_once(tracing: Tracing, row: SagaRow) -> None:
    with tracing.run_span(row, "w1"):
        pass


def test_run_continues_the_captured_parent(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    tid = uuid.uuid4().hex
    row = make_row(
        trace_id="req-1",
        context={"trace_parent": f"00-{tid}-00000000000000ab-01", "trace_state": "k=v"},
    )
    run_once(tracing, row)
    run = by_name(exporter)["saga.run orders"]
    assert run.parent is not None and run.parent.is_remote
    assert (format_trace_id(run.parent.trace_id), run.parent.span_id) == (tid, 0xAB)
    assert run.context is not None and run.context.trace_state.get("k") == "v"
    assert run.kind is trace.SpanKind.INTERNAL
    assert attrs(run) == {
        "saga.id": str(row.id),
        "saga.name": "orders",
        "saga.aggregation_id": "order-1",
        "saga.worker": "w1",
        "saga.trace_id": "req-1",
        "saga.takeover_count": 2,
        "saga.status": "RUNNING",
    }


def test_run_of_a_hex_trace_id_gets_a_synthetic_remote_parent(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    tid = uuid.uuid4().hex
    # An unusable captured parent falls back to the trace id as well.
    run_once(tracing, make_row(trace_id=tid, context={"trace_parent": "garbage"}))
    run_once(tracing, make_row(trace_id=tid))
    first, second = exporter.get_finished_spans()
    for run in (first, second):
        assert run.parent is not None and run.parent.is_remote
        assert format_trace_id(run.parent.trace_id) == tid
        assert run.parent.trace_flags.sampled
    assert first.parent is not None and second.parent is not None
    assert first.parent.span_id != second.parent.span_id  # random, one per run


def test_synthetic_parent_is_sampled_under_a_parent_based_sampler(
    exporter: InMemorySpanExporter,
) -> None:
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    run_once(Tracing(provider), make_row(trace_id=uuid.uuid4().hex))
    assert [s.name for s in exporter.get_finished_spans()] == ["saga.run orders"]


def test_run_without_a_usable_trace_id_is_a_root_span(
    tracing: Tracing, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    with provider.get_tracer("t").start_as_current_span("unrelated") as current:
        run_once(tracing, make_row(trace_id="req-1"))
    run = by_name(exporter)["saga.run orders"]
    assert run.parent is None, "not a child of whatever happens to be current"
    assert run.context is not None
    assert run.context.trace_id != current.get_span_context().trace_id


# --------------------------------------------------------------------------- steps


async def test_step_span_is_current_in_the_step_task(
    tracing: Tracing, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    seen: dict[str, Any] = {}

    async def user_code() -> None:
        seen["current"] = trace.get_current_span()
        with provider.get_tracer("app").start_as_current_span("user"):
            pass

    async def attempt() -> Any:
        # Like the executor's _call: the step runs in a task with a copied context.
        cv = contextvars.copy_context()
        await asyncio.get_running_loop().create_task(user_code(), context=cv)
        return outcome("SUCCESS")

    with tracing.run_span(make_row(), "w1") as run:
        run_current = trace.get_current_span()
        res = await run.attempt("b", "execute", 3, attempt())
        assert trace.get_current_span() is run_current, "restored after the step"
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert res.entry["status"] == "SUCCESS"
    spans = by_name(exporter)
    step, user, r = spans["saga.step b"], spans["user"], spans["saga.run orders"]
    assert seen["current"].get_span_context() == step.context
    assert user.parent is not None and step.context is not None
    assert user.parent.span_id == step.context.span_id
    assert step.parent is not None and r.context is not None
    assert step.parent.span_id == r.context.span_id
    assert attrs(step) == {
        "saga.id": attrs(r)["saga.id"],
        "saga.name": "orders",
        "saga.aggregation_id": "order-1",
        "saga.step_id": "b",
        "saga.phase": "execute",
        "saga.attempt": 3,
        "saga.worker": "w1",
        "saga.status": "SUCCESS",
    }
    assert step.status.status_code is StatusCode.UNSET


async def test_step_outcomes(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    async def failing() -> Any:
        try:
            raise ValueError("card declined")
        except ValueError as exc:
            note_failure(exc)  # what the executor's _record_failure does
        return outcome(
            "ERROR",
            error_type="ValueError",
            error="ValueError: card declined",
            retry_in_s=1.5,
        )

    async def waiting() -> Any:
        return outcome("WAITING")

    async def compensated() -> Any:
        return outcome("SUCCESS")

    with tracing.run_span(make_row(), "w1") as run:
        await run.attempt("a", "execute", 1, failing())
        await run.attempt("b", "execute", 3, waiting())
        await run.attempt("b", "compensate", 5, compensated())
        run.saw("COMPENSATED")
    failed, waited, comp, r = exporter.get_finished_spans()
    assert (failed.name, attrs(failed)["saga.status"]) == ("saga.step a", "ERROR")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: card declined"
    assert attrs(failed)["saga.retry_in_s"] == 1.5
    assert attrs(failed)["error.type"] == "ValueError"
    (event,) = failed.events
    assert event.attributes is not None
    assert event.attributes["exception.message"] == "ValueError: card declined"
    assert 'raise ValueError("card declined")' in str(event.attributes["exception.stacktrace"])
    assert (waited.name, attrs(waited)["saga.status"]) == ("saga.step b", "WAITING")
    assert waited.status.status_code is StatusCode.UNSET and not waited.events
    assert (comp.name, attrs(comp)["saga.phase"], attrs(comp)["saga.attempt"]) == (
        "saga.compensate b",
        "compensate",
        5,
    )
    assert attrs(r)["saga.status"] == "COMPENSATED"


async def test_error_text_is_truncated_like_history(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async def broken() -> Any:
        raise RuntimeError("x" * 10_000)  # an executor bug: not a recorded attempt

    with tracing.run_span(make_row(), "w1") as run, pytest.raises(RuntimeError):
        await run.attempt("a", "execute", 1, broken())
    step = by_name(exporter)["saga.step a"]
    assert step.status.status_code is StatusCode.ERROR
    assert step.status.description == ("RuntimeError: " + "x" * 10_000)[:4000]


async def test_interrupted_steps_and_runs(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    async def lost() -> Any:
        raise LeaseLost()

    async def cancelled() -> Any:
        raise asyncio.CancelledError()

    with pytest.raises(LeaseLost), tracing.run_span(make_row(), "w1") as run:
        await run.attempt("a", "execute", 1, lost())
    with pytest.raises(asyncio.CancelledError), tracing.run_span(make_row(), "w1") as run:
        await run.attempt("a", "execute", 1, cancelled())
    step1, run1, step2, run2 = exporter.get_finished_spans()
    assert attrs(step1)["saga.interrupted"] == "lease lost"
    assert step1.status.status_code is StatusCode.UNSET and "saga.status" not in attrs(step1)
    assert run1.status.status_code is StatusCode.ERROR  # LeaseLost escaping a run: a bug
    assert attrs(step2)["saga.interrupted"] == attrs(run2)["saga.interrupted"] == "cancelled"
    assert run2.status.status_code is StatusCode.UNSET


def test_note_failure_outside_a_step_does_nothing() -> None:
    note_failure(RuntimeError("no step span"))


def test_run_failed_for_an_operator(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    with tracing.run_span(make_row(), "w1") as run:
        run.failed_for_operator("QUARANTINED", "quarantined: lost 6 times")
    (span,) = exporter.get_finished_spans()
    assert attrs(span)["saga.status"] == "FAILED"
    assert attrs(span)["saga.failure"] == "QUARANTINED"
    assert span.status.description == "quarantined: lost 6 times"


@pytest.fixture(autouse=True)
def no_leaked_context() -> Iterator[None]:
    yield
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_sagad_rebinding_keeps_the_provider(provider: TracerProvider, tmp_path: Any) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from saga_core import SagaOrchestrator
    from sagad.apps import _rebind

    orch: SagaOrchestrator[Any] = SagaOrchestrator(
        session_maker=async_sessionmaker(
            create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/a.db")
        ),
        tracer_provider=provider,
    )
    assert orch.engine.tracing is not None and orch.engine.tracing.provider is provider
    new = _rebind(orch, f"sqlite+aiosqlite:///{tmp_path}/b.db")
    assert new is not orch
    assert new.engine.tracing is orch.engine.tracing


class _FlakyTracer:
    """Starts run spans; refuses every other span (a broken custom provider)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def start_span(self, name: str, **kwargs: Any) -> Any:
        if name.startswith("saga.run") and "runs" not in name:
            return self.real.start_span(name, **kwargs)
        raise RuntimeError("provider broken")


class _FlakyProvider:
    def __init__(self, real: TracerProvider) -> None:
        self.real = real

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return _FlakyTracer(self.real.get_tracer(*args, **kwargs))


async def test_a_broken_provider_never_breaks_a_run(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracing = Tracing(_FlakyProvider(provider))

    async def attempt() -> Any:
        return outcome("SUCCESS")

    with tracing.run_span(make_row(), "w1") as run:
        assert run is not NO_SPAN
        res = await run.attempt("a", "execute", 1, attempt())  # untraced, but it ran
        assert res.entry["status"] == "SUCCESS"
        run.record("a", "execute", 1, outcome("TIMEOUT"))  # logged, not raised
    assert [s.name for s in exporter.get_finished_spans()] == ["saga.run orders"]

    row = dataclasses.replace(make_row(), saga_name="runs")  # its run span cannot start
    with tracing.run_span(row, "w1") as none:
        assert none is NO_SPAN
