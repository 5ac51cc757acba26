"""``SagaReader``: list and count the sagas of one table, fast to start.

A console or a dashboard that lists sagas once and exits spends most of its time importing
SQLAlchemy (about 0.3 s). ``SagaReader`` reads through the bare driver instead (asyncpg;
SQLite through the standard library) and answers ``list_sagas``, ``count_sagas`` and
``db_now`` exactly as :class:`~saga_core.SagaAdmin` does. Everything else — ``get``, history,
actions — is ``SagaAdmin``'s.
"""

from __future__ import annotations

from datetime import datetime
from types import TracebackType

from saga_core.filters import ListingReads, SagaListing
from saga_core.store.lite import LiteReads, lite_enabled, open_lite

__all__ = ["SagaReader"]


class SagaReader(SagaListing):
    """Read-only listing of one saga table over one connection. Open with :meth:`open`;
    close with :meth:`close` or ``async with``. ``list_sagas`` and ``count_sagas`` take the
    arguments of ``SagaAdmin``'s and answer the same."""

    def __init__(self, reads: LiteReads) -> None:
        self._reads = reads

    @classmethod
    async def open(
        cls, database_url: str, table: str = "saga_state", *, timeout: float = 10.0
    ) -> SagaReader | None:
        """A reader of ``table``, or ``None`` where ``SagaAdmin`` must be used instead: a
        URL with options (``?ssl=...``), a unix socket, an in-memory or missing SQLite
        file, a table name that needs quoting, or ``SAGA_LITE_READS=0`` in the environment.

        Raises the driver's error when the database cannot be reached (``timeout`` bounds
        the connection attempt, in seconds)."""
        if not lite_enabled():
            return None
        reads = await open_lite(database_url, table, timeout=timeout)
        return None if reads is None else cls(reads)

    async def close(self) -> None:
        await self._reads.close()

    async def __aenter__(self) -> SagaReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _listing_reads(self) -> ListingReads:
        return self._reads

    async def db_now(self) -> datetime:
        """The database clock (SQLite: this process's clock, as the SQLite store uses)."""
        return await self._reads.db_now()
