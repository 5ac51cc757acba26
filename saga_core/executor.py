"""Drives claimed sagas: the checks before a run (quarantine, definition changes), the
sequential loop (one step after another), and the end of a run however it ends. Parallel
sagas run their forward execution in ``branches``.

Each step's outcome is checkpointed, fenced by the run's lease token, before the next step
starts; a wait for an event and the end of a wait are written under the row's lock, where
events that arrived early (the saga's inbox) are found and consumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from saga_core import attempt as a
from saga_core import history as h
from saga_core import machine as m
from saga_core import waits
from saga_core.branches import run_branches
from saga_core.definition import SagaDefinition, StepSpec
from saga_core.lease import LeaseLost, monotonic
from saga_core.logs import SagaLog, log_traceback
from saga_core.rows import Wait, rotate_token, update_for, waits_of, with_waits
from saga_core.run import Run, RunDeps
from saga_core.store.base import DeadlineChange, RowUpdate, SagaRow
from saga_core.tracebacks import traceback_text
from saga_core.tracing import NO_SPAN, Tracing

__all__ = ["Executor"]

logger = logging.getLogger(__name__)

DefinitionFor = Callable[[str, int], SagaDefinition | None]


class Executor:
    """Drives claimed sagas.

    Args:
        deps: the store, checkpoint writer, settings, flags and hooks runs use.
        definition_for: the definition of a (saga name, version), or None when this
            process has not registered it.
        tracing: OpenTelemetry spans of runs and attempts; None: off.
    """

    def __init__(
        self, deps: RunDeps, definition_for: DefinitionFor, tracing: Tracing | None = None
    ) -> None:
        self.deps = deps
        self.definition_for = definition_for
        self.tracing = tracing

    # --- a run, however it ends -----------------------------------------------------------------

    async def drive(
        self, row: SagaRow, *, sent: float | None = None, isolated: bool = False
    ) -> None:
        """Run the claimed saga until it finishes, suspends, is released or loses its lease.

        ``sent``: when (monotonic) the claim that returned ``row`` was sent; the lease is
        known to last from then. ``isolated``: run alone (a suspect), not stopped by the
        worker's yielding between steps.

        Cancelling the task releases the lease (the saga is due at once for another worker)
        and re-raises: an interrupted step is not a failed attempt.
        """
        deps = self.deps
        settings = deps.settings
        log = SagaLog(
            logger,
            {"saga_id": str(row.id), "saga_name": row.saga_name, "worker": settings.worker_id},
        )
        definition = self.definition_for(row.saga_name, row.definition_version)
        if definition is None or row.lease_token is None:
            log.warning("claimed a saga this worker cannot run; releasing it")
            if row.lease_token is not None:
                await deps.store.saga_release(row.id, row.lease_token, None)
            return
        run = Run.claimed(
            row, definition, deps, log=log, sent=monotonic() if sent is None else sent
        )
        run.isolated = isolated
        tracing = self.tracing
        with (
            contextlib.nullcontext(NO_SPAN)
            if tracing is None
            else tracing.run_span(row, settings.worker_id)
        ) as span:
            run.span = span
            run.lease.start_keeping(log=log)
            try:
                await self._run(run)
            finally:
                await run.lease.stop_keeping()

    async def _run(self, run: Run) -> None:
        settings = self.deps.settings
        try:
            if await self._quarantine(run):
                return
            if not await self._check_definition(run):
                return
            try:
                if run.row.inbox:
                    await run.settle_inbox()
                await self._loop(run)
            finally:
                await self.deps.tx.discard(run)  # before a release: it may hold SQLite's lock
        except LeaseLost:
            run.log.warning("lease lost: another worker or an operator took the saga over")
            run.span.interrupted("lease lost")
            self.deps.emit("lease_lost", saga_name=run.row.saga_name)
        except a.NotStarted as exc:
            run.log.warning("%s; released, due again shortly (not a failed attempt)", exc)
            note = run.interrupted_note(f"{exc}; released (not a failed attempt)")
            await run.release(note, delay=settings.interruption_delay)
        except asyncio.CancelledError:
            await run.release(
                run.interrupted_note("worker shutting down; lease released (not a failed attempt)")
            )
            raise
        except Exception as exc:
            run.log.error("saga run stopped by an unexpected error: %s", exc, exc_info=exc)
            run.span.error(exc)
            # Noted in history: the step in flight (its outcome unrecorded) may run again.
            # An error of the engine's own: its traceback keeps saga_core's frames.
            note = run.interrupted_note(
                f"run stopped by an unexpected error ({h.error_text(exc)}); released",
                traceback_text(exc, fold=False),
            )
            await run.release(note, delay=settings.unexpected_error_delay, after_error=True)

    # --- the sequential loop -----------------------------------------------------------------

    async def _loop(self, run: Run) -> None:
        while True:
            run.lease.check()
            state = run.state
            if state.status is m.SagaStatus.RUNNING and run.shape.parallel:
                settled = await run_branches(run)
                if settled is None:  # released while draining
                    return
                run.finished(settled.state, was=state.status)
                if settled.schedule.kind is m.ScheduleKind.HOLD:  # the rollback starts
                    if run.should_stop():
                        await run.release(
                            run.interrupted_note("worker draining: released between steps")
                        )
                        return
                    continue
                return
            if state.status is m.SagaStatus.RUNNING:
                t = await self._forward(run)
                if t is None:  # an event was consumed: the step runs again now...
                    if run.should_stop():  # ...unless this worker is handing sagas over
                        await run.release(
                            run.interrupted_note("worker draining: released between steps")
                        )
                        return
                    continue
            elif state.status is m.SagaStatus.COMPENSATING:
                t = await self._compensate(run)
            else:
                return
            run.finished(t.state, was=state.status)
            kind = t.schedule.kind
            if kind in (m.ScheduleKind.HOLD, m.ScheduleKind.RETRY_IN_PLACE) and run.should_stop():
                # The step's checkpoint is in; hand the rest to another worker now instead of
                # starting the next step.
                await run.release(run.interrupted_note("worker draining: released between steps"))
                return
            if kind is m.ScheduleKind.HOLD:
                continue
            if kind is m.ScheduleKind.RETRY_IN_PLACE:
                await run.lease.sleep(t.schedule.delay.total_seconds())
                continue
            return

    async def _forward(self, run: Run) -> m.Transition | None:
        """One execution of the current step, checkpointed; None when the step must run
        again at once (its wait consumed an event that was already there)."""
        state = run.state
        spec = run.spec(state.cursor)
        wait = waits_of(run.context).get(spec.step_id)
        if wait is not None:
            return await self._wait_over(run, spec, wait)
        await run.lease.ensure()
        number = state.steps[state.cursor].attempts + 1
        call = a.execute(run, spec, number, state.retry_counter + 1)
        if run.span is NO_SPAN:
            out = await call
        else:
            out = await run.span.attempt(spec.step_id, h.EXECUTE, number, call)
        if out.kind == "wait":
            return await self._start_wait(run, spec, out)
        if out.kind == "failure":
            t = m.step_failed(
                state,
                run.shape,
                out.retry_delay,
                in_place_threshold=run.deps.settings.in_place_retry_max,
            )
            self._note_failure(run, spec, out)
            await run.checkpoint(t, [out.entry], last_error=out.error, set_last_error=True)
        else:
            run.store_output(spec, out.output, out.entry["input"])
            t = m.step_succeeded(state, run.shape)
            await run.checkpoint(t, [out.entry], set_last_error=True, succeeded=True)
        run.emit_step(out.entry)
        run.span.saw(t.state.status._value_, out.error)
        return t

    async def _compensate(self, run: Run) -> m.Transition:
        state = run.state
        spec = run.spec(state.cursor)
        await run.lease.ensure()
        number = state.steps[state.cursor].compensation_attempts + 1
        call = a.compensate(run, spec, number, state.retry_counter + 1)
        if run.span is NO_SPAN:
            out = await call
        else:
            out = await run.span.attempt(spec.step_id, h.COMPENSATE, number, call)
        if out.kind == "failure":
            delay = out.retry_delay
            t = m.compensation_failed(
                state, run.shape, delay, in_place_threshold=run.deps.settings.in_place_retry_max
            )
            log = run.log.bind(step=spec.step_id, attempt=number)
            # WARNING either way: a compensation that failed for good sets the saga FAILED,
            # which is logged at ERROR (``Run.finished``).
            log.warning(
                "compensation of %s failed (attempt %s)%s: %s",
                spec.step_id,
                number,
                ", retries exhausted" if delay is None else "",
                out.error,
            )
            log_traceback(log, out.entry)
            error = f"compensation of {spec.step_id}: {out.error}"
            await run.checkpoint(t, [out.entry], last_error=error, set_last_error=True)
        else:
            t = m.compensation_succeeded(state, run.shape)
            await run.checkpoint(t, [out.entry], succeeded=True)
            error = None
        run.emit_step(out.entry)
        run.span.saw(t.state.status._value_, error)
        return t

    @staticmethod
    def _note_failure(run: Run, spec: StepSpec, out: a.Outcome) -> None:
        log = run.log.bind(step=spec.step_id, attempt=out.entry["attempt"])
        log.log(
            logging.WARNING if out.retry_delay is None else logging.INFO,
            "step %s failed (attempt %s)%s: %s",
            spec.step_id,
            out.entry["attempt"],
            ", retries exhausted" if out.retry_delay is None else "",
            out.error,
        )
        log_traceback(log, out.entry)

    # --- waits ----------------------------------------------------------------------------

    async def _start_wait(self, run: Run, spec: StepSpec, out: a.Outcome) -> m.Transition | None:
        """The step asked to wait for an event. Under the row's lock: if its event is already
        in the inbox (the other side answered while the step ran), consume it and run the
        step again at once (None); else suspend the saga until an event or the timeout."""
        index = spec.index
        token = str(run.step_token(index))
        suspended: list[m.Transition] = []
        # A transactional step that waits leaves none of its rows: its transaction ends
        # here, before the row lock is taken (on SQLite it holds this process's write lock).
        await self.deps.tx.discard(run)

        def decide(row: SagaRow, now: datetime) -> RowUpdate:
            suspended.clear()  # decided again if the write must be retried
            inbox = list(row.inbox or [])
            match = next(
                (e for e in inbox if waits.meant_for(e, token, spec.step_id, out.wait_name)), None
            )
            at = now.isoformat()
            if match is not None:
                rest = [e for e in inbox if e is not match]
                ctx, steps = waits.consume(run.context, run.steps, index, match.get("event"))
                consumed = h.consumed(
                    at=at,
                    step_id=spec.step_id,
                    event_id=str(match.get("event_id")),
                    event=match.get("event"),
                )
                return RowUpdate(
                    context=ctx,
                    steps_state=steps,
                    history=[out.entry, consumed],
                    inbox=rest,
                    set_inbox=True,
                    deadline=DeadlineChange.HOLD,
                )
            timeout = out.wait_timeout
            marker = waits.wait_marker(
                now, None if timeout is None else timeout.total_seconds(), out.wait_name
            )
            ctx = with_waits(run.context, {**waits_of(run.context), spec.step_id: marker})
            t = m.suspended_for_event(run.state, timeout)
            suspended.append(t)
            return update_for(t, run.steps, at=at, history=[out.entry], context=ctx)

        await run.locked(decide)
        run.emit_step(out.entry)
        if not suspended:
            run.log.bind(step=spec.step_id).info(
                "step %s waits for an event that has already arrived: running it again",
                spec.step_id,
            )
            return None
        t = suspended[0]
        timeout = out.wait_timeout
        run.log.bind(step=spec.step_id, attempt=out.entry["attempt"]).info(
            "step %s waits for an event%s",
            spec.step_id,
            "" if timeout is None else f" (at most {timeout.total_seconds():g}s)",
        )
        run.span.saw(t.state.status.value)
        return t

    async def _wait_over(self, run: Run, spec: StepSpec, wait: Wait) -> m.Transition | None:
        """Claimed while the step waited for an event: its wait timed out, unless its event
        arrived as the claim was made (then consumed: None, the step runs again), or the
        claim came before the wait's end (the saga was made due early, e.g. released after
        an error whose write had in fact suspended it): then the wait goes on."""
        index = spec.index
        token = str(run.step_token(index))
        timed_out: list[tuple[m.Transition, a.Outcome]] = []
        goes_on: list[m.Transition] = []

        def decide(row: SagaRow, now: datetime) -> RowUpdate:
            timed_out.clear()  # decided again if the write must be retried
            goes_on.clear()
            inbox = list(row.inbox or [])
            at = now.isoformat()
            match = next(
                (e for e in inbox if waits.meant_for(e, token, spec.step_id, wait.name)), None
            )
            if match is not None:
                rest = [e for e in inbox if e is not match]
                ctx, steps = waits.consume(run.context, run.steps, index, match.get("event"))
                consumed = h.consumed(
                    at=at,
                    step_id=spec.step_id,
                    event_id=str(match.get("event_id")),
                    event=match.get("event"),
                )
                return RowUpdate(
                    context=ctx,
                    steps_state=steps,
                    history=[consumed],
                    inbox=rest,
                    set_inbox=True,
                    deadline=DeadlineChange.HOLD,
                )
            state = run.state
            if not wait.timed_out(now):
                # Not timed out by the database clock: suspended again until the wait's end.
                until = wait.until_dt()
                t = m.suspended_for_event(state, None if until is None else until - now)
                goes_on.append(t)
                return update_for(t, run.steps, at=at, history=[], context=run.context)
            number = state.steps[index].attempts + 1
            out = a.wait_timed_out(run, spec, number, state.retry_counter + 1, wait)
            out.entry["at"] = at
            t = m.step_failed(
                state,
                run.shape,
                out.retry_delay,
                in_place_threshold=run.deps.settings.in_place_retry_max,
            )
            waits_now = waits_of(run.context)
            waits_now.pop(spec.step_id, None)
            ctx = with_waits(run.context, waits_now)
            steps = rotate_token(run.steps, index)  # the wait is spent
            timed_out.append((t, out))
            return update_for(
                t,
                steps,
                at=at,
                history=[out.entry],
                context=ctx,
                last_error=out.error,
                set_last_error=True,
            )

        await run.locked(decide)
        if goes_on:
            run.log.bind(step=spec.step_id).info(
                "step %s was claimed before its wait ended: it waits on", spec.step_id
            )
            return goes_on[0]
        if not timed_out:
            return None
        t, out = timed_out[0]
        self._note_failure(run, spec, out)  # once: ``decide`` may run more than once
        run.span.record(spec.step_id, h.EXECUTE, out.entry["attempt"], out)
        run.span.saw(t.state.status.value, out.error)
        run.emit_step(out.entry)
        return t

    # --- before a run ---------------------------------------------------------------------------

    async def _quarantine(self, run: Run) -> bool:
        """A poison saga: its current step's worker was lost more than ``max_recoveries``
        times in a row (every run crashed or was killed). Fail it for an operator instead of
        running the step again; True when it was."""
        row, limit = run.row, self.deps.settings.max_recoveries
        if limit is None or row.recovery_count <= limit:
            return False
        state = run.state
        idx = state.cursor
        step_id = str(run.steps[idx]["step_id"]) if 0 <= idx < len(run.steps) else None
        what = "compensation of step" if state.phase is m.Phase.COMPENSATE else "step"
        reason = (
            f"quarantined: the run of {what} {step_id} ended abnormally "
            f"{row.recovery_count} times in a row (worker crashed or killed, or an unexpected "
            "error); see history"
        )
        await run.fail_for_operator(h.QUARANTINED, step_id, reason)
        return True

    async def _check_definition(self, run: Run) -> bool:
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
            note = h.admin(
                at=run.at(),
                step_id=None,
                status=h.DEFINITION_CHANGED,
                reason=f"definition fingerprint {row.definition_fingerprint} -> "
                f"{definition.fingerprint}; same steps, continuing",
                worker=run.worker,
            )
            run.context = {**run.context, "noted_fingerprint": definition.fingerprint}
            await run.write(RowUpdate(history=[note], context=run.context))
            return True
        reason = (
            f"definition of {row.saga_name!r} changed incompatibly while this saga was in flight: "
            f"steps were {stored_ids}, now {list(definition.step_ids)}"
        )
        await run.fail_for_operator(h.DEFINITION_MISMATCH, None, reason)
        return False
