"""One attempt of one step: build its input, call it under its timeout racing the lease,
validate and size its output. Every error of the step's own becomes a ``failure`` outcome
(with its history entry); a lost lease, a cancellation, or a failure of the worker's own
before the step's code ran (:class:`NotStarted`) propagates instead."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from saga_core import history as h
from saga_core.context import StepContext, WaitForEvent, run_with_step
from saga_core.definition import InputContext, StepSpec
from saga_core.frozen import make
from saga_core.lease import Interrupted, LeaseLost, monotonic
from saga_core.payload import check_size
from saga_core.retry import RetryPolicy
from saga_core.rows import (
    EVENTS_KEY,
    INITIAL_DATA_KEY,
    LATEST_EVENT_KEY,
    STEP_INPUTS_KEY,
    STEP_OUTPUTS_KEY,
    Wait,
)
from saga_core.run import Run
from saga_core.tracebacks import timeout_traceback, traceback_text
from saga_core.tracing import note_failure

__all__ = ["NotStarted", "Outcome", "compensate", "execute", "wait_timed_out"]

Factory = Callable[[], Coroutine[Any, Any, Any]]


class StepTimeout(Exception):
    """The step did not return within its timeout; ``cancelled``: the ``CancelledError``
    the timeout stopped its code with (its stack says where the code was)."""

    def __init__(self, message: str, cancelled: BaseException | None = None) -> None:
        super().__init__(message)
        self.cancelled = cancelled


class NotStarted(Interrupted):
    """The step's code could not be started for a reason of the worker's own (no database
    connection to be had for a transactional step): not a failed attempt of the step."""


@dataclass
class Outcome:
    """What one execution (or compensation) of a step came to."""

    kind: str
    """``success``, ``failure`` or ``wait``."""
    entry: dict[str, Any]
    """Its history entry (status, duration, input/output or error filled in)."""
    error: str | None = None
    output: dict[str, Any] | None = None
    wait_timeout: timedelta | None = None
    wait_name: str | None = None
    """A wait for an event of this name (also deliverable by correlation)."""
    retry_delay: timedelta | None = None
    """A failure: the retry policy's wait before the next attempt (None: exhausted)."""


def _ms(started: float) -> float:
    return round((monotonic() - started) * 1000, 3)


def _failure(
    entry: dict[str, Any], exc: BaseException, started: float, policy: RetryPolicy, failures: int
) -> Outcome:
    note_failure(exc)
    if isinstance(exc, StepTimeout):
        error = f"TimeoutError: {exc}"
        entry.update(status=h.TIMEOUT, error_type="TimeoutError", error=error)
        entry["traceback"] = timeout_traceback(exc.cancelled, error)
    else:
        error = h.error_text(exc)
        entry.update(status=h.ERROR, error_type=h.storable(type(exc).__name__), error=error)
        entry["traceback"] = traceback_text(exc)
    entry["duration_ms"] = _ms(started)
    return _with_policy(Outcome("failure", entry, error=error), policy, failures)


def _with_policy(out: Outcome, policy: RetryPolicy, failures: int) -> Outcome:
    """A failed attempt, with what its retry policy says (the ``failures``-th failure)."""
    out.retry_delay = delay = policy.next_delay(failures)
    if delay is not None:
        out.entry["retry_in_s"] = round(delay.total_seconds(), 3)
    return out


def step_context(run: Run, spec: StepSpec, phase: str, attempt: int) -> StepContext:
    suffix = "" if phase == h.EXECUTE else ":compensate"
    return make(
        StepContext,
        saga_id=run.saga_id,
        saga_name=run.row.saga_name,
        aggregation_id=run.row.aggregation_id,
        step_id=spec.step_id,
        phase="execute" if phase == h.EXECUTE else "compensate",
        attempt=attempt,
        token=run.step_token(spec.index),
        trace_id=run.row.trace_id,
        idempotency_key=f"{run.saga_id_text}:{spec.step_id}{suffix}",
        worker=run.worker,
        _session=None,
    )


# --- forward ---------------------------------------------------------------------------------


async def execute(run: Run, spec: StepSpec, attempt: int, failures: int) -> Outcome:
    """One execution of ``spec``; should it fail, it is the ``failures``-th failure its
    retry policy counts."""
    entry = run.entry(spec, h.EXECUTE, attempt)
    started = monotonic()
    limit = run.deps.settings.max_payload_bytes
    try:
        inp = await build_input(run, spec)
        inp_json = inp.model_dump(mode="json")
        # Recorded in history and context: it must be storable, like an output.
        check_size(inp_json, f"input of step {spec.step_id!r}", limit)
        entry["input"] = inp_json
        ctx = step_context(run, spec, h.EXECUTE, attempt)
        out = await call(run, lambda: spec.step.execute(inp), spec.timeout, ctx, spec.transactional)
        out_json = validate_output(spec, out).model_dump(mode="json")
        check_size(out_json, f"output of step {spec.step_id!r}", limit)
    except (LeaseLost, NotStarted, asyncio.CancelledError):
        raise
    except WaitForEvent as wait:
        # Not an attempt: the step runs again on an event (seeing it), or the wait times out
        # at its due time (a failed attempt, recorded by the claim then).
        timeout = wait.timeout
        entry.update(
            status=h.WAITING,
            duration_ms=_ms(started),
            wait_timeout_s=None if timeout is None else timeout.total_seconds(),
        )
        if wait.name is not None:  # a named wait also accepts delivery by correlation
            entry["event_name"] = wait.name
        return Outcome("wait", entry, wait_timeout=timeout, wait_name=wait.name)
    except Exception as exc:
        return _failure(entry, exc, started, spec.retry_policy, failures)
    entry.update(status=h.SUCCESS, output=out_json, duration_ms=_ms(started))
    return Outcome("success", entry, output=out_json)


