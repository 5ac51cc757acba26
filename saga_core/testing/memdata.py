"""The data of the in-memory store: saga rows and worker rows as plain dicts, the clock they
are kept by, and :func:`apply_update`, the one place a ``RowUpdate`` becomes new column values
(what ``SqlSagaStore._values`` does in SQL)."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from saga_core import history as h
from saga_core.machine import ACTIVE_STATUSES, SagaStatus
from saga_core.rows import CLAIMABLE_STATUSES, SUSPECT_MIN_RECOVERIES
from saga_core.store.base import DeadlineChange, LeaseChange, RowUpdate, SagaRow

__all__ = [
    "ACTIVE",
    "SEQ",
    "Clock",
    "MemoryDatabase",
    "StoreCrashed",
    "apply_update",
    "is_due",
    "is_suspect",
    "json_copy",
    "new_row",
    "to_saga_row",
    "wall_clock",
]

Clock = Callable[[], datetime]
"""The database clock: an aware UTC datetime."""

ACTIVE = frozenset(s.value for s in ACTIVE_STATUSES)
_STATUSES = frozenset(s.value for s in SagaStatus)
_JSON_COLUMNS = ("steps_state", "context", "step_history", "inbox")
_REQUIRED = (
    "saga_name",
    "aggregation_id",
    "status",
    "steps_state",
    "step_execution_token",
    "context",
    "step_history",
    "definition_fingerprint",
)
_DEFAULTS: dict[str, Any] = {
    "phase": "execute",
    "current_step_index": 0,
    "lease_token": None,
    "inbox": None,
    "lease_owner": None,
    "retry_counter": 0,
    "takeover_count": 0,
    "recovery_count": 0,
    "last_error": None,
    "definition_version": 1,
    "trace_id": None,
    "idempotency_key": None,
    "finished_at": None,
}
SEQ = "_seq"
"""The order rows were inserted in: where SQL leaves the order of equal keys open, the
in-memory store takes the older row first, so that every run is the same."""
COLUMNS = frozenset({*_REQUIRED, *_DEFAULTS, "id", "deadline_at", "created_at", "updated_at"})


class StoreCrashed(Exception):
    """Raised by every call of a store whose process was made to crash
    (``MemorySagaStore.crash()``): nothing it sends arrives."""


def wall_clock() -> datetime:
    return datetime.now(UTC)


def json_copy(value: Any) -> Any:
    """``value`` as a JSON column would hand it back (and sharing nothing with the caller)."""
    if value is None:
        return None
    return json.loads(json.dumps(value, default=str))


class MemoryDatabase:
    """What several stores (several "processes") share: the saga tables by name, the worker
    registry, the clock, and the lock that makes each store call one transaction."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or wall_clock
        self.tables: dict[str, dict[uuid.UUID, dict[str, Any]]] = {}
        self.workers: dict[str, dict[str, Any]] = {}
        self._seq = itertools.count(1)
        self.lock = asyncio.Lock()
        """Held for the length of every store call: calls never interleave (a transactional
        step's commit holds it across its session's commit)."""

    def next_seq(self) -> int:
        return next(self._seq)

    def now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"the store's clock must give aware datetimes, got {now!r}")
        return now.astimezone(UTC)


def new_row(values: dict[str, Any], now: datetime, due_in: timedelta | None) -> dict[str, Any]:
    """A complete row from an insert's ``values`` (what the columns' defaults and constraints
    make of them in SQL). Raises ValueError for a row SQL would refuse."""
    unknown = sorted(set(values) - COLUMNS)
    if unknown:
        raise ValueError(f"no such column(s) in a saga table: {unknown}")
    missing = [c for c in _REQUIRED if values.get(c) is None]
    if missing:
        raise ValueError(f"saga row without {missing} (NOT NULL)")
    if values["status"] not in _STATUSES:
        raise ValueError(f"status {values['status']!r} is not a saga status (CHECK)")
    row: dict[str, Any] = {
        **_DEFAULTS,
        "id": uuid.uuid4(),
        "deadline_at": now if due_in is None else now + due_in,
        "created_at": now,
        "updated_at": now,
        **values,
    }
    for name in _JSON_COLUMNS:
        row[name] = json_copy(row[name])
    for name in ("deadline_at", "created_at", "updated_at", "finished_at"):
        at = row[name]
        if at is not None:
            row[name] = _aware(at)
    return row


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def apply_update(row: dict[str, Any], upd: RowUpdate, now: datetime, lease: timedelta) -> None:
    """Write ``upd`` into ``row`` at ``now`` (the store's lease length: ``lease``). Every
    value is computed from the row as it was, as in one SQL UPDATE."""
    if upd.status is not None and upd.status not in _STATUSES:
        raise ValueError(f"status {upd.status!r} is not a saga status (CHECK)")
    old = dict(row)
    row["updated_at"] = now
    for name in ("status", "phase", "current_step_index", "retry_counter"):
        value = getattr(upd, name)
        if value is not None:
            row[name] = value
    for name in ("steps_state", "context"):
        value = getattr(upd, name)
        if value is not None:
            row[name] = json_copy(value)
    if upd.steps_state is not None:
        row["recovery_count"] = 0  # an outcome was recorded (or an operator acted)
    if upd.last_error is not None or upd.set_last_error:
        row["last_error"] = None if upd.last_error is None else h.storable(upd.last_error)
    if upd.history:
        row["step_history"] = [*old["step_history"], *json_copy(upd.history)]
    if upd.deadline is DeadlineChange.CLEAR:
        row["deadline_at"] = None
    elif upd.deadline is DeadlineChange.AFTER:
        row["deadline_at"] = now + upd.delay
    elif upd.deadline is DeadlineChange.LEASE:
        row["deadline_at"] = now + lease
    elif upd.deadline is DeadlineChange.HOLD and upd.lease is LeaseChange.KEEP:
        deadline = old["deadline_at"]
        if old["lease_owner"] is not None and deadline is not None and deadline < now + lease / 2:
            row["deadline_at"] = now + lease
    if upd.lease is LeaseChange.RELEASE:
        row["lease_owner"] = None
    if upd.finished:
        row["finished_at"] = now
    if upd.step_token is not None:
        row["step_execution_token"] = upd.step_token
    if upd.new_lease_token is not None:
        row["lease_token"] = upd.new_lease_token
    if upd.set_inbox:
        row["inbox"] = json_copy(upd.inbox) if upd.inbox else None


def to_saga_row(row: dict[str, Any], *, with_history: bool = True) -> SagaRow:
    """The record of ``row``, sharing nothing with it."""
    values = {k: json_copy(v) if k in _JSON_COLUMNS else v for k, v in row.items()}
    if not with_history:
        values["step_history"] = None
    return SagaRow.from_mapping(values)


def is_due(row: dict[str, Any], now: datetime) -> bool:
    """Claimable now: a due time (or an expired lease) that has passed."""
    deadline = row["deadline_at"]
    return row["status"] in CLAIMABLE_STATUSES and deadline is not None and deadline <= now


def is_suspect(row: dict[str, Any]) -> bool:
    return row["lease_owner"] is not None and row["recovery_count"] >= SUSPECT_MIN_RECOVERIES
