"""Small text formatters for people: ages, durations, short ids, status colours, and
``clean``/``lit`` for every piece of stored text shown on a terminal."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from rich.text import Text

from saga_core import SagaStatus
from sagactl.safe import clean

__all__ = [
    "STATUS_STYLE",
    "age",
    "clean",
    "clock",
    "duration",
    "lit",
    "relative",
    "short_id",
    "shorten",
    "status_text",
]

STATUS_STYLE: dict[str, str] = {
    SagaStatus.RUNNING: "cyan",
    SagaStatus.SUSPENDED: "yellow",
    SagaStatus.COMPENSATING: "magenta",
    SagaStatus.COMPLETED: "green",
    SagaStatus.COMPENSATED: "blue",
    SagaStatus.FAILED: "bold red",
    SagaStatus.ABORTED: "dim",
}

OUTCOME_STYLE: dict[str, str] = {
    "SUCCESS": "green",
    "ERROR": "red",
    "TIMEOUT": "red",
    "INTERRUPTED": "yellow",
    "RECEIVED": "cyan",
    "WAITING": "cyan",
    "REFUSED": "yellow",
    "REFUSALS_UNRECORDED": "yellow",
    "RETRY": "bold cyan",
    "SKIP": "bold yellow",
    "COMPENSATE": "bold magenta",
    "ABORT": "bold red",
    "NOTHING_TO_COMPENSATE": "dim",
    "NOT_COMPENSATED": "yellow",
    "DEFINITION_CHANGED": "yellow",
    "DEFINITION_MISMATCH": "bold red",
    "QUARANTINED": "bold red",
}


def lit(value: object, style: str = "") -> Text:
    """``value`` as literal text: no markup, no emoji codes, no control characters."""
    return Text(clean(value), style=style)


def status_text(status: str) -> Text:
    return lit(status, STATUS_STYLE.get(str(status), ""))


def outcome_text(outcome: str) -> Text:
    return lit(outcome, OUTCOME_STYLE.get(outcome, ""))


def short_id(value: uuid.UUID | str) -> str:
    return str(value)[:8]


def shorten(text: str | None, width: int = 60) -> str:
    """``text`` on one line (whitespace runs become one space), made safe (``clean``) and
    cut to ``width`` characters with an ellipsis."""
    if not text:
        return ""
    one_line = clean(" ".join(str(text).split()))
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def duration(delta: timedelta | float) -> str:
    """``450ms``, ``12s``, ``3m05s``, ``2h10m``, ``3d4h``."""
    seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1:
        return f"{sign}{s * 1000:.0f}ms"
    if s < 60:
        return f"{sign}{s:.0f}s" if s >= 10 else f"{sign}{s:.1f}s"
    if s < 3600:
        return f"{sign}{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{sign}{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{sign}{int(s // 86400)}d{int(s % 86400 // 3600)}h"


def age(then: datetime | None, now: datetime) -> str:
    """How long ago ``then`` was (``-`` for none)."""
    if then is None:
        return "-"
    return duration(now - then)


def relative(then: datetime | None, now: datetime) -> str:
    """``in 5m00s`` or ``3s ago``."""
    if then is None:
        return "-"
    delta = then - now
    if delta.total_seconds() >= 0:
        return f"in {duration(delta)}"
    return f"{duration(-delta)} ago"


def clock(value: datetime | str | None) -> str:
    """A UTC time as ``2024-05-01 12:00:03Z``."""
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        when = value
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"
