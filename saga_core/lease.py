"""A claimed run's lease: its fencing token, how long it is known to last, the future that
resolves when it is lost, and the task that renews it.

Time here is never the worker's wall clock. The database sets every expiry by its own clock;
the worker only knows that a lease the database confirmed at a moment ``t`` (by this
process's monotonic clock, taken *before* the request was sent) lasts at least until
``t + remaining``. A worker whose renewals keep failing stops its step once that bound has
passed, before another worker may claim the saga. :class:`DbClock` gives the database's
time as seen from this process: anchored at the claim (the database's ``now()`` it returned)
and advanced by the monotonic clock, so a worker whose wall clock is hours off still keeps
times by the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["DbClock", "Interrupted", "Lease", "LeaseLost", "monotonic"]

logger = logging.getLogger(__name__)


def monotonic() -> float:
    """This process's monotonic clock as the running event loop keeps it (``loop.time()``;
    ``time.monotonic()`` outside a loop). Every duration the run layer measures comes from
    here, so that it agrees with the loop's own timers (``asyncio.sleep``, timeouts) and a
    loop on virtual time (``saga_core.testing``) runs leases, retries and timeouts on it."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return time.monotonic()
    return loop.time()


class Interrupted(Exception):
    """A run stopped without an outcome for the step in flight (not a failed attempt)."""


class LeaseLost(Interrupted):
    """The saga's lease token changed under us (another worker took it over, an operator
    acted), or the lease ran out while the database could not be reached."""

    def __str__(self) -> str:
        return "lease lost"


_EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)
_second_text: tuple[int, str] = (-1, "")
"""The last whole second ``DbClock.iso`` wrote out (UTC, since the epoch), and its text."""


class DbClock:
    """The database's clock, read without a round trip: ``db_now`` was its time when this
    process's monotonic clock read ``mono``."""

    def __init__(self, db_now: datetime, mono: float | None = None) -> None:
        self._db = db_now
        self._mono = monotonic() if mono is None else mono
        # In UTC (as the stores give it): microseconds since the epoch, for ``iso``.
        utc = db_now.tzinfo is UTC
        self._db_us = (db_now.replace(tzinfo=None) - _EPOCH) // _US if utc else None

    def now(self) -> datetime:
        return self._db + timedelta(seconds=monotonic() - self._mono)

    def iso(self) -> str:
        """``now().isoformat()``; for a UTC clock built from the text of its second (shared
        by every clock: made once a second) and the microseconds, four times faster."""
        if self._db_us is None:
            return self.now().isoformat()
        elapsed = monotonic() - self._mono
        us = elapsed * 1e6
        rounded = round(us)
        if abs(abs(us - rounded) - 0.5) < 1e-3:
            # Near half a microsecond the product's own rounding may tip it the other way
            # from timedelta's (exact) rounding, which ``now()`` uses: take timedelta's.
            rounded = timedelta(seconds=elapsed) // _US
        second, micro = divmod(self._db_us + rounded, 1_000_000)
        global _second_text
        known, text = _second_text
        if known != second:
            text = (_EPOCH + timedelta(seconds=second)).isoformat()
            _second_text = (second, text)
        return f"{text}.{micro:06d}+00:00" if micro else f"{text}+00:00"

    def to_mono(self, at: datetime) -> float:
        """The monotonic time at which the database's clock reads ``at``."""
        return self._mono + (at - self._db).total_seconds()

    def from_mono(self, mono: float) -> datetime:
        return self._db + timedelta(seconds=mono - self._mono)


Renew = Callable[[uuid.UUID], Awaitable[float | None]]
"""Extend the lease held with this token: the seconds left by the database clock after the
renewal, or ``None`` when the token no longer matches."""


