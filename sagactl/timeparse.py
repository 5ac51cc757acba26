"""Time arguments: durations (``30s``, ``15m``, ``2h``, ``7d``, ``1h30m``) and ISO-8601
timestamps (a timestamp without a zone is taken as UTC)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["TimeArgError", "parse_duration", "parse_when", "resolve_when"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = timedelta(days=36500)
"""The longest duration accepted (100 years): anything longer is a typo, and far longer
ones overflow the calendar."""
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


class TimeArgError(ValueError):
    """A time argument could not be understood."""


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``2h``, ``7d``, ``1w``, or combinations such as ``1h30m``."""
    raw = text.strip().lower()
    if not raw or not re.fullmatch(r"(?:\d+(?:\.\d+)?[smhdw])+", raw):
        raise TimeArgError(
            f"{text!r} is not a duration; use a number and a unit: 30s, 15m, 2h, 7d (or 1h30m)"
        )
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(raw))
    if not seconds <= MAX_DURATION.total_seconds():  # also inf from 1e400-long digits
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise TimeArgError(
            f"{shown!r} is too long a duration: at most {MAX_DURATION.days}d (100 years)"
        )
    return timedelta(seconds=seconds)


def parse_when(text: str) -> timedelta | datetime:
    """A duration (meaning *that long ago*) or an ISO-8601 timestamp (UTC unless it says)."""
    raw = text.strip()
    if re.fullmatch(r"(?:\d+(?:\.\d+)?[smhdwSMHDW])+", raw):
        return parse_duration(raw)
    try:
        when = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise TimeArgError(
            f"{text!r} is neither a duration (30s, 15m, 2h, 7d) nor an ISO-8601 timestamp "
            "(2024-05-01, 2024-05-01T12:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def resolve_when(value: timedelta | datetime | None, now: datetime) -> datetime | None:
    """The instant ``value`` names, with durations counted back from ``now``."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        try:
            return now - value
        except OverflowError:
            raise TimeArgError(f"{value} before {now} is before year 1") from None
    return value
