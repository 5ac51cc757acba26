"""Optional OpenTelemetry tracing: a span per saga run, step attempt and compensation.

Enabled by ``SagaOrchestrator(..., tracer_provider=provider)``; the engine then holds a
:class:`Tracing` (``engine.tracing``, ``None`` otherwise). OpenTelemetry is imported only
here and only when tracing is enabled: saga_core needs none of it without.

Without tracing the run carries :data:`NO_SPAN`, whose methods do nothing, so the run layer
never asks whether tracing is on.

The trace of a saga is captured by ``start``: the W3C ``traceparent``/``tracestate`` of the
span current there are kept in the saga's context (``trace_parent``, ``trace_state``), and
every ``saga.run`` span, on whichever worker and after any restart, is their child. A saga
with no captured parent but a 32-hex ``trace_id`` gets its spans in that trace under a
synthetic remote parent (a random span id, sampled). The executor calls
:meth:`RunSpan.step` around each attempt; the step's span is the current span while the
step's code runs, so spans the application creates there are its children.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from saga_core.errors import SagaError
from saga_core.history import error_text
from saga_core.lease import Interrupted
from saga_core.version import VERSION

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from saga_core.store.base import SagaRow

__all__ = ["INSTALL_HINT", "NO_SPAN", "RunSpan", "StepSpan", "Tracing", "note_failure"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'saga-core[otel]'"

TRACE_PARENT_KEY = "trace_parent"
"""Context key: the W3C ``traceparent`` of the span current at ``start``."""
TRACE_STATE_KEY = "trace_state"
"""Context key: its W3C ``tracestate``, when not empty."""

MAX_STACK_CHARS = 8000

_HEX_TRACE_ID = re.compile(r"[0-9a-f]{32}")


class Outcome(Protocol):
    """What an attempt came to, as far as its span cares (``attempt.Outcome``)."""

    @property
    def entry(self) -> dict[str, Any]: ...

    @property
    def error(self) -> str | None: ...


OutcomeT = TypeVar("OutcomeT", bound=Outcome)

_ACTIVE_STEP: ContextVar[StepSpan | None] = ContextVar("saga_trace_step", default=None)

P = ParamSpec("P")


def _broken(what: str, exc: Exception) -> None:
    logger.warning("tracing: could not %s: %s: %s", what, type(exc).__name__, exc)


def _never_raises(fn: Callable[P, None]) -> Callable[P, None]:
    """Tracing must not break a saga: an error here (a custom provider, an exporter) is
    logged and the saga goes on."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            _broken(f"record a span ({fn.__name__})", exc)

    return wrapper


def note_failure(exc: BaseException) -> None:
    """Called by the executor when it records a failed attempt: the step span in progress
    (if any) records the exception with its stack trace. Costs one context-variable read."""
    handle = _ACTIVE_STEP.get()
    if handle is not None:
        handle.exc = exc


def otel_trace_id(trace_id: str | None) -> int | None:
    """``trace_id`` as an OpenTelemetry trace id (32 lower-case hex digits, not all zero)."""
    if trace_id is None or not _HEX_TRACE_ID.fullmatch(trace_id):
        return None
    value = int(trace_id, 16)
    return value or None


