"""Retry policies for steps and compensations.

``max_attempts`` counts every execution, the first included: ``max_attempts=3`` is one try
and at most two retries. ``next_delay(failures)`` answers the wait after the ``failures``-th
failed execution, or ``None`` once no attempt is left.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

__all__ = [
    "MAX_DELAY",
    "ExponentialRetry",
    "FixedRetry",
    "NoRetry",
    "RetryPolicy",
    "default_compensation_policy",
    "jitter_random",
]

MAX_DELAY = timedelta(days=36500)
"""The longest retry delay or event-wait timeout accepted (100 years): a due time further
away cannot be computed or stored by every store (Python dates end in year 9999)."""

jitter_random: ContextVar[random.Random | None] = ContextVar("saga_jitter_random", default=None)
"""Where retry jitter comes from in the current context: ``None`` (the ``random`` module's
shared generator) unless set; ``saga_core.testing`` sets a seeded one for its runs."""


def _as_timedelta(value: timedelta | float | int, name: str) -> timedelta:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a timedelta or a number of seconds, not bool")
    if isinstance(value, timedelta):
        delay = value
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
        if value > MAX_DELAY.total_seconds():
            raise ValueError(f"{name} must be at most {MAX_DELAY.days} days, got {value!r} s")
        delay = timedelta(seconds=value)
    else:
        raise TypeError(f"{name} must be a timedelta or a number of seconds, got {value!r}")
    if delay < timedelta(0):
        raise ValueError(f"{name} must not be negative, got {delay}")
    if delay > MAX_DELAY:
        raise ValueError(f"{name} must be at most {MAX_DELAY.days} days, got {delay}")
    return delay


def _check_attempts(max_attempts: int) -> int:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise TypeError(f"max_attempts must be an int, got {max_attempts!r}")
    if max_attempts < 1:
        raise ValueError(
            f"max_attempts must be at least 1 (it counts the first try), got {max_attempts}"
        )
    return max_attempts


class RetryPolicy(ABC):
    """Decides whether, and after how long, a failed execution runs again."""

    max_attempts: int

    @abstractmethod
    def next_delay(self, failures: int) -> timedelta | None:
        """Wait before the next execution after ``failures`` failed ones, or ``None`` when
        the attempts are exhausted (``failures >= max_attempts``)."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, part of the definition fingerprint."""
        return {"policy": type(self).__name__, **{k: str(v) for k, v in vars(self).items()}}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(
            (type(self).__name__, tuple(sorted((k, str(v)) for k, v in vars(self).items())))
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class NoRetry(RetryPolicy):
    """One execution only (the default for steps)."""

    def __init__(self) -> None:
        self.max_attempts = 1

    def next_delay(self, failures: int) -> timedelta | None:
        return None


class FixedRetry(RetryPolicy):
    """Up to ``max_attempts`` executions, ``delay`` apart."""

    def __init__(self, max_attempts: int, delay: timedelta | float = timedelta(0)) -> None:
        self.max_attempts = _check_attempts(max_attempts)
        self.delay = _as_timedelta(delay, "delay")

    def next_delay(self, failures: int) -> timedelta | None:
        if failures >= self.max_attempts:
            return None
        return self.delay


class ExponentialRetry(RetryPolicy):
    """Up to ``max_attempts`` executions; the wait before retry n is
    ``base_delay * multiplier**(n-1)``, capped by ``max_delay``. With ``jitter`` (the default)
    the actual wait is uniform in ``[0, delay]`` ("full jitter")."""

    def __init__(
        self,
        max_attempts: int,
        base_delay: timedelta | float,
        multiplier: float = 2.0,
        max_delay: timedelta | float | None = None,
        jitter: bool = True,
    ) -> None:
        self.max_attempts = _check_attempts(max_attempts)
        self.base_delay = _as_timedelta(base_delay, "base_delay")
        if isinstance(multiplier, bool) or not isinstance(multiplier, int | float):
            raise TypeError(f"multiplier must be a number, got {multiplier!r}")
        if not math.isfinite(multiplier) or multiplier < 1:
            raise ValueError(f"multiplier must be a finite number >= 1, got {multiplier}")
        self.multiplier = float(multiplier)
        self.max_delay = None if max_delay is None else _as_timedelta(max_delay, "max_delay")
        self.jitter = bool(jitter)

    def base_delay_for(self, failures: int) -> timedelta:
        """The wait before retry ``failures`` without jitter."""
        seconds = self.base_delay.total_seconds()
        if seconds > 0:  # a zero base stays zero however large the exponent
            try:
                seconds *= self.multiplier ** (failures - 1)
            except OverflowError:
                seconds = float("inf")
        if self.max_delay is not None:
            seconds = min(seconds, self.max_delay.total_seconds())
        # timedelta cannot hold more than ~2.7 million years; cap far below it.
        seconds = min(seconds, 10 * 365 * 86400)
        return timedelta(seconds=seconds)

    def next_delay(self, failures: int) -> timedelta | None:
        if failures >= self.max_attempts:
            return None
        delay = self.base_delay_for(max(failures, 1))
        if self.jitter:
            rng = jitter_random.get()
            uniform = random.uniform if rng is None else rng.uniform
            return timedelta(seconds=uniform(0, delay.total_seconds()))
        return delay


def default_compensation_policy() -> RetryPolicy:
    """Compensations must be tried hard: 5 executions with exponential backoff from 1 s up
    to 60 s between tries. A compensation that exhausts it leaves the saga FAILED."""
    return ExponentialRetry(
        max_attempts=5, base_delay=timedelta(seconds=1), max_delay=timedelta(seconds=60)
    )
