"""Tracebacks as history keeps them: the ``traceback`` of a failed attempt (and of a run
stopped by an unexpected error), bounded and storable.

The text is Python's own traceback (the whole chain: causes and contexts, exception
groups), with three changes:

- frames of saga_core and asyncio between the user's frames are folded into one line
  (``[4 frames in saga_core]``): the step's own frames are what an operator reads; the
  innermost frame, where the exception was raised, is always kept;
- the lines of carets Python 3.11+ draws under a frame's source line are left out;
- an exception's message (with its notes) longer than :data:`MAX_MESSAGE_CHARS` is cut,
  so that a huge one does not push the frames out; so is a line longer than
  :data:`MAX_LINE_CHARS` (a minified source line);
- of a traceback longer than :data:`MAX_TRACEBACK_BYTES` (UTF-8), the end is kept (the
  innermost frames and the exception itself), cut at a line, under a line saying so.

No local variables are captured: only file names, line numbers, function names and source
lines. Text no store can keep (NUL, lone surrogates) is escaped (``history.storable``).
"""

from __future__ import annotations

import asyncio
import os
import re
import traceback
from collections.abc import Iterator
from types import TracebackType

from saga_core.history import storable

__all__ = [
    "MAX_LINE_CHARS",
    "MAX_MESSAGE_CHARS",
    "MAX_TRACEBACK_BYTES",
    "timeout_traceback",
    "traceback_text",
]

MAX_TRACEBACK_BYTES = 8192
MAX_MESSAGE_CHARS = 2000
MAX_LINE_CHARS = 2500
"""Longer than a cut message's line (which keeps its own count of what was cut)."""

_INTERNAL = (
    ("saga_core", os.path.dirname(os.path.abspath(__file__)) + os.sep),
    ("asyncio", os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep),
)


def _package(filename: str) -> str | None:
    for name, root in _INTERNAL:
        if filename.startswith(root):
            return name
    return None


_CARETS = re.compile(r"^[ \t]*[\^~]+[ \t]*\n", re.M)


class _Folded(traceback.StackSummary):
    """A stack whose marker frames print as one ``[N frames in ...]`` line, and whose frames
    print without the carets under their source line."""

    notes: dict[int, str]

    def format_frame_summary(self, frame_summary: traceback.FrameSummary) -> str:
        note = self.notes.get(id(frame_summary))
        if note is not None:
            return note
        return _CARETS.sub("", super().format_frame_summary(frame_summary))


def _fold(stack: traceback.StackSummary, fold: bool) -> traceback.StackSummary:
    frames = list(stack)
    out: list[traceback.FrameSummary] = []
    notes: dict[int, str] = {}
    run: list[str] = []

    def flush() -> None:
        if not run:
            return
        names = ", ".join(dict.fromkeys(run))
        marker = traceback.FrameSummary(f"<{names}>", None, "", lookup_line=False)
        plural = "" if len(run) == 1 else "s"
        notes[id(marker)] = f"  [{len(run)} frame{plural} in {names}]\n"
        out.append(marker)
        run.clear()

    for i, frame in enumerate(frames):
        package = _package(frame.filename) if fold else None
        if package is not None and i < len(frames) - 1:
            run.append(package)
            continue
        flush()
        out.append(frame)
    flush()
    folded = _Folded(out)
    folded.notes = notes
    return folded


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


def _bounded_message(te: traceback.TracebackException) -> None:
    """``te``'s message lines cut to :data:`MAX_MESSAGE_CHARS` (``format`` calls
    ``format_exception_only`` of each exception of the chain; the instance's own wins)."""
    whole = te.format_exception_only

    def bounded() -> Iterator[str]:
        text = "".join(whole())
        yield _cut(text.rstrip("\n"), MAX_MESSAGE_CHARS) + "\n"

    setattr(te, "format_exception_only", bounded)  # noqa: B010 - an instance's method


def _walk(te: traceback.TracebackException, fold: bool) -> None:
    seen: set[int] = set()
    todo = [te]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        _bounded_message(cur)
        cur.stack = _fold(cur.stack, fold)
        todo.extend(x for x in (cur.__cause__, cur.__context__) if x is not None)
        todo.extend(getattr(cur, "exceptions", None) or [])


def _bounded(text: str, limit: int) -> str:
    lines = [_cut(line, MAX_LINE_CHARS) for line in storable(text).rstrip("\n").split("\n")]
    text = "\n".join(lines)
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    tail = data[len(data) - (limit - 64) :]  # room for the line saying what was cut
    newline = tail.find(b"\n")
    if 0 <= newline < len(tail) - 1:
        tail = tail[newline + 1 :]
    kept = tail.decode("utf-8", "ignore")
    cut = len(lines) - (kept.count("\n") + 1)
    return f"[traceback cut: its first {cut} lines are not kept]\n{kept}"


def traceback_text(
    exc: BaseException, *, fold: bool = True, limit: int = MAX_TRACEBACK_BYTES
) -> str:
    """The traceback of ``exc`` as history keeps it (see the module's docstring); ``fold``:
    fold saga_core's and asyncio's frames (off for an error of saga_core itself)."""
    try:
        te = traceback.TracebackException.from_exception(exc)
        _walk(te, fold)
        text = "".join(te.format())
    except Exception as err:  # a broken __str__ or source file must not lose the failure
        text = f"<no traceback: {type(err).__name__} while formatting it>"
    return _bounded(text, limit)


def timeout_traceback(cancelled: BaseException | None, error: str) -> str:
    """The traceback of a step stopped by its timeout: where its code was when the timeout
    cancelled it (the stack of that ``CancelledError``), then the ``error`` recorded."""
    tb: TracebackType | None = None if cancelled is None else cancelled.__traceback__
    if cancelled is None or tb is None:
        return _bounded(
            f"{error}\n(no stack: the step's code had not started)", MAX_TRACEBACK_BYTES
        )
    where = traceback_text(cancelled, limit=MAX_TRACEBACK_BYTES - 200)
    return _bounded(
        f"{where}\n{error} (the step was cancelled here by its timeout)", MAX_TRACEBACK_BYTES
    )
