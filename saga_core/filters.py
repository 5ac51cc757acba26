"""The saga filter of the listing calls (``SagaAdmin.list_sagas``/``count_sagas``,
``SagaReader``), built from their keyword arguments. Plain Python: no SQLAlchemy."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from saga_core import machine as m
from saga_core.errors import SagaInputError
from saga_core.store.base import SagaFilter

__all__ = ["check_page", "saga_filter", "status_values"]


def status_values(
    status: m.SagaStatus | str | Sequence[m.SagaStatus | str] | None,
) -> list[str] | None:
    """Status names, upper-cased and checked; ``None`` for no status filter."""
    if status is None:
        return None
    items = [status] if isinstance(status, str) else list(status)
    out: list[str] = []
    for s in items:
        try:
            out.append(m.SagaStatus(str(s).upper()).value)
        except ValueError:
            names = ", ".join(x.value for x in m.SagaStatus)
            raise SagaInputError(f"unknown status {s!r}; use one of {names}") from None
    return out


def saga_filter(
    status: Any = None,
    saga_name: str | Sequence[str] | None = None,
    aggregation_id: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    definition_version: int | None = None,
) -> SagaFilter:
    names = [saga_name] if isinstance(saga_name, str) else (list(saga_name) if saga_name else None)
    return SagaFilter(
        statuses=status_values(status),
        saga_names=names,
        aggregation_id=aggregation_id,
        created_after=created_after,
        created_before=created_before,
        definition_version=definition_version,
    )


def check_page(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise SagaInputError("limit and offset must not be negative")
