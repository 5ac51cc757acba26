"""History entries: the status names and one builder per kind of entry.

A saga's ``step_history`` is a list of JSON objects, oldest first. Every entry has ``at``
(ISO time), ``phase`` (``execute``, ``compensate``, ``event`` or ``admin``), ``step_id``,
``status`` and ``attempt``; the builders here add what each kind carries. Text that comes
from outside (error messages, reasons, actors) passes through :func:`storable` first: every
store must be able to keep it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ADMIN",
    "CANCELLED",
    "COMPENSATE",
    "CONSUMED",
    "DEFINITION_CHANGED",
    "DEFINITION_MISMATCH",
    "ERROR",
    "EVENT",
    "EXECUTE",
    "INTERRUPTED",
    "MAX_ERROR_CHARS",
    "NOTE_CHARS_IN_SUMMARY",
    "QUARANTINED",
    "RECEIVED",
    "REFUSALS_UNRECORDED",
    "REFUSED",
    "SUCCESS",
    "TIMEOUT",
    "UNUSED",
    "WAITING",
    "error_text",
    "now_iso",
    "storable",
]

# --- phases --------------------------------------------------------------------------------

EXECUTE = "execute"
COMPENSATE = "compensate"
EVENT = "event"
ADMIN = "admin"

# --- statuses ------------------------------------------------------------------------------

SUCCESS = "SUCCESS"
ERROR = "ERROR"
TIMEOUT = "TIMEOUT"
WAITING = "WAITING"
"""The step asked to wait for an event (not an attempt)."""
CANCELLED = "CANCELLED"
"""A parallel branch cancelled because a sibling failed for good (not an attempt)."""
INTERRUPTED = "INTERRUPTED"
"""The run stopped without an outcome for the step in flight (shutdown, drain, an error of
the worker's own); the step may run again, which is not a failed attempt."""
RECEIVED = "RECEIVED"
"""An event was accepted; ``queued`` when it waits in the inbox for its step."""
CONSUMED = "CONSUMED"
"""A queued event was handed to its step."""
UNUSED = "UNUSED"
"""A queued event whose step finished without waiting for it: dropped."""
REFUSED = "REFUSED"
"""A delivery was refused (a bounded summary of the event)."""
REFUSALS_UNRECORDED = "REFUSALS_UNRECORDED"
"""The one entry counting refusals beyond those recorded one by one."""
QUARANTINED = "QUARANTINED"
DEFINITION_CHANGED = "DEFINITION_CHANGED"
DEFINITION_MISMATCH = "DEFINITION_MISMATCH"
NOTHING_TO_COMPENSATE = "NOTHING_TO_COMPENSATE"
NOT_COMPENSATED = "NOT_COMPENSATED"

MAX_ERROR_CHARS = 4000
NOTE_CHARS_IN_SUMMARY = 200
"""Operator text kept in a refusal's summary."""
PREVIEW_CHARS = 120
"""Characters of an event's JSON kept in a refusal's summary."""


def now_iso() -> str:
    """Now, by this process's clock (entries of a run use the run's database clock)."""
    return datetime.now(UTC).isoformat()


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` with what no store can keep escaped: NUL (PostgreSQL text and JSONB refuse
    it) and lone surrogates (not UTF-8 at all; e.g. a file name decoded with
    ``surrogateescape``) become ``\\x00``/``\\udcff``-style escapes."""
    if not _UNSTORABLE.search(text):
        return text
    return _UNSTORABLE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if m.group() == "\x00" else f"\\u{ord(m.group()):04x}",
        text,
    )


def error_text(exc: BaseException) -> str:
    """``Type: message`` of an exception, storable and at most ``MAX_ERROR_CHARS`` long."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not lose the failure
        message = f"<{type(exc).__name__} whose str() failed>"
    return storable(f"{type(exc).__name__}: {message}")[:MAX_ERROR_CHARS]


def _short(text: str | None, limit: int = NOTE_CHARS_IN_SUMMARY) -> str | None:
    if text is None:
        return None
    text = storable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- attempts ------------------------------------------------------------------------------


def attempt(
    *, at: str, phase: str, step_id: str, step_class: str, attempt: int, worker: str
) -> dict[str, Any]:
    """The start of an entry for one execution (or compensation) of a step; the outcome
    (``status``, ``duration_ms``, input/output or error) is filled in when it ends. A failed
    attempt (``ERROR``, ``TIMEOUT``) whose code ran carries its ``traceback``
    (``tracebacks.traceback_text``); a wait for an event that timed out has none (no code
    ran)."""
    return {
        "at": at,
        "phase": phase,
        "step_id": step_id,
        "step_class": step_class,
        "attempt": attempt,
        "worker": worker,
    }


def interrupted(
    *,
    at: str,
    phase: str,
    step_id: str | None,
    worker: str,
    reason: str,
    traceback: str | None = None,
) -> dict[str, Any]:
    """A run that stopped without an outcome for its step; ``traceback``: that of the
    unexpected error that stopped it, if one did."""
    entry: dict[str, Any] = {
        "at": at,
        "phase": phase,
        "step_id": step_id,
        "status": INTERRUPTED,
        "attempt": 0,
        "worker": worker,
        "reason": storable(reason),
    }
    if traceback is not None:
        entry["traceback"] = storable(traceback)
    return entry


def rollback_note(step_id: str, status: str, reason: str) -> dict[str, Any]:
    """A step a rollback passes over (no ``at``: the transition's writer adds it)."""
    return {
        "phase": COMPENSATE,
        "step_id": step_id,
        "status": status,
        "attempt": 0,
        "reason": reason,
    }


# --- operators and the engine itself ---------------------------------------------------------


def admin(
    *,
    at: str,
    step_id: str | None,
    status: str,
    reason: str | None,
    worker: str | None = None,
    actor: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An operator's action (``actor`` set) or the engine's own decision about the saga
    (quarantine, definition checks: ``worker`` set)."""
    entry: dict[str, Any] = {
        "at": at,
        "phase": ADMIN,
        "step_id": step_id,
        "status": status,
        "attempt": 0,
    }
    if worker is not None:
        entry["worker"] = worker
    if actor is not None:
        entry["actor"] = storable(actor)
    entry["reason"] = None if reason is None else storable(reason)
    entry.update(extra)
    return entry


# --- events --------------------------------------------------------------------------------


def received(
    *,
    at: str,
    step_id: str | None,
    event: dict[str, Any] | None,
    event_id: str,
    event_name: str | None,
    queued: bool,
    actor: str | None,
    note: str | None,
) -> dict[str, Any]:
    """An accepted event. Consumed at once, the entry holds the event; kept in the inbox
    (``queued``), a bounded summary (its size and a short preview): a queued event may go
    unused, and a sender could otherwise grow the history with early events. Its
    ``CONSUMED`` entry holds it in full once a step takes it."""
    entry: dict[str, Any] = {
        "at": at,
        "phase": EVENT,
        "step_id": step_id,
        "status": RECEIVED,
        "attempt": 0,
    }
    if queued:
        entry["event_bytes"], entry["event_preview"] = event_size(event)
    else:
        entry["event"] = event
    entry["event_id"] = event_id
    if event_name is not None:
        entry["event_name"] = event_name
    if queued:
        entry["queued"] = True
    if actor is not None:
        entry["actor"] = actor
    if note is not None:
        entry["reason"] = note
    return entry


def consumed(
    *, at: str, step_id: str, event_id: str, event: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A queued event handed to its step (with the event, now that a step uses it)."""
    return {
        "at": at,
        "phase": EVENT,
        "step_id": step_id,
        "status": CONSUMED,
        "attempt": 0,
        "event_id": event_id,
        "event": event,
    }


def unused(*, at: str, step_id: str | None, event_id: str, reason: str) -> dict[str, Any]:
    return {
        "at": at,
        "phase": EVENT,
        "step_id": step_id,
        "status": UNUSED,
        "attempt": 0,
        "event_id": event_id,
        "reason": reason,
    }


def event_size(event: dict[str, Any] | None) -> tuple[int, str | None]:
    """(bytes of the event's JSON, a short preview of it)."""
    if event is None:
        return 0, None
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)
    size = len(text.encode("utf-8", "surrogatepass"))
    return size, _short(text, PREVIEW_CHARS)


def refused(
    *,
    at: str,
    step_id: str | None,
    reason: str,
    event: dict[str, Any] | None,
    event_name: str | None,
    actor: str | None,
    note: str | None,
) -> dict[str, Any]:
    """A refused delivery, as a bounded summary: never the whole event."""
    size, preview = event_size(event)
    entry: dict[str, Any] = {
        "at": at,
        "phase": EVENT,
        "step_id": step_id,
        "status": REFUSED,
        "attempt": 0,
        "reason": reason,
        "event_name": event_name,
        "event_bytes": size,
        "event_preview": preview,
    }
    if actor is not None:
        entry["actor"] = _short(actor)
    if note is not None:
        entry["note"] = _short(note)
    return entry


def refusals_counted(
    old: dict[str, Any] | None, refusal: dict[str, Any], kept: int
) -> dict[str, Any]:
    """The single entry counting refusals beyond the ``kept`` recorded ones: ``old`` (that
    entry so far, or None for the first) with ``refusal`` counted in."""
    if old is None:
        return {
            "at": refusal.get("at"),
            "phase": EVENT,
            "step_id": refusal.get("step_id"),
            "status": REFUSALS_UNRECORDED,
            "attempt": 0,
            "count": 1,
            "reason": f"over {kept} refused deliveries: later ones are only counted here",
            "last_at": refusal.get("at"),
            "last_reason": refusal.get("reason"),
        }
    return {
        **old,
        "count": int(old.get("count") or 0) + 1,
        "last_at": refusal.get("at"),
        "last_reason": refusal.get("reason"),
    }
