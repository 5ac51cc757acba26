"""Forward execution of a parallel saga: every step whose dependencies are done runs at once,
concurrently, under the saga's one lease; each outcome is checkpointed on its own as it
comes; once no branch runs any more the saga is settled (completed, suspended, rolled back).

A branch that exhausts its retries cancels its running siblings (recorded as ``CANCELLED``,
not a failed attempt) and the saga rolls back every finished step, newest first. A branch
that waits for a retry time or an event is held while the others go on; the saga suspends
once nothing else can run. A new step starts only after the checkpoint that made it ready
has committed.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from saga_core import machine as m
from saga_core.rows import now_iso

if TYPE_CHECKING:
    from saga_core.executor import Executor, _Outcome, _Run

__all__ = ["run_branches"]

FOREVER = math.inf


def _parse(at: Any) -> float | None:
    """An ISO time from the context as a UNIX time; None when unreadable."""
    try:
        return datetime.fromisoformat(str(at)).timestamp()
    except ValueError:
        return None


class _Branches:
    def __init__(self, ex: Executor, run: _Run, state: m.MachineState, shape: m.Shape) -> None:
        from saga_core.executor import RETRY_AT_KEY, WAITING_KEY

        self.ex = ex
        self.run = run
        self.state = state
        self.shape = shape
        self.specs = run.definition.steps
        self.index = {spec.step_id: spec.index for spec in self.specs}
        self.running: dict[asyncio.Task[_Outcome], tuple[int, int]] = {}
        """Branch task -> (step index, attempt)."""
        self.history: list[dict[str, Any]] = []
        """Entries of outcomes applied but not checkpointed yet."""
        self.error: str | None = None
        self.failed: int | None = None
        self.retry_held: dict[int, float] = {}
        """Step -> monotonic time from which it may run again (a retry wait)."""
        self.wait_held: dict[int, float] = {}
        """Step -> monotonic time its event wait times out (inf: never)."""
        self.wait_names: dict[int, str] = {}
        """Waiting step -> the event name it waits for (named waits only)."""
        self.relaunch: list[tuple[int, float]] = []
        """In-place retries to start once the failure is checkpointed: (step, delay)."""
        self.retry_key = RETRY_AT_KEY
        self.waiting_key = WAITING_KEY
        self._restore()

    # --- carried over from the previous run -------------------------------------------------

    def _restore(self) -> None:
        ctx = self.run.context
        wall, mono = time.time(), time.monotonic()
        for step_id, at in dict(ctx.get(self.retry_key) or {}).items():
            when = _parse(at)
            if step_id in self.index and when is not None and when > wall:
                self.retry_held[self.index[step_id]] = mono + (when - wall)
        marker = ctx.get(self.waiting_key)
        if isinstance(marker, dict):
            since = _parse(marker.get("since"))
            timeout_s = marker.get("timeout_s")
            if isinstance(timeout_s, int | float) and since is not None:
                ends = mono + (since + float(timeout_s) - wall)
            else:
                ends = FOREVER
            names = marker.get("branch_event_names") or {}
            if marker.get("event_name") is not None and not names:
                names = {marker.get("step_id"): marker["event_name"]}
            for step_id in marker.get("branches") or [marker.get("step_id")]:
                if step_id in self.index:
                    self.wait_held[self.index[step_id]] = ends
                    if names.get(step_id) is not None:
                        self.wait_names[self.index[step_id]] = str(names[step_id])

    def _save_waits(self) -> None:
        """Mirror the held steps into the context: retry times, and the event wait marker."""
        ctx = {
            k: v for k, v in self.run.context.items() if k not in (self.retry_key, self.waiting_key)
        }
        wall, mono = time.time(), time.monotonic()
        if self.retry_held:
            ctx[self.retry_key] = {
                self.specs[i].step_id: datetime.fromtimestamp(wall + (t - mono), UTC).isoformat()
                for i, t in sorted(self.retry_held.items())
            }
        if self.wait_held:
            first = min(self.wait_held, key=lambda i: (self.wait_held[i], i))
            ends = self.wait_held[first]
            old = self.run.context.get(self.waiting_key)
            since = old.get("since") if isinstance(old, dict) else None
            since = since or now_iso()
            since_wall = _parse(since) or wall
            marker: dict[str, Any] = {
                "step_id": self.specs[first].step_id,
                "since": since,
                "timeout_s": None
                if ends == FOREVER
                else round(wall + (ends - mono) - since_wall, 3),
                "branches": [self.specs[i].step_id for i in sorted(self.wait_held)],
            }
            names = {
                self.specs[i].step_id: self.wait_names[i]
                for i in sorted(self.wait_held)
                if i in self.wait_names
            }
            if names:  # named waits: deliverable by correlation to any of these names
                if first in self.wait_names:
                    marker["event_name"] = self.wait_names[first]
                marker["event_names"] = sorted(set(names.values()))
                marker["branch_event_names"] = names
            ctx[self.waiting_key] = marker
        self.run.context = ctx

    # --- outcomes ---------------------------------------------------------------------------

    def _apply(self, i: int, out: _Outcome) -> None:
        spec = self.specs[i]
        ex, run = self.ex, self.run
        if out.kind == "success":
            self.state = m.branch_succeeded(self.state, self.shape, i)
            ex._store_output(run, spec, out)
        elif out.kind == "wait":
            old = run.context.get(self.waiting_key)
            if not isinstance(old, dict):
                run.context = {**run.context, self.waiting_key: {"since": out.entry["at"]}}
            timeout = out.wait_timeout
            if out.wait_name is not None:
                self.wait_names[i] = out.wait_name
            else:
                self.wait_names.pop(i, None)
            self.wait_held[i] = (
                FOREVER if timeout is None else time.monotonic() + timeout.total_seconds()
            )
            run.log.bind(step=spec.step_id).info("step {} waits for an event", spec.step_id)
        else:
            self._fail(i, out)
        self.history.append(out.entry)
        ex._emit_step(run, out.entry)

    def _fail(self, i: int, out: _Outcome) -> None:
        spec = self.specs[i]
        delay = spec.retry_policy.next_delay(self.state.steps[i].failures + 1)
        self.state = m.branch_failed(self.state, self.shape, i)
        self.ex._note_failure(self.run, spec, out, delay)
        self.error = out.error
        if delay is None:
            if self.failed is None:
                self.failed = i
        elif delay <= self.ex.engine.in_place_retry_max:
            self.relaunch.append((i, delay.total_seconds()))
        else:
            self.retry_held[i] = time.monotonic() + delay.total_seconds()

    def _expire(self) -> None:
        """Retry waits that are over release their step; event waits that are over are a
        failed attempt (TIMEOUT) of their step."""
        now = time.monotonic()
        for i in [i for i, t in self.retry_held.items() if t <= now]:
            del self.retry_held[i]
        for i in sorted(i for i, t in self.wait_held.items() if t <= now):
            del self.wait_held[i]
            self.wait_names.pop(i, None)
            marker = self.run.context.get(self.waiting_key)
            since = marker.get("since") if isinstance(marker, dict) else None
            attempt = self.state.steps[i].attempts + 1
            out = self.ex._wait_timeout(self.run, self.specs[i], attempt, {"since": since})
            self._fail(i, out)
            self.history.append(out.entry)
        if not self.wait_held and self.waiting_key in self.run.context:
            self.run.context = {k: v for k, v in self.run.context.items() if k != self.waiting_key}

    # --- the loop ---------------------------------------------------------------------------

    async def _checkpoint(self, t: m.Transition) -> None:
        if self.run.span is not None:
            self.run.span.status = t.state.status.value
        self._save_waits()
        completed = t.state.status is m.SagaStatus.COMPLETED
        await self.ex._write(
            self.run,
            t,
            self.history,
            last_error=None if completed else self.error,
            set_last_error=self.error is not None or completed,
        )
        self.history, self.error = [], None
        self.run.state = t.state

    def _launch(self, i: int, delay: float) -> None:
        attempt = self.state.steps[i].attempts + 1
        ex, run, spec = self.ex, self.run, self.specs[i]

        async def branch() -> _Outcome:
            if delay > 0:  # an in-place retry: wait under the lease, outside the step's span
                await ex._sleep(run, delay)
            call = ex._attempt(run, spec, attempt)
            if run.span is not None:
                return await run.span.branch(spec.step_id, attempt, call)  # type: ignore[no-any-return]
            return await call

        self.running[asyncio.ensure_future(branch())] = (i, attempt)

    async def _cancel_running(self, why: str) -> None:
        tasks = list(self.running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            i, attempt = self.running.pop(task)
            entry = self.ex._entry(self.run, self.specs[i], "execute", attempt)
            entry.update(status="CANCELLED", duration_ms=0.0, reason=why)
            self.history.append(entry)

    def _next_wake(self) -> float | None:
        ends = [t for t in (*self.retry_held.values(), *self.wait_held.values()) if t != FOREVER]
        return min(ends) - time.monotonic() if ends else None

    async def go(self) -> m.Transition | None:
        ex = self.ex
        self._expire()
        try:
            while True:
                starts: list[tuple[int, float]] = []
                if self.failed is None and not ex.engine.draining:
                    busy = frozenset(
                        {i for i, _ in self.running.values()}
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
                    for i, delay in starts:
                        self._launch(i, delay)
                    await self._wait_some()
                    continue
                return await self._settle()
        finally:
            if self.running:
                tasks = list(self.running)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self.running.clear()

    async def _wait_some(self) -> None:
        """Wait for a branch to end (or a held step's time to come), and apply what ended."""
        from saga_core.executor import LeaseLost

        lost = self.run.lost_future()
        wake = self._next_wake()
        waiting: set[asyncio.Future[Any]] = {*self.running, lost}
        done, _ = await asyncio.wait(
            waiting,
            timeout=None if wake is None else max(wake, 0.0),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self.run.lost.is_set():
            raise LeaseLost()
        for task in [t for t in self.running if t in done]:
            i, _ = self.running.pop(task)
            self._apply(i, task.result())  # LeaseLost from a branch propagates
        self._expire()

    async def _settle(self) -> m.Transition | None:
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
        if t is None:  # ready steps, but the worker is draining: hand them over
            if self.history:
                await self._checkpoint(m.Transition(self.state, m.Schedule.hold()))
            await self.ex._release(
                self.run.row.id, self.run.token, self.ex._interrupted_note(self.run, drained=True)
            )
            return None
        await self._checkpoint(t)
        return t


async def run_branches(
    ex: Executor, run: _Run, state: m.MachineState, shape: m.Shape
) -> m.Transition | None:
    """Run a parallel saga forward until no branch runs; the settling transition (written),
    or None when the saga was released to another worker."""
    return await _Branches(ex, run, state, shape).go()