def wait_timed_out(run: Run, spec: StepSpec, attempt: int, failures: int, wait: Wait) -> Outcome:
    """The failed attempt (TIMEOUT) of a step whose wait for an event ended without one (the
    ``failures``-th failure its retry policy counts)."""
    entry = run.entry(spec, h.EXECUTE, attempt)
    start, until = wait.since_dt(), wait.until_dt()
    seconds = None if start is None or until is None else (until - start).total_seconds()
    error = (
        f"TimeoutError: no event within {seconds:g}s"
        if seconds is not None
        else "TimeoutError: no event in time"
    )
    entry.update(
        status=h.TIMEOUT,
        error_type="TimeoutError",
        error=error,
        duration_ms=0.0,
        waiting_since=wait.since,
    )
    if wait.name is not None:
        entry["event_name"] = wait.name
    return _with_policy(Outcome("failure", entry, error=error), spec.retry_policy, failures)


# --- rollback --------------------------------------------------------------------------------


async def compensate(run: Run, spec: StepSpec, attempt: int, failures: int) -> Outcome:
    """One execution of ``spec``'s compensation (waiting is an ordinary error here); should
    it fail, it is the ``failures``-th failure its retry policy counts."""
    entry = run.entry(spec, h.COMPENSATE, attempt)
    started = monotonic()
    try:
        raw_in = (run.context.get(STEP_INPUTS_KEY) or {}).get(spec.step_id)
        raw_out = (run.context.get(STEP_OUTPUTS_KEY) or {}).get(spec.step_id)
        if raw_in is None or raw_out is None:
            raise LookupError(f"no recorded input/output of step {spec.step_id!r} to compensate")
        inp = spec.input_model.model_validate(raw_in)
        out = spec.output_model.model_validate(raw_out)
        entry["input"] = raw_in
        entry["output"] = raw_out
        ctx = step_context(run, spec, h.COMPENSATE, attempt)
        await call(
            run,
            lambda: spec.step.compensate(inp, out),
            spec.compensation_timeout,
            ctx,
            spec.transactional,
        )
    except (LeaseLost, NotStarted, asyncio.CancelledError):
        raise
    except Exception as exc:
        return _failure(entry, exc, started, spec.compensation_retry_policy, failures)
    entry.update(status=h.SUCCESS, duration_ms=_ms(started))
    return Outcome("success", entry)


# --- pieces ------------------------------------------------------------------------------------


def _as_model(model: type[BaseModel], raw: Any, what: str) -> BaseModel:
    """``raw`` as ``model``: an instance of it, or a dict validated into it. Another model
    class is an error naming both: silently re-validating it would hide a wiring mistake."""
    if isinstance(raw, model):
        return raw
    if isinstance(raw, dict):
        return model.model_validate(raw)
    if isinstance(raw, BaseModel):
        raise TypeError(
            f"{what} returned {type(raw).__name__}; expected {model.__name__} (or a dict): "
            f"{type(raw).__name__} is another model class"
        )
    raise TypeError(f"{what} returned {type(raw).__name__}; expected {model.__name__} or a dict")


async def build_input(run: Run, spec: StepSpec) -> BaseModel:
    outputs: dict[str, Any] = run.context.get(STEP_OUTPUTS_KEY) or {}
    deps = spec.dependencies or ((spec.depends_on,) if spec.depends_on else ())
    args: list[Any]
    if deps and not spec.context_input:
        args = [
            run.definition.step(d).output_model.model_validate(outputs.get(d) or {}) for d in deps
        ]
    else:
        args = [
            InputContext(
                initial_data=run.context.get(INITIAL_DATA_KEY) or {},
                step_outputs=outputs,
                events=run.context.get(EVENTS_KEY) or [],
                latest_event=run.context.get(LATEST_EVENT_KEY),
            )
        ]
    raw = spec.input_map(*args)
    if not isinstance(raw, BaseModel | dict) and inspect.isawaitable(raw):
        raw = await raw
    return _as_model(spec.input_model, raw, f"input_map of step {spec.step_id!r}")


def validate_output(spec: StepSpec, out: Any) -> BaseModel:
    return _as_model(spec.output_model, out, f"step {spec.step_id!r}")


async def call(
    run: Run, factory: Factory, timeout: timedelta | None, ctx: StepContext, transactional: bool
) -> Any:
    """Run user code in its own task (with ``current_step()`` set) under its timeout,
    racing the lease: a lost lease cancels it. A transactional step gets its session."""
    if transactional:
        try:
            factory, ctx = await run.deps.tx.begin(run, factory, ctx)
        except (LeaseLost, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise NotStarted(
                f"could not open the transaction of step {ctx.step_id!r}: {h.error_text(exc)}"
            ) from exc

    async def guarded() -> Any:
        if timeout is None:
            return await factory()
        try:
            async with asyncio.timeout(timeout.total_seconds()) as cm:
                return await factory()
        except TimeoutError as exc:
            if cm.expired():
                # The CancelledError the timeout stopped the code with: Python 3.11 chains it
                # as the context of this TimeoutError, 3.12 as its cause.
                cancelled = exc.__cause__ or exc.__context__
                message = f"no result within {timeout.total_seconds():g}s"
                raise StepTimeout(message, cancelled) from None
            raise

    # Its own task: the step's code runs in a copy of the context (what it sets stays its
    # own) and the lease cancels it alone when lost.
    task = asyncio.get_running_loop().create_task(guarded(), context=run_with_step(ctx))
    run.lease.watch(task)
    try:
        return await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if run.lease.is_lost and (me is None or me.cancelling() == 0):
            raise LeaseLost() from None  # the lease cancelled the step, not our caller
        raise
    finally:
        run.lease.unwatch(task)
