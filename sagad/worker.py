"""The claim loop: one concurrency limit shared by every orchestrator of the process.

Each turn claims ``min(batch_size, free slots)`` due sagas per engine in one statement and
runs each as a task (``engine.drive``, which holds no transaction while user code runs). A
full batch means more may be waiting: claim again at once. Otherwise sleep until a wake-up
(PostgreSQL NOTIFY), a freed slot after a full claim, or ``poll_interval``.

Draining stops claiming, lets in-flight steps finish, then cancels the rest; ``drive``
releases a cancelled saga's lease so another worker takes it at once.

Suspects (sagas whose worker was lost at least twice in a row while they ran) never share
the process with other sagas: ordinary claims leave them out; about once a second the loop
tries to claim one, and when it gets one it stops claiming, lets its in-flight sagas stop
after their current step (released to any worker, as when draining), keeps the suspect's
lease meanwhile, and runs the suspect alone.
A poison saga then only takes itself down (and is quarantined after ``max_recoveries``),
while the sagas that happened to share its dead workers finish normally.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

from loguru import logger

from saga_core import SagaEngine
from saga_core.backoff import BackoffPolicy, RetryGaveUp
from saga_core.dberrors import DbErrorKind
from saga_core.settings import mask_url
from saga_core.store import SagaRow
from sagad.dbproblems import describe, hint
from sagad.errors import DatabaseRefusedError

__all__ = ["Counters", "Worker"]

CLAIM_BACKOFF = BackoffPolicy(first=0.2, maximum=10.0)
"""Claim failures: up to 10 s between attempts (a wake-up cuts a wait short). Permanent
errors get ``permanent_error_timeout`` (a setting) before the worker gives up."""
SUSPECT_PROBE_S = 1.0
"""How often the loop tries to claim a suspect to run alone."""
SUSPECT_PAUSE_S = 30.0
"""After a failed claim of a suspect, how long the loop leaves suspects alone."""
CLAIM_TIMEOUT_S = 20.0
"""A claim is one indexed statement; one hanging this long is on a dead connection (a network
partition never reports itself): give up and back off like any database error. Should its
commit have gone through, the rows' leases expire and another claim takes them."""


@dataclass
class Counters:
    claims: int = 0
    claimed: int = 0
    finished: int = 0
    claim_errors: int = 0


