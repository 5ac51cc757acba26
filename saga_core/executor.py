"""Runs one claimed saga: builds inputs, calls steps under their timeouts, records outcomes
through the store fenced by the claim's token, renews the lease of long steps, and turns
every error into a recorded step failure."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from loguru import logger
from pydantic import BaseModel

from saga_core import machine as m
from saga_core import txstep
from saga_core.branches import run_branches
from saga_core.checkpoint import is_transient
from saga_core.context import _CURRENT, StepContext, WaitForEvent
from saga_core.definition import InputContext, SagaDefinition, StepSpec
from saga_core.payload import check_size
from saga_core.rows import machine_state, now_iso, shape_of, update_for
from saga_core.store.base import Checkpoint, DeadlineChange, LeaseChange, RowUpdate, SagaRow
from saga_core.tracing import RunSpan, note_failure

if TYPE_CHECKING:
    from saga_core.orchestrator import SagaEngine

__all__ = ["RETRY_AT_KEY", "WAITING_KEY", "Executor", "LeaseLost"]

MAX_ERROR_CHARS = 4000

WAITING_KEY = "waiting"
"""Context key set while the current step waits for an event (``WaitForEvent``): step id,
since, timeout. ``notify`` and operator actions remove it, so a claim that finds it is the
wait's timeout, recorded as a failed attempt of the step. A named wait adds ``event_name``."""


RETRY_AT_KEY = "retry_at"
"""Parallel sagas: when each branch that failed may run again (step id -> ISO time, by the
worker's clock), so that a saga woken for one branch does not run another one early.
Operator actions and ``notify`` remove it."""


class LeaseLost(Exception):
    """The saga's token changed under us (lease taken over, or an operator acted)."""


class _StepTimeout(Exception):
    pass


@dataclass
class _Run:
    row: SagaRow
    definition: SagaDefinition
    token: uuid.UUID
    lease_renewed_at: float
    context: dict[str, Any]
    steps_state: list[dict[str, Any]]
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    _lost_fut: asyncio.Future[None] | None = None
    log: Any = None
    state: m.MachineState | None = None
    span: RunSpan | None = None
    """The run's tracing span; None when tracing is off."""
    tx: txstep.StepTransaction | None = None
    """The open transaction of the transactional step in flight (see txstep)."""

    def lost_future(self) -> asyncio.Future[None]:
        """One future per run that resolves when the lease is lost: steps race it without
        a watcher task of their own."""
        if self._lost_fut is None:
            self._lost_fut = asyncio.get_running_loop().create_future()
            if self.lost.is_set():
                self._lost_fut.set_result(None)
        return self._lost_fut

    def mark_lost(self) -> None:
        self.lost.set()
        if self._lost_fut is not None and not self._lost_fut.done():
            self._lost_fut.set_result(None)


@dataclass
class _Outcome:
    """What one execution of a step came to, before it is applied to the saga's state."""

    kind: str
    """``success``, ``failure`` or ``wait``."""
    entry: dict[str, Any]
    """Its history entry (status, duration, input/output or error filled in)."""
    error: str | None = None
    output: dict[str, Any] | None = None
    wait_timeout: timedelta | None = None
    wait_name: str | None = None
    """A wait for an event of this name (also deliverable by correlation)."""


def _error_text(exc: BaseException) -> str:
    # NUL cannot be stored in PostgreSQL text or JSONB: a failure whose record the database
    # refused would never be recorded, and the step would run again and again.
    text = f"{type(exc).__name__}: {exc}".replace("\x00", "\\x00")
    return text[:MAX_ERROR_CHARS]


def _record_failure(entry: dict[str, Any], exc: Exception, started: float) -> str:
    """Fill a history entry for a failed execution or compensation; the error text."""
    note_failure(exc)
    timed_out = isinstance(exc, _StepTimeout)
    error = f"TimeoutError: {exc}" if timed_out else _error_text(exc)
    entry.update(
        status="TIMEOUT" if timed_out else "ERROR",
        error_type="TimeoutError" if timed_out else type(exc).__name__,
        error=error,
        duration_ms=round((time.monotonic() - started) * 1000, 3),
    )
    return error


