"""Forward execution of a parallel saga: every step whose dependencies are done runs at once,
concurrently, under the saga's one lease; each outcome is checkpointed on its own as it
comes; once no branch runs any more the saga is settled (completed, suspended, rolled back).

A branch that exhausts its retries cancels its running siblings (recorded as ``CANCELLED``,
not a failed attempt) and the saga rolls back every finished step, newest first. A branch
that waits for a retry time or an event is held while the others go on; the saga suspends
once nothing else can run. A new step starts only after the checkpoint that made it ready
has committed. Retry times and wait timeouts are kept in database time (``run.clock``), so a
worker whose wall clock is off changes nothing. Events that arrive for a waiting branch while
its siblings run wait in the inbox, which the loop looks at after each checkpoint and at
least every :data:`INBOX_POLL_S` while a branch waits.
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import datetime, timedelta
from typing import Any

from saga_core import attempt as a
from saga_core import history as h
from saga_core import machine as m
from saga_core import waits
from saga_core.errors import is_transient
from saga_core.lease import LeaseLost, monotonic
from saga_core.logs import log_traceback
from saga_core.rows import RETRY_AT_KEY, rotate_token, update_for, waits_of, with_waits
from saga_core.run import Run
from saga_core.store.base import RowUpdate, SagaRow

__all__ = ["INBOX_POLL_S", "run_branches"]

FOREVER = math.inf
INBOX_POLL_S = 1.0
"""While a branch waits for an event and others run: how often the inbox is looked at."""


def _parse(at: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(at))
    except ValueError:
        return None


class _Branches:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.state = run.state
        self.shape = run.shape
        self.specs = run.definition.steps
        self.index = {spec.step_id: spec.index for spec in self.specs}
        self.running: dict[asyncio.Task[a.Outcome], tuple[int, int]] = {}
        """Branch task -> (step index, attempt)."""
        self.history: list[dict[str, Any]] = []
        """Entries of outcomes applied but not checkpointed yet."""
        self.error: str | None = None
        self.failed: int | None = None
        self.retry_held: dict[int, float] = {}
        """Step -> monotonic time from which it may run again (a retry wait)."""
        self.wait_held: dict[int, float] = {}
        """Step -> monotonic time its event wait times out (inf: never)."""
        self.relaunch: list[tuple[int, float]] = []
        """In-place retries to start once the failure is checkpointed: (step, delay)."""
        self.check_inbox = False
        """Look at the inbox before going on (a branch began to wait, a poll saw events)."""
        self._restore()

    # --- carried over from the previous run -------------------------------------------------

    def _restore(self) -> None:
        clock = self.run.clock
        now = clock.now()
        for step_id, at in dict(self.run.context.get(RETRY_AT_KEY) or {}).items():
            when = _parse(at)
            if step_id in self.index and when is not None and when > now:
                self.retry_held[self.index[step_id]] = clock.to_mono(when)
        for step_id, wait in waits_of(self.run.context).items():
            if step_id in self.index:
                until = wait.until_dt()
                self.wait_held[self.index[step_id]] = (
                    FOREVER if until is None else clock.to_mono(until)
                )
        if self.wait_held:
            self.check_inbox = True

    def _save_holds(self) -> None:
        """Mirror the held steps into the context: retry times (database time) and the
        waits of the steps still waiting."""
        run = self.run
        ctx = {k: v for k, v in run.context.items() if k != RETRY_AT_KEY}
        if self.retry_held:
            ctx[RETRY_AT_KEY] = {
                self.specs[i].step_id: run.clock.from_mono(t).isoformat()
                for i, t in sorted(self.retry_held.items())
            }
        markers = waits_of(ctx)
        keep = {self.specs[i].step_id for i in self.wait_held}
        run.context = with_waits(ctx, {sid: w for sid, w in markers.items() if sid in keep})

    def _in_flight(self) -> frozenset[int]:
        return frozenset(i for i, _ in self.running.values())

    def _released(self, settled: waits.Settled | None) -> None:
        """Steps a consumed event released run again now."""
        if settled is None:
            return
        for i in settled.released:
            self.wait_held.pop(i, None)
            self.retry_held.pop(i, None)

    # --- outcomes ---------------------------------------------------------------------------

    def _apply(self, i: int, out: a.Outcome) -> None:
        spec = self.specs[i]
        run = self.run
        if out.kind == "success":
            self.state = m.branch_succeeded(self.state, self.shape, i)
            run.store_output(spec, out.output, out.entry["input"])
        elif out.kind == "wait":
            timeout = out.wait_timeout
            seconds = None if timeout is None else timeout.total_seconds()
            marker = waits.wait_marker(run.clock.now(), seconds, out.wait_name)
            run.context = with_waits(run.context, {**waits_of(run.context), spec.step_id: marker})
            self.wait_held[i] = FOREVER if seconds is None else monotonic() + seconds
            self.check_inbox = True
            run.log.bind(step=spec.step_id).info("step %s waits for an event", spec.step_id)
        else:
            self._fail(i, out)
        self.history.append(out.entry)
        run.emit_step(out.entry)

    def _fail(self, i: int, out: a.Outcome) -> None:
        spec = self.specs[i]
        delay = out.retry_delay
        self.state = m.branch_failed(self.state, self.shape, i)
        log = self.run.log.bind(step=spec.step_id, attempt=out.entry["attempt"])
        log.log(
            logging.WARNING if delay is None else logging.INFO,
            "step %s failed (attempt %s)%s: %s",
            spec.step_id,
            out.entry["attempt"],
            ", retries exhausted" if delay is None else "",
            out.error,
        )
        log_traceback(log, out.entry)
        self.error = out.error
        if delay is None:
            if self.failed is None:
                self.failed = i
        elif delay <= self.run.deps.settings.in_place_retry_max:
            self.relaunch.append((i, delay.total_seconds()))
        else:
            self.retry_held[i] = monotonic() + delay.total_seconds()

    def _expire(self) -> None:
        """Retry waits that are over release their step; event waits that are over are a
        failed attempt (TIMEOUT) of their step, whose token is then spent."""
        now = monotonic()
        for i in [i for i, t in self.retry_held.items() if t <= now]:
            del self.retry_held[i]
        run = self.run
        markers = waits_of(run.context)
        for i in sorted(i for i, t in self.wait_held.items() if t <= now):
            del self.wait_held[i]
            spec = self.specs[i]
            wait = markers.pop(spec.step_id, None) or waits.wait_marker(run.clock.now(), None, None)
            step = self.state.steps[i]
            out = a.wait_timed_out(run, spec, step.attempts + 1, step.failures + 1, wait)
            run.steps = rotate_token(run.steps, i)
            run.span.record(spec.step_id, h.EXECUTE, out.entry["attempt"], out)
            self._fail(i, out)
            self.history.append(out.entry)
            run.emit_step(out.entry)
        run.context = with_waits(run.context, markers)

    # --- the loop ---------------------------------------------------------------------------

    async def _checkpoint(self, t: m.Transition) -> None:
        run = self.run
        self._save_holds()
        completed = t.state.status is m.SagaStatus.COMPLETED
        settled = await run.checkpoint(
            t,
            self.history,
            last_error=None if completed else self.error,
            set_last_error=self.error is not None or completed,
            in_flight=self._in_flight(),
        )
        self.history, self.error = [], None
        run.span.saw(t.state.status.value)
        self._released(settled)

    async def _look_at_inbox(self) -> None:
        """Consume events for branches that are not running (a waiting branch runs again)."""
        self.check_inbox = False
        if self.history:  # what ended so far goes in first
            await self._checkpoint(m.Transition(self.state, m.Schedule.hold()))
        self._save_holds()
        settled = await self.run.settle_inbox(in_flight=self._in_flight())
        self._released(settled)

    def _launch(self, i: int, delay: float) -> None:
        step = self.state.steps[i]
        attempt, failures = step.attempts + 1, step.failures + 1
        run, spec = self.run, self.specs[i]

        async def branch() -> a.Outcome:
            if delay > 0:  # an in-place retry: wait under the lease, outside the step's span
                await run.lease.sleep(delay)
            call = a.execute(run, spec, attempt, failures)
            return await run.span.attempt(spec.step_id, h.EXECUTE, attempt, call)

        self.running[asyncio.ensure_future(branch())] = (i, attempt)

    async def _cancel_running(self, why: str) -> None:
        tasks = list(self.running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            i, attempt = self.running.pop(task)
            entry = self.run.entry(self.specs[i], h.EXECUTE, attempt)
            entry.update(status=h.CANCELLED, duration_ms=0.0, reason=why)
            self.history.append(entry)

    def _next_wake(self) -> float | None:
        ends = [t for t in (*self.retry_held.values(), *self.wait_held.values()) if t != FOREVER]
        return min(ends) - monotonic() if ends else None

    async def go(self) -> m.Transition | None:
        run = self.run
        self._expire()
        try:
            while True:
                if self.check_inbox:
                    await self._look_at_inbox()
                starts: list[tuple[int, float]] = []
                if self.failed is None and not run.should_stop():
                    busy = frozenset(
                        self._in_flight()
                        | set(self.retry_held)
                        | set(self.wait_held)
                        | {i for i, _ in self.relaunch}
                    )
                    starts = [(i, 0.0) for i in m.ready(self.state, self.shape, busy)]
                    starts += self.relaunch
                self.relaunch = []
                if self.failed is not None and self.running:
                    failed_id = self.specs[self.failed].step_id
                    await self._cancel_running(f"cancelled: branch {failed_id} failed")
                if self.failed is None and (self.running or starts):
                    if self.history:
                        await self._checkpoint(m.Transition(self.state, m.Schedule.hold()))
                    if starts:
                        await run.lease.ensure()
                    for i, delay in starts:
                        self._launch(i, delay)
                    await self._wait_some()
                    continue
                settled = await self._settle()
                if isinstance(settled, _GoOn):
                    continue
                return settled
        finally:
            if self.running:
                tasks = list(self.running)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self.running.clear()

    async def _wait_some(self) -> None:
        """Wait for a branch to end, a held step's time to come, or the next look at the
        inbox; apply what ended."""
        run = self.run
        lost = run.lease.lost_future()
        wake = self._next_wake()
        poll = INBOX_POLL_S if self.wait_held and self.running else None
        limits = [x for x in (wake, poll) if x is not None]
        waiting: set[asyncio.Future[Any]] = {*self.running, lost}
        done, _ = await asyncio.wait(
            waiting,
            timeout=max(min(limits), 0.0) if limits else None,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if run.lease.is_lost:
            raise LeaseLost()
        for task in [t for t in self.running if t in done]:
            i, _ = self.running.pop(task)
            self._apply(i, task.result())  # LeaseLost from a branch propagates
        expiring = any(t <= monotonic() for t in self.wait_held.values())
        if not done and self.wait_held and not expiring:
            self.check_inbox = self.check_inbox or await self._inbox_pending()
        if expiring:
            await self._look_at_inbox()  # an event that made it in time wins over the timeout
        self._expire()

    async def _inbox_pending(self) -> bool:
        """Whether events wait in the inbox; a database that cannot be reached right now
        stops nothing (the next look, a second later, asks again)."""
        run = self.run
        try:
            return await run.deps.store.saga_inbox_pending(run.saga_id)
        except Exception as exc:
            if not is_transient(exc):
                raise
            run.log.warning("could not look at the inbox (will look again): %s", exc)
            return False

    async def _settle(self) -> m.Transition | _GoOn | None:
        run = self.run
        if self.failed is not None:  # the rollback comes first: nothing waits any more
            self.retry_held.clear()
            self.wait_held.clear()
        wake = self._next_wake()
        held = frozenset(self.retry_held) | frozenset(self.wait_held)
        focus = None
        if held:
            focus = min(held, key=lambda i: (self.retry_held.get(i, self.wait_held.get(i)), i))
        t = m.branches_settled(
            self.state,
            self.shape,
            failed=self.failed,
            held=held,
            due_in=None if wake is None else timedelta(seconds=max(wake, 0.0)),
            focus=focus,
        )
        if t is None:  # ready steps, but the worker is stopping: hand them over
            if self.history:
                await self._checkpoint(m.Transition(self.state, m.Schedule.hold()))
            await run.release(run.interrupted_note("worker draining: released between steps"))
            return None
        if self.wait_held and t.state.status is m.SagaStatus.SUSPENDED:
            return await self._suspend(t)
        await self._checkpoint(t)
        return t

    async def _suspend(self, t: m.Transition) -> m.Transition | _GoOn:
        """Suspend the saga (``t``) while a branch waits for an event, in one locked write
        with a look at the inbox: an event that came for a waiting branch while this worker
        held the saga is consumed instead, the saga stays held and the branch runs again
        (GO_ON). Two writes (suspend, then look) would strand such an event if the worker
        were lost between them: the saga released with no due time, its event unseen."""
        run = self.run
        self._save_holds()
        history, error = self.history, self.error
        consumed: list[waits.Settled] = []

        def decide(row: SagaRow, now: datetime) -> RowUpdate:
            consumed.clear()  # decided again if the write must be retried
            at = now.isoformat()
            inbox = list(row.inbox or [])
            settled = waits.settle_inbox(
                self.state, self.shape, run.context, run.steps, inbox, at=at, now=now
            )
            goes_on = m.Transition(self.state, m.Schedule.hold())
            if settled.released:
                consumed.append(settled)
            upd = update_for(
                goes_on if settled.released else t,
                settled.steps,
                at=at,
                history=[*history, *settled.history],
                context=settled.context,
                last_error=error,
                set_last_error=error is not None,
            )
            if settled.changed:
                upd.inbox, upd.set_inbox = settled.inbox, True
            return upd

        await run.locked(decide)
        self.history, self.error = [], None
        if consumed:
            self._released(consumed[0])
            return GO_ON
        run.span.saw(t.state.status.value)
        return t


class _GoOn:
    """The saga did not settle after all (an event released a waiting branch): go on."""


GO_ON = _GoOn()


async def run_branches(run: Run) -> m.Transition | None:
    """Run a parallel saga forward until no branch runs; the settling transition (written),
    or None when the saga was released to another worker."""
    return await _Branches(run).go()
