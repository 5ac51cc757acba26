"""Tracebacks in ``show``: the history entries of failed attempts (and of runs stopped by an
unexpected error) carry one (``traceback``, bounded by saga_core). The page shows the
latest in full below the timeline and folds the older ones into a one-line note on their
timeline row; ``--tracebacks`` shows them all. ``-o json`` has them as stored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import RenderableType
from rich.padding import Padding
from rich.text import Text

from sagactl.fmt import clean, lit

__all__ = ["expanded", "traceback_blocks", "traceback_note"]

FLAG = "--tracebacks"


def _text(e: Any) -> str | None:
    if not isinstance(e, dict):
        return None
    value = e.get("traceback")
    return value if isinstance(value, str) and value else None


def _lines(text: str) -> int:
    return text.count("\n") + 1


def expanded(history: Sequence[dict[str, Any]], every: bool) -> frozenset[int]:
    """Indexes (0-based) of the entries whose traceback is shown in full: the latest one,
    or every one (``every``)."""
    found = [i for i, e in enumerate(history) if _text(e) is not None]
    if every:
        return frozenset(found)
    return frozenset(found[-1:])


def traceback_note(e: dict[str, Any], shown: bool) -> Text | None:
    """The note a timeline row with a traceback gets: where to find it."""
    text = _text(e)
    if text is None:
        return None
    n = _lines(text)
    where = "below" if shown else f"{FLAG} to show"
    return Text(f"traceback: {n} line{'' if n == 1 else 's'}, {where}", style="dim")


def _title(number: int, e: dict[str, Any]) -> Text:
    title = Text(f"traceback of #{number}", style="bold")
    parts = [str(e.get("phase") or "-"), str(e.get("step_id") or "-")]
    if e.get("attempt"):
        parts.append(f"attempt {e['attempt']}")
    parts.append(str(e.get("status") or ""))
    title.append(" · " + clean(" ".join(p for p in parts if p)))
    return title


def traceback_blocks(
    history: Sequence[dict[str, Any]], shown: frozenset[int], *, start: int = 0
) -> list[RenderableType]:
    """The tracebacks of the entries ``shown`` (0-based indexes into the whole history; the
    entries given begin at index ``start``), oldest first, each under a title that names
    its timeline row."""
    out: list[RenderableType] = []
    for i, e in enumerate(history, start):
        text = _text(e)
        if i not in shown or text is None:
            continue
        out.append(_title(i + 1, e))
        out.append(Padding(lit(text), (0, 0, 0, 2)))
    return out
