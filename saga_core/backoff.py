"""One retry policy for database outages, shared by every loop that waits for the database
(``sagad``'s start-up, wake-up listener and claim loop; the checkpoint writer).

Exponential backoff with jitter and a cap, an optional give-up deadline, and the verdict of
:mod:`saga_core.dberrors`: a *permanent* error (wrong password, unknown database, revoked
privilege, missing table) has its own budget — none at all at start-up, a few minutes while
running — after which :class:`RetryGaveUp` is raised instead of waiting again.

A loop owns one :class:`Backoff` (``policy.start()``), calls ``failure(exc)`` after each
failed attempt to learn how long to wait, and ``success()`` after each good one. The loop does
its own waiting, so it can stop early (a wake-up, a signal). Step retry policies
(:mod:`saga_core.retry`) are something else: they are stored and fingerprinted with the saga.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from saga_core.dberrors import DbErrorInfo, classify_db_error
from saga_core.errors import SagaStoreError

__all__ = ["Backoff", "BackoffPolicy", "RetryGaveUp"]

MIN_WAIT_S = 0.01


class RetryGaveUp(SagaStoreError):
    """Retrying stopped: the error was permanent for longer than the policy allows, or
    failures lasted past its deadline. The last error is ``__cause__``."""

    def __init__(
        self, info: DbErrorInfo, *, attempts: int, elapsed: float, permanent: bool
    ) -> None:
        why = "permanent error" if permanent else "gave up"
        super().__init__(f"{info} ({why} after {attempts} attempt(s) in {elapsed:.1f}s)")
        self.info = info
        self.attempts = attempts
        self.elapsed = elapsed
        self.permanent = permanent
        """True when a permanent error ran out its budget, False when the deadline passed."""


@dataclass(frozen=True)
class BackoffPolicy:
    """How a loop waits between failed attempts."""

    first: float = 0.1
    """The first wait, in seconds."""
    maximum: float = 10.0
    """No wait is longer than this."""
    factor: float = 2.0
    jitter: float = 0.5
    """Each wait is drawn from ``[(1 - jitter) * w, w]``: workers that lost the database at
    the same moment do not all come back at the same moment."""
    give_up_after: float | None = None
    """Give up when failures of any kind have lasted this long; ``None``: never."""
    permanent_give_up_after: float | None = 0.0
    """Give up when permanent errors have lasted this long in a row: ``0`` at the first one,
    ``None`` never (they are then retried like the others)."""

    def __post_init__(self) -> None:
        if not (0 < self.first <= self.maximum) or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"invalid backoff policy: {self}")

    def start(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> Backoff:
        """A fresh retry state for one loop."""
        return Backoff(self, clock=clock, rng=rng)


class Backoff:
    """The state of one loop under a :class:`BackoffPolicy`: failures in a row."""

    def __init__(
        self, policy: BackoffPolicy, *, clock: Callable[[], float], rng: Callable[[], float]
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rng = rng
        self.attempts = 0
        """Failures since the last success."""
        self.last: DbErrorInfo | None = None
        self._failing_since: float | None = None
        self._permanent_since: float | None = None

    def success(self) -> None:
        self.attempts = 0
        self.last = None
        self._failing_since = None
        self._permanent_since = None

    @property
    def failing_for(self) -> float:
        """Seconds since the first failure in a row (0 when the last attempt succeeded)."""
        return 0.0 if self._failing_since is None else self._clock() - self._failing_since

    def permanent_left(self) -> float | None:
        """Seconds before a permanent error in progress makes ``failure`` give up (``None``
        when none is in progress, or the policy never gives up on one)."""
        limit = self.policy.permanent_give_up_after
        if self._permanent_since is None or limit is None:
            return None
        return max(0.0, self._permanent_since + limit - self._clock())

    def failure(self, exc: BaseException) -> float:
        """Record a failed attempt; the seconds to wait before the next one.

        Raises:
            RetryGaveUp: the policy's budget for this error is spent (from ``exc``).
        """
        p = self.policy
        info = classify_db_error(exc)
        now = self._clock()
        self.attempts += 1
        self.last = info
        if self._failing_since is None:
            self._failing_since = now
        elapsed = now - self._failing_since
        wait = self._wait()
        if info.permanent and p.permanent_give_up_after is not None:
            if self._permanent_since is None:
                self._permanent_since = now
            left = self._permanent_since + p.permanent_give_up_after - now
            if left <= 0:
                raise RetryGaveUp(
                    info, attempts=self.attempts, elapsed=elapsed, permanent=True
                ) from exc
            wait = min(wait, left)
        elif not info.permanent:
            self._permanent_since = None
        if p.give_up_after is not None:
            left = self._failing_since + p.give_up_after - now
            if left <= 0:
                raise RetryGaveUp(
                    info, attempts=self.attempts, elapsed=elapsed, permanent=False
                ) from exc
            wait = min(wait, left)  # one last attempt at the deadline
        return max(wait, MIN_WAIT_S)

    def _wait(self) -> float:
        p = self.policy
        exponent = min(self.attempts - 1, 64)
        full = min(p.maximum, p.first * p.factor**exponent)
        return full * (1.0 - p.jitter * self._rng())
