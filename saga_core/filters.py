"""The listing calls ``list_sagas`` and ``count_sagas``, shared by ``SagaAdmin`` (through
the store) and ``SagaReader`` (through the bare driver), and the saga filter they build from
their keyword arguments. Plain Python: no SQLAlchemy."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from saga_core import machine as m
from saga_core.errors import SagaInputError
from saga_core.snapshot import SagaSnapshot
from saga_core.store.base import SagaFilter, SagaRow

__all__ = ["ListingReads", "SagaListing", "check_page", "saga_filter", "status_values"]


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


class ListingReads(Protocol):
    """What the listing calls read through: a store, or ``store.lite``'s reads."""

    async def saga_list(
        self, flt: SagaFilter, *, limit: int = 100, offset: int = 0, oldest_first: bool = False
    ) -> list[SagaRow]: ...

    async def saga_count(self, flt: SagaFilter) -> int: ...


class SagaListing:
    """``list_sagas`` and ``count_sagas`` over :meth:`_listing_reads`."""

    def _listing_reads(self) -> ListingReads:
        raise NotImplementedError

    async def list_sagas(
        self,
        *,
        status: m.SagaStatus | str | Sequence[m.SagaStatus | str] | None = None,
        saga_name: str | Sequence[str] | None = None,
        aggregation_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
        oldest_first: bool = False,
        definition_version: int | None = None,
    ) -> list[SagaSnapshot]:
        """Sagas matching every given filter, newest first; ``limit`` is honoured as given."""
        check_page(limit, offset)
        flt = saga_filter(
            status, saga_name, aggregation_id, created_after, created_before, definition_version
        )
        rows = await self._listing_reads().saga_list(
            flt, limit=limit, offset=offset, oldest_first=oldest_first
        )
        return [SagaSnapshot.from_row(r) for r in rows]

    async def count_sagas(
        self,
        *,
        status: m.SagaStatus | str | Sequence[m.SagaStatus | str] | None = None,
        saga_name: str | Sequence[str] | None = None,
        aggregation_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> int:
        """Sagas matching every given filter."""
        flt = saga_filter(status, saga_name, aggregation_id, created_after, created_before)
        return await self._listing_reads().saga_count(flt)