class Tracing:
    """The tracer of one engine, from the application's own ``TracerProvider``.

    Raises:
        SagaError: OpenTelemetry is not installed, or ``tracer_provider`` is not a provider.
    """

    def __init__(self, tracer_provider: Any) -> None:
        try:
            from opentelemetry import trace  # noqa: F401
        except ImportError as exc:
            raise SagaError(
                f"tracer_provider= needs the OpenTelemetry API, which is not installed: "
                f"{INSTALL_HINT} (or pip install opentelemetry-api)"
            ) from exc
        get_tracer = getattr(tracer_provider, "get_tracer", None)
        if not callable(get_tracer):
            raise SagaError(
                "tracer_provider must be an OpenTelemetry TracerProvider (for example "
                f"opentelemetry.sdk.trace.TracerProvider()), got {tracer_provider!r}"
            )
        self.provider = tracer_provider
        self.tracer: Tracer = get_tracer("saga_core", VERSION)

    # --- start -----------------------------------------------------------------------------

    def capture(self, trace_id: str | None) -> tuple[str | None, dict[str, str]]:
        """At ``start``: the saga's trace id and the context entries that keep the current
        span as the parent of its runs. Without a valid current span: ``trace_id`` as given
        and nothing to keep. Without a ``trace_id``: the current span's trace id."""
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        span_ctx = trace.get_current_span().get_span_context()
        if not span_ctx.is_valid:
            return trace_id, {}
        carrier: dict[str, str] = {}
        try:
            TraceContextTextMapPropagator().inject(carrier)
        except Exception as exc:
            _broken("capture the current span", exc)
        if "traceparent" not in carrier:
            return trace_id, {}
        entries = {TRACE_PARENT_KEY: carrier["traceparent"]}
        if carrier.get("tracestate"):
            entries[TRACE_STATE_KEY] = carrier["tracestate"]
        if trace_id is None:
            trace_id = trace.format_trace_id(span_ctx.trace_id)
        return trace_id, entries

    # --- runs ------------------------------------------------------------------------------

    def parent_context(self, row: SagaRow) -> Context:
        """The parent of the saga's run spans: the span captured at ``start``; else a
        synthetic remote parent in the saga's 32-hex ``trace_id``; else none (a new trace)."""
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = row.context.get(TRACE_PARENT_KEY)
        if isinstance(parent, str):
            carrier = {"traceparent": parent}
            state = row.context.get(TRACE_STATE_KEY)
            if isinstance(state, str):
                carrier["tracestate"] = state
            ctx = TraceContextTextMapPropagator().extract(carrier, context=Context())
            if trace.get_current_span(ctx).get_span_context().is_valid:
                return ctx
        tid = otel_trace_id(row.trace_id)
        if tid is None:
            return Context()
        synthetic = trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id=tid,
                span_id=random.getrandbits(64) or 1,
                is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
        )
        return trace.set_span_in_context(synthetic, Context())

    @contextmanager
    def run_span(self, row: SagaRow, worker: str) -> Iterator[RunSpan]:
        """``saga.run {saga_name}``: one claim of the saga by this worker, current while it
        runs. Ends with the saga's status, or ``saga.interrupted`` when cancelled. Yields
        :data:`NO_SPAN` (the run goes on untraced) if the span cannot be started."""
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        handle: _OtelRunSpan | None = None
        try:
            span = self.tracer.start_span(
                f"saga.run {row.saga_name}",
                context=self.parent_context(row),
                kind=trace.SpanKind.INTERNAL,
                attributes={
                    "saga.id": str(row.id),
                    "saga.name": row.saga_name,
                    "saga.aggregation_id": row.aggregation_id,
                    "saga.worker": worker,
                    "saga.trace_id": row.trace_id or "",
                    "saga.takeover_count": row.takeover_count,
                },
            )
            handle = _OtelRunSpan(self, span, row, worker)
        except Exception as exc:
            _broken("start a run span", exc)
        if handle is None:
            yield NO_SPAN
            return
        token = otel_context.attach(trace.set_span_in_context(handle.span))
        try:
            yield handle
        except asyncio.CancelledError:
            handle.interrupted("cancelled")
            raise
        except BaseException as exc:
            handle.error(exc)
            raise
        finally:
            otel_context.detach(token)
            handle.end()


class RunSpan:
    """The span of one run and of its attempts. This base class records nothing: it is
    what a run carries when tracing is off (:data:`NO_SPAN`)."""

    def interrupted(self, reason: str) -> None:
        """The run stopped without finishing its work (lease lost, cancelled)."""

    def error(self, exc: BaseException) -> None:
        """The run stopped by an unexpected error."""

    def failed_for_operator(self, label: str, reason: str) -> None:
        """The saga was set FAILED without running a step (quarantine, definition mismatch)."""

    def saw(self, status: str, error: str | None = None) -> None:
        """The saga's status (and last error) as the run last wrote it."""

    async def attempt(
        self, step_id: str, phase: str, attempt: int, call: Awaitable[OutcomeT]
    ) -> OutcomeT:
        """Await ``call``, one attempt of ``step_id`` in ``phase``, under its own span."""
        return await call

    def record(self, step_id: str, phase: str, attempt: int, outcome: Outcome) -> None:
        """A span for an attempt decided without running code (a wait that timed out)."""


NO_SPAN = RunSpan()
"""The run span of a run without tracing."""