class Executor:
    """Drives claimed sagas for one engine."""

    def __init__(self, engine: SagaEngine[Any]) -> None:
        self.engine = engine

    # --- public ---------------------------------------------------------------------------

    async def drive(self, row: SagaRow) -> None:
        """Run the claimed saga until it finishes, suspends, is released or loses its lease.

        Cancelling the task releases the lease (the saga is due at once for another worker)
        and re-raises: an interrupted step is not a failed attempt.
        """
        tracing = self.engine.tracing
        if tracing is None:
            await self._drive(row, None)
            return
        with tracing.run_span(row, self.engine.worker_id) as span:
            await self._drive(row, span)

    async def _drive(self, row: SagaRow, span: RunSpan | None) -> None:
        eng = self.engine
        log = logger.bind(saga_id=str(row.id), saga_name=row.saga_name, worker=eng.worker_id)
        definition = eng.definition_for(row.saga_name, row.definition_version)
        if definition is None:
            log.warning("claimed a saga this worker cannot run; releasing it")
            await self._release(row.id, row.step_execution_token, None)
            return
        run = _Run(
            row=row,
            definition=definition,
            token=row.step_execution_token,
            lease_renewed_at=time.monotonic(),
            context=dict(row.context),
            steps_state=[dict(s) for s in row.steps_state],
            log=log,
            span=span,
        )
        keeper = asyncio.create_task(self._keep_lease(run))
        try:
            if await self._quarantine(run):
                return
            if not await self._check_definition(run):
                return
            try:
                await self._loop(run)
            finally:
                await txstep.discard(run)  # before a release: on SQLite it holds the write lock
        except LeaseLost:
            log.warning("lease lost: another worker or an operator took the saga over")
            if span is not None:
                span.interrupted("lease lost")
            eng.emit("lease_lost", saga_name=row.saga_name)
        except asyncio.CancelledError:
            await self._release(row.id, run.token, self._interrupted_note(run))
            raise
        except Exception as exc:
            log.opt(exception=exc).error("saga run stopped by an unexpected error: {}", exc)
            if span is not None:
                span.error(exc)
            # Noted in history: the step in flight (its outcome unrecorded) may run again.
            note = self._interrupted_note(run)
            note["reason"] = f"run stopped by an unexpected error ({_error_text(exc)}); released"
            # The lease owner is kept: the next claim counts a recovery, so a saga whose
            # runs keep failing this way is quarantined (max_recoveries) instead of re-running
            # its step forever.
            await self._release(
                row.id, run.token, note, delay=eng.unexpected_error_delay, keep_owner=True
            )
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    # --- the loop ----------------------------------------------------------------------------

    async def _loop(self, run: _Run) -> None:
        state = m.claimed(machine_state(run.row))
        shape = shape_of(run.row)
        eng = self.engine
        while True:
            run.state = state
            if run.lost.is_set():
                raise LeaseLost()
            if state.status is m.SagaStatus.RUNNING and shape.parallel:
                settled = await run_branches(self, run, state, shape)
                if settled is None:  # released while draining
                    return
                state = run.state = settled.state
                self._finished(run, state)
                if settled.schedule.kind is m.ScheduleKind.HOLD:  # the rollback starts
                    if eng.draining:
                        await self._release(
                            run.row.id, run.token, self._interrupted_note(run, drained=True)
                        )
                        return
                    continue
                return
            if state.status is m.SagaStatus.RUNNING:
                spec = run.definition.steps[state.cursor]
                if WAITING_KEY in run.context:
                    t, entry, error = self._wait_timed_out(run, spec, state, shape)
                    if run.span is not None:
                        run.span.record(spec.step_id, "execute", state, (t, entry, error))
                else:
                    call = self._execute(run, spec, state, shape)
                    if run.span is not None:
                        call = run.span.step(spec.step_id, "execute", state, call)
                    t, entry, error = await call
            elif state.status is m.SagaStatus.COMPENSATING:
                spec = run.definition.steps[state.cursor]
                call = self._compensate(run, spec, state, shape)
                if run.span is not None:
                    call = run.span.step(spec.step_id, "compensate", state, call)
                t, entry, error = await call
            else:
                return
            await self._write(
                run,
                t,
                [entry],
                last_error=error,
                set_last_error=error is not None or state.phase is m.Phase.EXECUTE,
                succeeded=entry["status"] == "SUCCESS",
            )
            self._emit_step(run, entry)
            state = t.state
            self._finished(run, state)
            kind = t.schedule.kind
            if kind in (m.ScheduleKind.HOLD, m.ScheduleKind.RETRY_IN_PLACE) and eng.draining:
                # Shutting down: the step's checkpoint is in; hand the rest to another worker
                # now instead of starting the next step.
                run.state = state
                await self._release(
                    run.row.id, run.token, self._interrupted_note(run, drained=True)
                )
                return
            if kind is m.ScheduleKind.HOLD:
                continue
            if kind is m.ScheduleKind.RETRY_IN_PLACE:
                await self._sleep(run, t.schedule.delay.total_seconds())
                continue
            return

    async def _write(
        self,
        run: _Run,
        t: m.Transition,
        history: list[dict[str, Any]],
        *,
        last_error: str | None = None,
        set_last_error: bool = False,
        succeeded: bool = False,
    ) -> None:
        """Checkpoint transition ``t`` with ``history``, fenced by the run's token; raises
        LeaseLost when the token no longer matches. The checkpoint of a transactional step
        that ``succeeded`` commits with the step's own transaction."""
        upd = update_for(
            t,
            run.steps_state,
            history=history,
            context=run.context,
            last_error=last_error,
            set_last_error=set_last_error,
            renew_lease=self._lease_half_gone(run),
        )
        if upd.deadline is DeadlineChange.LEASE:
            run.lease_renewed_at = time.monotonic()
        res = await txstep.write_checkpoint(
            self.engine, run, Checkpoint(run.row.id, run.token, upd), succeeded=succeeded
        )
        if res is False:
            raise LeaseLost()
        run.steps_state = upd.steps_state or run.steps_state

    def _emit_step(self, run: _Run, entry: dict[str, Any]) -> None:
        self.engine.emit(
            "step",
            saga_name=run.row.saga_name,
            step_id=entry["step_id"],
            phase=entry["phase"],
            status=entry["status"],
            duration=entry.get("duration_ms", 0.0) / 1000,
        )

    def _finished(self, run: _Run, state: m.MachineState) -> None:
        if state.status.is_terminal or state.status is m.SagaStatus.FAILED:
            self.engine.emit("finished", saga_name=run.row.saga_name, status=state.status.value)
            run.log.bind(status=state.status.value).info("saga {}", state.status.value.lower())

    async def _execute(
        self, run: _Run, spec: StepSpec, state: m.MachineState, shape: m.Shape
    ) -> tuple[m.Transition, dict[str, Any], str | None]:
        attempt = state.steps[state.cursor].attempts + 1
        out = await self._attempt(run, spec, attempt)
        entry = out.entry
        if out.kind == "wait":
            self._note_wait(run, spec, out)
            return m.suspended_for_event(state, out.wait_timeout), entry, None
        if out.kind == "failure":
            delay = spec.retry_policy.next_delay(state.retry_counter + 1)
            t = m.step_failed(
                state, shape, delay, in_place_threshold=self.engine.in_place_retry_max
            )
            self._note_failure(run, spec, out, delay)
            return t, entry, out.error
        self._store_output(run, spec, out)
        return m.step_succeeded(state, shape), entry, None

    async def _attempt(self, run: _Run, spec: StepSpec, attempt: int) -> _Outcome:
        """One execution of ``spec``: build its input, call it under its timeout, validate
        its output. Every error becomes a ``failure`` outcome; a lost lease or a
        cancellation propagates."""
        entry = self._entry(run, spec, "execute", attempt)
        started = time.monotonic()
        try:
            inp = await self._build_input(run, spec)
            inp_json = inp.model_dump(mode="json")
            # Recorded in history and context: it must be storable, like an output.
            check_size(inp_json, f"input of step {spec.step_id!r}", self.engine.max_payload_bytes)
            entry["input"] = inp_json
            ctx = self._step_context(run, spec, "execute", attempt)
            out = await self._call(
                run,
                lambda: spec.step.execute(inp),
                spec.timeout,
                ctx,
                transactional=spec.transactional,
            )
            out_model = self._validate_output(spec, out)
            out_json = out_model.model_dump(mode="json")
            check_size(out_json, f"output of step {spec.step_id!r}", self.engine.max_payload_bytes)
        except (LeaseLost, asyncio.CancelledError):
            raise
        except WaitForEvent as wait:
            # Not an attempt: the step runs again on notify (seeing the event), or the wait
            # times out at its due time (a failed attempt, recorded by the claim then).
            timeout = wait.timeout
            entry.update(
                status="WAITING",
                duration_ms=round((time.monotonic() - started) * 1000, 3),
                wait_timeout_s=None if timeout is None else timeout.total_seconds(),
            )
            if wait.name is not None:  # a named wait also accepts delivery by correlation
                entry["event_name"] = wait.name
            return _Outcome("wait", entry, wait_timeout=timeout, wait_name=wait.name)
        except Exception as exc:
            error = _record_failure(entry, exc, started)
            return _Outcome("failure", entry, error=error)
        entry.update(
            status="SUCCESS",
            output=out_json,
            duration_ms=round((time.monotonic() - started) * 1000, 3),
        )
        return _Outcome("success", entry, output=out_json)

    def _store_output(self, run: _Run, spec: StepSpec, out: _Outcome) -> None:
        """Keep a successful step's input and output in the context (for the steps after it
        and for its compensation)."""
        outputs = dict(run.context.get("step_outputs") or {})
        inputs = dict(run.context.get("step_inputs") or {})
        outputs[spec.step_id] = out.output
        inputs[spec.step_id] = out.entry["input"]
        run.context = {**run.context, "step_outputs": outputs, "step_inputs": inputs}

    def _note_failure(
        self, run: _Run, spec: StepSpec, out: _Outcome, delay: timedelta | None
    ) -> None:
        if delay is not None:
            out.entry["retry_in_s"] = round(delay.total_seconds(), 3)
        run.log.bind(step=spec.step_id, attempt=out.entry["attempt"]).warning(
            "step {} failed (attempt {}): {}", spec.step_id, out.entry["attempt"], out.error
        )

    def _note_wait(self, run: _Run, spec: StepSpec, out: _Outcome) -> None:
        """Record in the context that ``spec`` waits for an event (see ``WAITING_KEY``)."""
        timeout = out.wait_timeout
        marker = {
            "step_id": spec.step_id,
            "since": out.entry["at"],
            "timeout_s": None if timeout is None else timeout.total_seconds(),
        }
        if out.wait_name is not None:
            marker["event_name"] = out.wait_name
        run.context = {**run.context, WAITING_KEY: marker}
        run.log.bind(step=spec.step_id, attempt=out.entry["attempt"]).info(
            "step {} waits for an event{}",
            spec.step_id,
            "" if timeout is None else f" (at most {timeout.total_seconds():g}s)",
        )

    async def _compensate(
        self, run: _Run, spec: StepSpec, state: m.MachineState, shape: m.Shape
    ) -> tuple[m.Transition, dict[str, Any], str | None]:
        attempt = state.steps[state.cursor].compensation_attempts + 1
        entry = self._entry(run, spec, "compensate", attempt)
        started = time.monotonic()
        try:
            raw_in = (run.context.get("step_inputs") or {}).get(spec.step_id)
            raw_out = (run.context.get("step_outputs") or {}).get(spec.step_id)
            if raw_in is None or raw_out is None:
                raise LookupError(
                    f"no recorded input/output of step {spec.step_id!r} to compensate"
                )
            inp = spec.input_model.model_validate(raw_in)
            out = spec.output_model.model_validate(raw_out)
            entry["input"] = raw_in
            entry["output"] = raw_out
            ctx = self._step_context(run, spec, "compensate", attempt)
            await self._call(
                run,
                lambda: spec.step.compensate(inp, out),
                spec.compensation_timeout,
                ctx,
                transactional=spec.transactional,
            )
        except (LeaseLost, asyncio.CancelledError):
            raise
        except Exception as exc:
            error = _record_failure(entry, exc, started)
            delay = spec.compensation_retry_policy.next_delay(state.retry_counter + 1)
            if delay is not None:
                entry["retry_in_s"] = round(delay.total_seconds(), 3)
            t = m.compensation_failed(
                state, shape, delay, in_place_threshold=self.engine.in_place_retry_max
            )
            run.log.bind(step=spec.step_id, attempt=attempt).warning(
                "compensation of {} failed (attempt {}): {}", spec.step_id, attempt, error
            )
            return t, entry, f"compensation of {spec.step_id}: {error}"
        entry.update(status="SUCCESS", duration_ms=round((time.monotonic() - started) * 1000, 3))
        return m.compensation_succeeded(state, shape), entry, None

    def _wait_timed_out(
        self, run: _Run, spec: StepSpec, state: m.MachineState, shape: m.Shape
    ) -> tuple[m.Transition, dict[str, Any], str | None]:
        """Claimed while its step waited for an event: no notify came before the timeout. A
        failed attempt (TIMEOUT) under the step's retry policy."""
        marker = run.context.get(WAITING_KEY) or {}
        run.context = {k: v for k, v in run.context.items() if k != WAITING_KEY}
        attempt = state.steps[state.cursor].attempts + 1
        out = self._wait_timeout(run, spec, attempt, marker)
        delay = spec.retry_policy.next_delay(state.retry_counter + 1)
        if delay is not None:
            out.entry["retry_in_s"] = round(delay.total_seconds(), 3)
        t = m.step_failed(state, shape, delay, in_place_threshold=self.engine.in_place_retry_max)
        run.log.bind(step=spec.step_id, attempt=attempt).warning(
            "step {} timed out waiting for an event (attempt {})", spec.step_id, attempt
        )
        return t, out.entry, out.error

    def _wait_timeout(
        self, run: _Run, spec: StepSpec, attempt: int, marker: dict[str, Any]
    ) -> _Outcome:
        """The failed attempt (TIMEOUT) of a step whose wait for an event (``marker``: since,
        timeout) ended without one."""
        entry = self._entry(run, spec, "execute", attempt)
        timeout_s = marker.get("timeout_s")
        error = (
            f"TimeoutError: no event within {timeout_s:g}s"
            if isinstance(timeout_s, int | float)
            else "TimeoutError: no event in time"
        )
        entry.update(
            status="TIMEOUT",
            error_type="TimeoutError",
            error=error,
            duration_ms=0.0,
            waiting_since=marker.get("since"),
        )
        return _Outcome("failure", entry, error=error)

    # --- pieces ----------------------------------------------------------------------------

    def _entry(self, run: _Run, spec: StepSpec, phase: str, attempt: int) -> dict[str, Any]:
        return {
            "at": now_iso(),
            "phase": phase,
            "step_id": spec.step_id,
            "step_class": spec.step_class,
            "attempt": attempt,
            "worker": self.engine.worker_id,
        }

    def _step_context(self, run: _Run, spec: StepSpec, phase: str, attempt: int) -> StepContext:
        suffix = "" if phase == "execute" else ":compensate"
        return StepContext(
            saga_id=run.row.id,
            saga_name=run.row.saga_name,
            aggregation_id=run.row.aggregation_id,
            step_id=spec.step_id,
            phase="execute" if phase == "execute" else "compensate",
            attempt=attempt,
            token=run.token,
            trace_id=run.row.trace_id,
            idempotency_key=f"{run.row.id}:{spec.step_id}{suffix}",
            worker=self.engine.worker_id,
        )

    async def _build_input(self, run: _Run, spec: StepSpec) -> BaseModel:
        outputs: dict[str, Any] = run.context.get("step_outputs") or {}
        deps = spec.dependencies or ((spec.depends_on,) if spec.depends_on else ())
        args: list[Any]
        if deps and not spec.context_input:
            args = [
                run.definition.step(d).output_model.model_validate(outputs.get(d) or {})
                for d in deps
            ]
        else:
            args = [
                InputContext(
                    initial_data=run.context.get("initial_data") or {},
                    step_outputs=outputs,
                    events=run.context.get("events") or [],
                    latest_event=run.context.get("latest_event"),
                )
            ]
        raw = spec.input_map(*args)
        if inspect.isawaitable(raw):
            raw = await raw
        if isinstance(raw, spec.input_model):
            return raw
        if isinstance(raw, dict):
            return spec.input_model.model_validate(raw)
        if isinstance(raw, BaseModel):
            return spec.input_model.model_validate(raw.model_dump())
        raise TypeError(
            f"input_map of step {spec.step_id!r} returned {type(raw).__name__}; "
            f"expected {spec.input_model.__name__} or a dict"
        )

    @staticmethod
    def _validate_output(spec: StepSpec, out: Any) -> BaseModel:
        if isinstance(out, spec.output_model):
            return out
        if isinstance(out, dict):
            return spec.output_model.model_validate(out)
        if isinstance(out, BaseModel):
            return spec.output_model.model_validate(out.model_dump())
        raise TypeError(
            f"step {spec.step_id!r} returned {type(out).__name__}; expected {spec.output_model.__name__}"
        )

    async def _call(
        self,
        run: _Run,
        factory: Callable[[], Coroutine[Any, Any, Any]],
        timeout: timedelta | None,
        ctx: StepContext,
        *,
        transactional: bool = False,
    ) -> Any:
        """Run user code in its own task (with ``current_step()`` set) under its timeout,
        racing the lease: a lost lease cancels it. A ``transactional`` step gets its session
        (see ``txstep``)."""
        if transactional:
            factory, ctx = await txstep.begin(self.engine, run, factory, ctx)

        async def guarded() -> Any:
            if timeout is None:
                return await factory()
            try:
                async with asyncio.timeout(timeout.total_seconds()) as cm:
                    return await factory()
            except TimeoutError:
                if cm.expired():
                    raise _StepTimeout(f"no result within {timeout.total_seconds():g}s") from None
                raise

        cv = contextvars.copy_context()
        cv.run(_CURRENT.set, ctx)
        task = asyncio.get_running_loop().create_task(guarded(), context=cv)
        try:
            await asyncio.wait({task, run.lost_future()}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise LeaseLost()
        return task.result()

    async def _sleep(self, run: _Run, seconds: float) -> None:
        await asyncio.wait({run.lost_future()}, timeout=seconds)
        if run.lost.is_set():
            raise LeaseLost()

    def _lease_half_gone(self, run: _Run) -> bool:
        lease = self.engine.execution_lease.total_seconds()
        return time.monotonic() - run.lease_renewed_at > lease / 2

    async def _keep_lease(self, run: _Run) -> None:
        """Renew the lease while the saga runs: every half lease (by the local monotonic
        clock; the expiry itself is set by the database clock)."""
        lease = self.engine.execution_lease.total_seconds()
        store = self.engine.store
        while True:
            wait = run.lease_renewed_at + lease / 2 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            attempt_at = time.monotonic()
            try:
                expiry = await store.saga_renew_lease(run.row.id, run.token)
            except Exception as exc:
                if not is_transient(exc):
                    run.log.opt(exception=exc).error("lease renewal failed: {}", exc)
                await asyncio.sleep(min(1.0, lease / 10))
                continue
            if expiry is None:
                run.mark_lost()
                return
            run.lease_renewed_at = attempt_at

    def _interrupted_note(self, run: _Run, *, drained: bool = False) -> dict[str, Any]:
        state = run.state or machine_state(run.row)
        idx = state.cursor
        step_id = run.steps_state[idx]["step_id"] if 0 <= idx < len(run.steps_state) else None
        return {
            "at": now_iso(),
            "phase": state.phase.value,
            "step_id": step_id,
            "status": "INTERRUPTED",
            "attempt": 0,
            "worker": self.engine.worker_id,
            "reason": (
                "worker draining: released between steps"
                if drained
                else "worker shutting down; lease released (not a failed attempt)"
            ),
        }

    async def _release(
        self,
        saga_id: uuid.UUID,
        token: uuid.UUID,
        note: dict[str, Any] | None,
        *,
        delay: timedelta = timedelta(0),
        keep_owner: bool = False,
    ) -> None:
        upd = RowUpdate(
            deadline=DeadlineChange.AFTER,
            delay=delay,
            lease=LeaseChange.KEEP if keep_owner else LeaseChange.RELEASE,
            history=[note] if note else [],
        )
        try:
            # Through the writer: a checkpoint of this saga still queued there lands first.
            await self.engine.writer.write(Checkpoint(saga_id, token, upd))
        except Exception as exc:  # the lease will expire; another worker takes over then
            logger.bind(saga_id=str(saga_id)).warning("could not release lease: {}", exc)

    async def _quarantine(self, run: _Run) -> bool:
        """A poison saga: its current step's worker was lost more than ``max_recoveries``
        times in a row (every run crashed or was killed). Fail it for an operator instead of
        running the step again; True when it was."""
        row, limit = run.row, self.engine.max_recoveries
        if limit is None or row.recovery_count <= limit:
            return False
        state = machine_state(row)
        idx = state.cursor
        step_id = row.steps_state[idx]["step_id"] if 0 <= idx < len(row.steps_state) else None
        what = "compensation of step" if state.phase is m.Phase.COMPENSATE else "step"
        reason = (
            f"quarantined: the run of {what} {step_id} ended abnormally "
            f"{row.recovery_count} times in a row (worker crashed or killed, or an unexpected "
            "error); see history"
        )
        await self._fail_for_operator(run, "QUARANTINED", step_id, reason)
        return True

    async def _fail_for_operator(
        self, run: _Run, label: str, step_id: str | None, reason: str
    ) -> None:
        """Set the saga FAILED without running anything, with ``reason`` as its last error
        and a ``label`` history entry: it waits for an operator."""
        upd = RowUpdate(
            status=m.SagaStatus.FAILED.value,
            last_error=reason,
            history=[
                {
                    "at": now_iso(),
                    "phase": "admin",
                    "step_id": step_id,
                    "status": label,
                    "attempt": 0,
                    "worker": self.engine.worker_id,
                    "reason": reason,
                }
            ],
            deadline=DeadlineChange.CLEAR,
            lease=LeaseChange.RELEASE,
        )
        res = await self.engine.writer.write(Checkpoint(run.row.id, run.token, upd))
        if res is False:
            raise LeaseLost()
        if run.span is not None:
            run.span.failed_for_operator(label, reason)
        run.log.error(reason)
        self.engine.emit("finished", saga_name=run.row.saga_name, status=m.SagaStatus.FAILED.value)

    async def _check_definition(self, run: _Run) -> bool:
        """A saga whose definition changed while it was in flight: go on when its steps are
        the same (recording the change once); fail it for an operator when they are not."""
        row, definition = run.row, run.definition
        if row.definition_fingerprint == definition.fingerprint:
            return True
        stored_ids = [str(s["step_id"]) for s in row.steps_state]
        if stored_ids == list(definition.step_ids):
            # The fingerprint column keeps the definition the saga started under; the context
            # remembers the one already noted, so each change is recorded once, not per claim.
            if run.context.get("noted_fingerprint") == definition.fingerprint:
                return True
            note = {
                "at": now_iso(),
                "phase": "admin",
                "step_id": None,
                "status": "DEFINITION_CHANGED",
                "attempt": 0,
                "reason": f"definition fingerprint {row.definition_fingerprint} -> "
                f"{definition.fingerprint}; same steps, continuing",
            }
            run.context = {**run.context, "noted_fingerprint": definition.fingerprint}
            upd = RowUpdate(history=[note], context=run.context)
            res = await self.engine.writer.write(Checkpoint(row.id, run.token, upd))
            if res is False:
                raise LeaseLost()
            return True
        reason = (
            f"definition of {row.saga_name!r} changed incompatibly while this saga was in flight: "
            f"steps were {stored_ids}, now {list(definition.step_ids)}"
        )
        await self._fail_for_operator(run, "DEFINITION_MISMATCH", None, reason)
        return False