class Lease:
    """The lease of one claimed run.

    Args:
        token: the fencing token the claim set; every write of the run is conditional on it.
        length: the lease's length in seconds (``execution_lease``).
        sent: monotonic time at which the claim that granted it was sent.
        renew: extends the lease in the database (the store's ``saga_renew_lease``).
        expire_unanswered: end the lease when a renewal is still unanswered as it runs out
            (False on SQLite, where a renewal waits for the one write lock, not a network).
    """

    def __init__(
        self,
        token: uuid.UUID,
        length: float,
        *,
        sent: float,
        renew: Renew,
        expire_unanswered: bool = True,
    ) -> None:
        self.token = token
        self._renew = renew
        self.length = length
        self.valid_until = sent + length
        """Monotonic time until which the lease is known to hold."""
        self._lost: asyncio.Future[None] | None = None
        self._watched: set[asyncio.Task[Any]] = set()
        self._keep_timer: asyncio.TimerHandle | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        # SQLite: a renewal that waits is queued behind the database's one write lock (a
        # transactional step of this very process may hold it), not lost on a network.
        self._expire_unanswered = expire_unanswered
        self.is_lost = False

    # --- what the database told us ---------------------------------------------------------

    def confirm(self, sent: float, left: float | None) -> None:
        """A write sent at monotonic ``sent`` came back with ``left`` seconds of lease (by the
        database clock; ``None``: the write released the lease or gave no news)."""
        if left is not None:
            self.valid_until = max(self.valid_until, sent + left)

    def left(self) -> float:
        """Seconds of lease this process can count on from now."""
        return self.valid_until - monotonic()

    def needs_renewal(self) -> bool:
        """Less than half the lease is known to be left."""
        return self.left() < self.length / 2

    # --- lost ------------------------------------------------------------------------------

    def lost_future(self) -> asyncio.Future[None]:
        """Resolves when the lease is lost: steps race it without a watcher task each."""
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
            if self.is_lost:
                self._lost.set_result(None)
        return self._lost

    def mark_lost(self) -> None:
        self.is_lost = True
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        for task in self._watched:
            task.cancel("lease lost")

    def watch(self, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` (a step's code) when the lease is lost; at once if it is."""
        self._watched.add(task)
        if self.is_lost:
            task.cancel("lease lost")

    def unwatch(self, task: asyncio.Task[Any]) -> None:
        self._watched.discard(task)

    def check(self) -> None:
        """Raise LeaseLost when the lease is lost."""
        if self.is_lost:
            raise LeaseLost()

    async def ensure(self) -> None:
        """Before a step starts: a lease known to last at least half its length, renewed now
        if need be (a fenced renewal that succeeds proves nobody took the saga over, however
        long the last write took). LeaseLost when it is lost; database errors propagate."""
        self.check()
        if self.needs_renewal() and not await self.renew():
            raise LeaseLost()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` holding the lease; raises LeaseLost if it is lost meanwhile."""
        await asyncio.wait({self.lost_future()}, timeout=seconds)
        self.check()

    # --- renewal ---------------------------------------------------------------------------

    async def renew(self) -> bool:
        """Renew once, now; False (and the lease marked lost) when the token no longer
        matches. Database errors propagate."""
        sent = monotonic()
        left = await self._renew(self.token)
        if left is None:
            self.mark_lost()
            return False
        self.confirm(sent, left)
        return True

    def start_keeping(self, *, log: logging.LoggerAdapter[Any] | None = None) -> None:
        """Renew the lease in the background (:meth:`keep`) until :meth:`stop_keeping`. The
        renewing task starts only once half the lease has passed: most runs end before, and
        a timer costs far less than a task that sleeps and is cancelled."""
        loop = asyncio.get_running_loop()
        delay = max(self.valid_until - self.length / 2 - monotonic(), 0.0)
        self._keep_timer = loop.call_later(delay, self._start_keeper, log)

    def _start_keeper(self, log: logging.LoggerAdapter[Any] | None) -> None:
        self._keep_timer = None
        if not self.is_lost:
            self._keeper = asyncio.get_running_loop().create_task(self.keep(log=log))

    async def stop_keeping(self) -> None:
        if self._keep_timer is not None:
            self._keep_timer.cancel()
            self._keep_timer = None
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def keep(self, *, log: logging.LoggerAdapter[Any] | None = None) -> None:
        """Renew every half lease until cancelled. A renewal that fails on a database error
        is retried about every tenth of the lease; once the lease is known to have run out,
        the lease is lost (the step in flight is cancelled)."""
        retry = max(min(1.0, self.length / 10), 0.05)
        while not self.is_lost:
            wait = self.valid_until - self.length / 2 - monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            # A renewal left unanswered (a silent network: no reset, no reply; a connect
            # that hangs) must not outlast the lease: a timer ends it when the lease runs out.
            if self._expire_unanswered:
                self._arm_expiry(log)
            try:
                if not await self.renew():
                    return
            except Exception as exc:
                if self.left() <= 0:
                    self._run_out(log, exc)
                    return
                await asyncio.sleep(min(retry, max(self.left(), 0.01)))
            finally:
                if self._expiry is not None:
                    self._expiry.cancel()
                    self._expiry = None

    def _arm_expiry(self, log: logging.LoggerAdapter[Any] | None) -> None:
        self._expiry = asyncio.get_running_loop().call_at(self.valid_until, self._expired, log)

    def _expired(self, log: logging.LoggerAdapter[Any] | None) -> None:
        self._expiry = None
        if self.is_lost:
            return
        if self.left() > 0:  # another write confirmed more lease meanwhile
            self._arm_expiry(log)
            return
        self._run_out(log, "no answer to the renewal")

    def _run_out(self, log: logging.LoggerAdapter[Any] | None, why: object) -> None:
        (log or logger).warning(
            "lease ran out while the database could not be reached (%s): stopping the step in "
            "flight before another worker may claim the saga",
            why,
        )
        self.mark_lost()