class Worker:
    """Claims and drives sagas for ``engines`` until ``stop()``."""

    def __init__(
        self,
        engines: list[SagaEngine[Any]],
        *,
        concurrency: int,
        batch_size: int,
        poll_interval: float,
        on_claim: Any = None,
        permanent_error_timeout: float | None = 300.0,
    ) -> None:
        self.engines = engines
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.on_claim = on_claim
        """Optional callable(engine, rows) told about every claim (metrics)."""
        self.tasks: dict[asyncio.Task[None], SagaRow] = {}
        self.counters = Counters()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._draining = False
        self._saturated = False
        self._tick = time.monotonic()
        self._waiting = False
        self._turn = 0
        self._reserved: tuple[SagaEngine[Any], SagaRow, float] | None = None
        """A suspect claimed to run alone, waiting for the in-flight sagas to finish."""
        self._isolated: asyncio.Task[None] | None = None
        """The suspect running alone."""
        self._next_probe = 0.0
        self._backoff = replace(
            CLAIM_BACKOFF, permanent_give_up_after=permanent_error_timeout
        ).start()
        self._claiming: SagaEngine[Any] | None = None
        """The engine of the claim in progress (named when a claim fails)."""
        for eng in engines:
            eng.listeners.append(self._on_event)

    # --- control ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Claim now (a NOTIFY arrived, or a slot freed after a full claim)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming at once; in-flight sagas keep running until ``drain``."""
        self._stopping.set()
        self._wake.set()

    def set_concurrency(self, concurrency: int) -> None:
        if concurrency != self.concurrency:
            logger.info("concurrency {} -> {}", self.concurrency, concurrency)
            self.concurrency = concurrency
            self._saturated = True
            self.wake()

    @property
    def in_flight(self) -> int:
        return len(self.tasks)

    def making_progress(self, within: float) -> bool:
        """The loop is waiting on purpose, or finished a turn less than ``within`` s ago
        (for the systemd watchdog: a claim hung on a dead connection stops the pings)."""
        return self._waiting or time.monotonic() - self._tick < within

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and dispatch until ``stop()``.

        Raises:
            DatabaseRefusedError: claims kept failing with a permanent database error (wrong
                credentials, revoked privilege, dropped table) for ``permanent_error_timeout``.
        """
        while not self._stopping.is_set():
            self._tick = time.monotonic()
            try:
                if await self._isolation_turn():
                    continue
            except Exception as exc:  # a failed suspect claim: go on with ordinary work
                logger.warning("claim of a suspect saga failed: {}", exc)
                self._next_probe = time.monotonic() + SUSPECT_PAUSE_S
            free = self.concurrency - len(self.tasks)
            if free <= 0:
                self._saturated = True
                await self._idle(None)
                continue
            self._wake.clear()
            try:
                full = await self._claim_round(free)
            except Exception as exc:
                self.counters.claim_errors += 1
                wait = self._claim_failed(exc)
                # A wake-up ends a wait for the database to come back; a permanent error
                # (logged at ERROR each time) waits its backoff out whatever arrives.
                last = self._backoff.last
                await self._idle(wait, wakeable=not (last is not None and last.permanent))
                continue
            self._backoff.success()
            self._saturated = full
            if full:
                await asyncio.sleep(0)  # let the new tasks start; then claim again
                continue
            await self._idle(self.poll_interval)
        if self._reserved is not None:  # stopping: give the suspect back at once
            eng, row, _ = self._reserved
            self._reserved = None
            await self._release_unstarted(eng, [row])

    def _claim_failed(self, exc: Exception) -> float:
        """Log a failed claim; how long to back off. Transient errors are warnings, others
        errors (a permanent one every time, with what to do about it).

        Raises:
            DatabaseRefusedError: a permanent error outlasted ``permanent_error_timeout``.
        """
        eng = self._claiming
        where = mask_url(eng.sql_engine.url.render_as_string(hide_password=False)) if eng else "?"
        try:
            wait = self._backoff.failure(exc)
        except RetryGaveUp as gave_up:
            info = gave_up.info
            raise DatabaseRefusedError(
                f"database {where}: claims failed for {gave_up.elapsed:.0f}s: {describe(info)}; "
                f"{hint(info)} (permanent_error_timeout)"
            ) from None
        last = self._backoff.last
        assert last is not None
        info = last
        if info.kind is DbErrorKind.TRANSIENT:
            logger.warning(
                "claim failed, database unavailable ({}); retrying in {:.1f}s", describe(info), wait
            )
        elif info.kind is DbErrorKind.PERMANENT:
            left = self._backoff.permanent_left()
            logger.error(
                "claim failed on {}: {}; {}; retrying in {:.1f}s{}",
                where,
                describe(info),
                hint(info),
                wait,
                f", sagad exits (78) if this lasts {left:.0f}s more" if left is not None else "",
            )
        else:
            logger.opt(exception=exc).error("claim failed; retrying in {:.1f}s: {}", wait, exc)
        return wait

    async def _isolation_turn(self) -> bool:
        """Run suspects alone. True when this turn was spent on that (no ordinary claim)."""
        if self._isolated is not None:
            if not self._isolated.done():
                await self._idle(None)  # woken when it ends
                return True
            self._isolated = None
            self._yield_between_steps(False)
        now = time.monotonic()
        if self._reserved is not None:
            eng, row, renewed = self._reserved
            if not self.tasks:
                self._reserved = None
                logger.bind(saga_id=str(row.id), saga_name=row.saga_name).warning(
                    "running saga alone: its worker was lost {} times in a row while it ran",
                    row.recovery_count,
                )
                self._spawn(eng, row, isolated=True)
                self._isolated = next(t for t, r in self.tasks.items() if r is row)
                return True
            if now - renewed > eng.execution_lease.total_seconds() / 3:
                # Still waiting for in-flight steps: keep the suspect's lease (never released
                # here: a release would hide that it is a suspect).
                if row.lease_token is None or (
                    await eng.store.saga_renew_lease(row.id, row.lease_token) is None
                ):
                    self._reserved = None  # taken from us (an operator acted)
                    self._yield_between_steps(False)
                    return False
                self._reserved = (eng, row, now)
            await self._idle(min(self.poll_interval, 0.5))  # woken as sagas finish
            return True
        if now < self._next_probe:
            return False
        self._next_probe = now + SUSPECT_PROBE_S
        for eng in self.engines:
            async with asyncio.timeout(CLAIM_TIMEOUT_S):
                rows = await eng.claim(1, suspects=True)
            if rows:
                if self.on_claim is not None:
                    self.on_claim(eng, rows)
                self.counters.claims += 1
                self.counters.claimed += 1
                self._reserved = (eng, rows[0], now)
                # In-flight sagas stop after their current step (released to any worker),
                # so the suspect waits for steps, not for whole sagas.
                self._yield_between_steps(True)
                return True
        return False

    def _yield_between_steps(self, on: bool) -> None:
        if self._draining:
            return  # shutting down: they stay stopped
        for eng in self.engines:
            eng.yielding = on

    async def _claim_round(self, free: int) -> bool:
        """One claim per engine (rotating who goes first); whether any batch came back full."""
        full = False
        n_engines = len(self.engines)
        start = self._turn % n_engines
        self._turn += 1
        for i in range(n_engines):
            eng = self._claiming = self.engines[(start + i) % n_engines]
            want = min(self.batch_size, free)
            if want <= 0:
                full = True
                break
            async with asyncio.timeout(CLAIM_TIMEOUT_S):
                rows = await eng.claim(want, suspects=False)
            self.counters.claims += 1
            self.counters.claimed += len(rows)
            if self.on_claim is not None:
                self.on_claim(eng, rows)
            if self._stopping.is_set():
                await self._release_unstarted(eng, rows)
                return False
            for row in rows:
                self._spawn(eng, row)
            free -= len(rows)
            full = full or len(rows) == want
        return full

    async def _idle(self, timeout: float | None, *, wakeable: bool = True) -> None:
        """Wait for a wake-up (when ``wakeable``), ``stop()`` or ``timeout`` (a backoff too
        ends early on a wake-up: a NOTIFY or a listener reconnection means the database is
        back)."""
        self._waiting = True
        try:
            waits = [asyncio.ensure_future(self._stopping.wait())]
            if wakeable:
                waits.append(asyncio.ensure_future(self._wake.wait()))
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        finally:
            self._waiting = False
            self._tick = time.monotonic()

    def _spawn(self, eng: SagaEngine[Any], row: SagaRow, *, isolated: bool = False) -> None:
        task = asyncio.create_task(eng.drive(row, isolated=isolated), name=f"saga-{row.id}")
        self.tasks[task] = row
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        row = self.tasks.pop(task, None)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None and row is not None:
                logger.bind(saga_id=str(row.id), saga_name=row.saga_name).opt(exception=exc).error(
                    "saga task ended with an unexpected error: {}", exc
                )
        if self._saturated or self._reserved is not None or task is self._isolated:
            self.wake()

    async def _release_unstarted(self, eng: SagaEngine[Any], rows: list[SagaRow]) -> None:
        """Rows claimed while the stop signal arrived: give them straight back."""
        await eng.release_unstarted(rows)

    # --- draining ------------------------------------------------------------------------------

    def _on_event(self, event: str, fields: dict[str, Any]) -> None:
        """Counts finished sagas for the status line. (While draining, the executor itself
        stops each saga after its current step's checkpoint: ``engine.draining``.)"""
        if event == "finished":
            self.counters.finished += 1

    async def drain(self, timeout: float, force: asyncio.Event) -> int:
        """Let in-flight steps finish for up to ``timeout`` s (or until ``force`` is set),
        then cancel what is left; returns how many sagas were cancelled mid-step."""
        self.stop()
        self._draining = True
        for eng in self.engines:
            eng.draining = True
        pending = set(self.tasks)
        if pending:
            logger.info(
                "draining: waiting up to {:g}s for {} in-flight saga(s)", timeout, len(pending)
            )
            forced = asyncio.ensure_future(force.wait())
            try:
                deadline = time.monotonic() + timeout
                while pending and not force.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    done, _ = await asyncio.wait(
                        [*pending, forced], timeout=left, return_when=asyncio.FIRST_COMPLETED
                    )
                    pending -= done
            finally:
                forced.cancel()
        left_over = [t for t in self.tasks if not t.done()]
        if left_over:
            logger.warning(
                "cancelling {} saga(s) still running; their leases are released", len(left_over)
            )
            await asyncio.sleep(0)  # a task never started cannot release its lease
            for task in left_over:
                if not task.cancelling():  # one already releasing its lease: let it finish
                    task.cancel()
            # drive() releases each lease in one short write; do not wait forever on a dead
            # database (the leases then expire on their own).
            _, stuck = await asyncio.wait(left_over, timeout=2.0 if force.is_set() else 15.0)
            if stuck:
                logger.warning(
                    "{} lease(s) could not be released in time; they expire on their own",
                    len(stuck),
                )
        return len(left_over)
