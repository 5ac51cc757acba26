"""Persistence model: the ``SagaStateMixin`` columns and the ready-made ``SagaState`` model.

A model that mixes in :class:`SagaStateMixin` gets every column, index and constraint from
``metadata.create_all`` (or Alembic autogenerate). Index and constraint names carry the table
name, and status is a plain string with a CHECK constraint (no shared PostgreSQL ENUM type),
so several saga tables coexist and drop cleanly.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

from saga_core.machine import ACTIVE_STATUSES, SagaStatus
from saga_core.rows import CLAIMABLE_SQL

__all__ = ["SagaBase", "SagaState", "SagaStateMixin", "SagaWorker", "UTCDateTime", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
NullableJSON = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
"""JSON whose Python ``None`` is SQL NULL (not the JSON value ``null``)."""

_ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATUSES))
_ALL_SQL = ", ".join(f"'{s.value}'" for s in SagaStatus)
# Rows a worker may have to claim one day: due, leased or retry-waiting. FAILED rows are
# excluded (they wait for an operator), so are finished ones: the due index stays as small as
# the live work however many finished sagas the table holds.
_CLAIMABLE_SQL = CLAIMABLE_SQL


class SagaStateMixin:
    """Columns, indexes and constraints of a saga table. Mix into a declarative model::

    class OrderSaga(SagaStateMixin, Base):
        __tablename__ = "order_saga"
    """

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    saga_name: Mapped[str] = mapped_column(String(200), nullable=False)
    aggregation_id: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    phase: Mapped[str] = mapped_column(String(16), nullable=False, default="execute")
    current_step_index: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    steps_state: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False)
    """Per-step state: status, attempts, compensation attempts (one object per step)."""
    step_execution_token: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    """The token of the step at the cursor (what ``current_step().token`` hands out; every
    step keeps its own in ``steps_state``)."""
    lease_token: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    """The fencing token of the lease: rotated by every claim and operator action; every
    write of a worker is conditional on it."""
    inbox: Mapped[list[dict[str, Any]] | None] = mapped_column(NullableJSON, nullable=True)
    """Events accepted while a worker held the saga, waiting for their step (NULL: none)."""
    context: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    """initial_data, step inputs and outputs, events."""
    step_history: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    """When the saga is next due, or when the lease of the worker holding it expires."""
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    retry_counter: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    takeover_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    """Claims that found an expired lease of another worker (crash recovery)."""
    recovery_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    """Consecutive takeovers of the current step: reset by every recorded step or compensation
    outcome and by operator actions. Above ``max_recoveries`` the saga is quarantined."""
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    definition_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    definition_version: Mapped[int] = mapped_column(
        Integer, nullable=False, default=1, server_default=text("1")
    )
    """The version of the saga's definition (``register(..., version=)``) it started under
    and runs with; 1 for sagas stored before versioning."""
    trace_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """Given to ``start(idempotency_key=...)``: a repeated start with the same key returns
    this saga instead of creating another (unique per table)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @declared_attr.directive
    @classmethod
    def __table_args__(cls) -> tuple[Any, ...]:
        table = cls.__tablename__  # type: ignore[attr-defined]
        return (
            Index(
                f"ix_{table}_due",
                "deadline_at",
                postgresql_where=text(_CLAIMABLE_SQL),
                sqlite_where=text(_CLAIMABLE_SQL),
            ),
            Index(
                f"ux_{table}_active_aggregation",
                "aggregation_id",
                unique=True,
                postgresql_where=text(f"status IN ({_ACTIVE_SQL})"),
                sqlite_where=text(f"status IN ({_ACTIVE_SQL})"),
            ),
            Index(f"ix_{table}_created", "created_at"),
            Index(
                f"ux_{table}_idempotency_key",
                "idempotency_key",
                unique=True,
                postgresql_where=text("idempotency_key IS NOT NULL"),
                sqlite_where=text("idempotency_key IS NOT NULL"),
            ),
            # Retention deletes finished sagas oldest first; only finished rows are in it, and
            # only the final checkpoint (which changes the status anyway) sets finished_at.
            Index(
                f"ix_{table}_finished",
                "finished_at",
                postgresql_where=text("finished_at IS NOT NULL"),
                sqlite_where=text("finished_at IS NOT NULL"),
            ),
            Index(f"ix_{table}_name_status", "saga_name", "status"),
            CheckConstraint(f"status IN ({_ALL_SQL})", name=f"ck_{table}_status"),
        )


class SagaBase(DeclarativeBase):
    """Declarative base of the library's own tables (``saga_state``, ``saga_workers``)."""


class SagaState(SagaStateMixin, SagaBase):
    """The ready-made saga model, on the table ``saga_state``."""

    __tablename__ = "saga_state"


class SagaWorker(SagaBase):
    """The worker registry: one row per ``sagad`` process (alive or not)."""

    __tablename__ = "saga_workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    version: Mapped[str] = mapped_column(String(50), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    in_flight: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    concurrency: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    saga_names: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    info: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    saga_versions: Mapped[dict[str, Any]] = mapped_column(
        JSONType, nullable=False, default=dict, server_default=text("'{}'")
    )
    """table -> saga name -> the definition versions this worker runs (empty for a worker
    from before versioning, which runs whatever version of its ``saga_names`` it claims)."""