class _OtelRunSpan(RunSpan):
    """The OpenTelemetry span of one run, and the spans of its attempts."""

    def __init__(self, tracing: Tracing, span: Span, row: SagaRow, worker: str) -> None:
        self.tracing = tracing
        self.span = span
        self.row = row
        self.worker = worker
        self.status = row.status
        """The saga's status as this run last saw it."""
        self.last_error = row.last_error
        self.failed = False
        """The span's status is already ERROR."""

    @_never_raises
    def interrupted(self, reason: str) -> None:
        self.span.set_attribute("saga.interrupted", reason)

    @_never_raises
    def error(self, exc: BaseException) -> None:
        _record(self.span, type(exc).__name__, error_text(exc), exc)
        self.failed = True

    @_never_raises
    def failed_for_operator(self, label: str, reason: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.status = "FAILED"
        self.span.set_attribute("saga.failure", label)
        self.span.set_status(Status(StatusCode.ERROR, reason))
        self.failed = True

    def saw(self, status: str, error: str | None = None) -> None:
        self.status = status
        if error is not None:
            self.last_error = error

    @_never_raises
    def end(self) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("saga.status", self.status)
        if self.status == "FAILED" and not self.failed:
            self.span.set_status(Status(StatusCode.ERROR, self.last_error or "saga FAILED"))
        self.span.end()

    def _start_step(self, step_id: str, phase: str, attempt: int) -> Span:
        from opentelemetry import trace

        name = f"saga.step {step_id}" if phase == "execute" else f"saga.compensate {step_id}"
        return self.tracing.tracer.start_span(
            name,
            context=trace.set_span_in_context(self.span),
            kind=trace.SpanKind.INTERNAL,
            attributes={
                "saga.id": str(self.row.id),
                "saga.name": self.row.saga_name,
                "saga.aggregation_id": self.row.aggregation_id,
                "saga.step_id": step_id,
                "saga.phase": phase,
                "saga.attempt": attempt,
                "saga.worker": self.worker,
            },
        )

    async def attempt(
        self, step_id: str, phase: str, attempt: int, call: Awaitable[OutcomeT]
    ) -> OutcomeT:
        """Await ``call`` under the attempt's span, current meanwhile (the step's task
        inherits it), and record the outcome from its history entry: ``saga.status``
        SUCCESS, ERROR, TIMEOUT or WAITING."""
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        try:
            span = self._start_step(step_id, phase, attempt)
        except Exception as exc:
            _broken("start a step span", exc)
            return await call
        handle = StepSpan(span)
        token = otel_context.attach(trace.set_span_in_context(span))
        active = _ACTIVE_STEP.set(handle)
        try:
            outcome = await call
        except asyncio.CancelledError:
            handle.interrupted("cancelled")
            raise
        except Interrupted as exc:
            handle.interrupted(str(exc) or type(exc).__name__)
            raise
        except BaseException as exc:
            handle.exc = exc
            handle.finish({"status": "ERROR", "error_type": type(exc).__name__})
            raise
        else:
            if outcome.error is not None:
                self.last_error = outcome.error
            handle.finish(outcome.entry)
            return outcome
        finally:
            _ACTIVE_STEP.reset(active)
            otel_context.detach(token)
            handle.end()

    @_never_raises
    def record(self, step_id: str, phase: str, attempt: int, outcome: Outcome) -> None:
        span = self._start_step(step_id, phase, attempt)
        since = outcome.entry.get("waiting_since")
        if isinstance(since, str):
            span.set_attribute("saga.waiting_since", since)
        StepSpan(span).finish(outcome.entry)
        if outcome.error is not None:
            self.last_error = outcome.error
        span.end()


class StepSpan:
    """The span of one attempt; ``exc`` is the exception of a failed one (``note_failure``)."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.exc: BaseException | None = None

    @_never_raises
    def interrupted(self, reason: str) -> None:
        self.span.set_attribute("saga.interrupted", reason)

    @_never_raises
    def end(self) -> None:
        self.span.end()

    @_never_raises
    def finish(self, entry: dict[str, Any]) -> None:
        """Set the outcome from the attempt's history entry (not ended here)."""
        status = str(entry.get("status", ""))
        self.span.set_attribute("saga.status", status)
        retry = entry.get("retry_in_s")
        if isinstance(retry, int | float):
            self.span.set_attribute("saga.retry_in_s", float(retry))
        if status in ("ERROR", "TIMEOUT"):
            error_type = str(entry.get("error_type") or type(self.exc).__name__)
            text = entry.get("error")
            if not isinstance(text, str):
                text = error_text(self.exc) if self.exc is not None else error_type
            _record(self.span, error_type, text, self.exc)


def _record(span: Span, error_type: str, text: str, exc: BaseException | None) -> None:
    """Status ERROR and an ``exception`` event, the message truncated like history's."""
    from opentelemetry.trace import Status, StatusCode

    attributes: dict[str, str] = {"exception.type": error_type, "exception.message": text}
    if exc is not None:
        stack = "".join(traceback.format_exception(exc))
        attributes["exception.stacktrace"] = stack[-MAX_STACK_CHARS:]
    span.set_attribute("error.type", error_type)
    span.add_event("exception", attributes)
    span.set_status(Status(StatusCode.ERROR, text))
