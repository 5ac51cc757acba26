"""Listing reads of a saga table through the bare driver — asyncpg, or the standard
library's ``sqlite3`` — without SQLAlchemy, whose import alone takes about 0.3 s: longer
than a console command should (``sagactl list``).

It answers as the SQL store's reads do (``saga_list``, ``saga_count``, ``db_now``), on the
columns of ``SagaStateMixin`` as SQLAlchemy stores them (SQLite: ids as 32 hex digits,
timestamps as naive UTC text, JSON as text); a test holds both to the same rows. The rows it
returns carry neither context, inbox nor history: a listing shows none of them.

:func:`open_lite` declines (``None``) whatever it does not handle the same way — a URL
with options, an SQLite file that does not exist, a table name that needs quoting — and the
caller goes through the SQL store instead.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from saga_core.dburl import simple_url
from saga_core.store.base import SagaFilter, SagaRow

__all__ = ["LIST_COLUMNS", "LiteReads", "lite_enabled", "open_lite"]

LIST_COLUMNS: tuple[str, ...] = (
    "id",
    "saga_name",
    "aggregation_id",
    "status",
    "phase",
    "current_step_index",
    "steps_state",
    "step_execution_token",
    "lease_token",
    "deadline_at",
    "lease_owner",
    "retry_counter",
    "takeover_count",
    "recovery_count",
    "last_error",
    "definition_fingerprint",
    "definition_version",
    "trace_id",
    "idempotency_key",
    "created_at",
    "updated_at",
    "finished_at",
)
"""Every column of a saga table but ``context``, ``inbox`` and ``step_history``."""

_UUIDS = ("id", "step_execution_token", "lease_token")
_TIMES = ("deadline_at", "created_at", "updated_at", "finished_at")
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class LiteReads(ABC):
    """Listing reads of one saga table over one connection (``close`` when done)."""

    def __init__(self, table: str) -> None:
        self.table = table
        # Quoted, and every column qualified, as SQLAlchemy writes them: a table named by a
        # reserved word (``user``, ``order``) is read as a table, and an outdated table's
        # error names the column as ``table.column``. ``table`` is a plain lower-case name
        # (see open_lite), which quoting does not change.
        self._from = f'"{table}"'

    @abstractmethod
    def _mark(self, n: int) -> str:
        """The placeholder of the ``n``-th parameter (from 1)."""

    @abstractmethod
    def _param(self, value: Any) -> Any:
        """A uuid or datetime parameter as the column stores it."""

    @abstractmethod
    async def _fetch(self, sql: str, params: list[Any]) -> list[dict[str, Any]]: ...

    @abstractmethod
    def _row(self, raw: dict[str, Any]) -> SagaRow: ...

    @abstractmethod
    async def db_now(self) -> datetime: ...

    @abstractmethod
    async def close(self) -> None: ...

    def _col(self, name: str) -> str:
        return f'{self._from}."{name}"'

    def _where(self, flt: SagaFilter, params: list[Any]) -> str:
        conds: list[str] = []

        def one(value: Any) -> str:
            params.append(self._param(value))
            return self._mark(len(params))

        def among(column: str, values: Sequence[Any]) -> None:
            conds.append(f"{self._col(column)} IN ({', '.join(one(v) for v in values)})")

        if flt.statuses:
            among("status", flt.statuses)
        if flt.saga_names:
            among("saga_name", flt.saga_names)
        if flt.aggregation_id is not None:
            conds.append(f"{self._col('aggregation_id')} = {one(flt.aggregation_id)}")
        if flt.created_after is not None:
            conds.append(f"{self._col('created_at')} >= {one(flt.created_after)}")
        if flt.created_before is not None:
            conds.append(f"{self._col('created_at')} < {one(flt.created_before)}")
        if flt.updated_after is not None:
            conds.append(f"{self._col('updated_at')} >= {one(flt.updated_after)}")
        if flt.ids is not None:
            # An empty list matches nothing (as SQLAlchemy's empty IN does).
            if flt.ids:
                among("id", flt.ids)
            else:
                conds.append("1 = 0")
        if flt.finished_before is not None:
            finished = self._col("finished_at")
            conds.append(f"{finished} IS NOT NULL AND {finished} < {one(flt.finished_before)}")
        if flt.definition_version is not None:
            conds.append(f"{self._col('definition_version')} = {one(flt.definition_version)}")
        return f" WHERE {' AND '.join(conds)}" if conds else ""

    async def saga_list(
        self, flt: SagaFilter, *, limit: int = 100, offset: int = 0, oldest_first: bool = False
    ) -> list[SagaRow]:
        params: list[Any] = []
        order = "ASC" if oldest_first else "DESC"
        sql = (
            f"SELECT {', '.join(self._col(c) for c in LIST_COLUMNS)}"
            f" FROM {self._from}{self._where(flt, params)}"
            f" ORDER BY {self._col('created_at')} {order}, {self._col('id')} {order}"
            f" LIMIT {self._mark(len(params) + 1)} OFFSET {self._mark(len(params) + 2)}"
        )
        rows = await self._fetch(sql, [*params, int(limit), int(offset)])
        return [self._row(r) for r in rows]

    async def saga_count(self, flt: SagaFilter) -> int:
        params: list[Any] = []
        sql = f"SELECT count(*) AS n FROM {self._from}{self._where(flt, params)}"
        return int((await self._fetch(sql, params))[0]["n"])


def _row(
    raw: dict[str, Any], uid: Callable[[Any], uuid.UUID], when: Callable[[Any], datetime]
) -> SagaRow:
    values = dict(raw)
    for k in _UUIDS:
        if values[k] is not None:
            values[k] = uid(values[k])
    for k in _TIMES:
        if values[k] is not None:
            values[k] = when(values[k])
    steps = values["steps_state"]
    values["steps_state"] = json.loads(steps) if isinstance(steps, str | bytes) else steps
    return SagaRow(**values, context={})


class _PgReads(LiteReads):
    def __init__(self, table: str, conn: Any) -> None:
        super().__init__(table)
        self._conn = conn

    def _mark(self, n: int) -> str:
        return f"${n}"

    def _param(self, value: Any) -> Any:
        return value

    async def _fetch(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._conn.fetch(sql, *params)]

    def _row(self, raw: dict[str, Any]) -> SagaRow:
        return _row(raw, lambda v: uuid.UUID(bytes=v.bytes), lambda v: v.astimezone(UTC))

    async def db_now(self) -> datetime:
        now: datetime = await self._conn.fetchval("SELECT now()")
        return now.astimezone(UTC)

    async def close(self) -> None:
        await self._conn.close()


def _sqlite_time(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class _SqliteReads(LiteReads):
    def __init__(self, table: str, conn: Any) -> None:
        super().__init__(table)
        self._conn = conn

    def _mark(self, n: int) -> str:
        return "?"

    def _param(self, value: Any) -> Any:
        if isinstance(value, uuid.UUID):
            return value.hex
        if isinstance(value, datetime):
            if value.tzinfo is not None:
                value = value.astimezone(UTC).replace(tzinfo=None)
            # As SQLAlchemy's SQLite DATETIME writes it: a four-digit year (strftime's %Y
            # does not pad years before 1000, and the text comparison would then go wrong).
            return value.isoformat(sep=" ", timespec="microseconds")
        return value

    async def _fetch(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        cur = self._conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def _row(self, raw: dict[str, Any]) -> SagaRow:
        return _row(raw, lambda v: uuid.UUID(hex=v), _sqlite_time)

    async def db_now(self) -> datetime:
        # The SQLite store's clock is this process's (see SqliteSagaStore._now).
        return datetime.now(UTC)

    async def close(self) -> None:
        self._conn.close()


async def open_lite(url: str, table: str, *, timeout: float = 10.0) -> LiteReads | None:
    """Listing reads of ``table`` at ``url`` through the bare driver, or ``None`` where the
    SQL store must answer instead (see the module docstring). Connection errors are raised
    as the driver raises them."""
    simple = simple_url(url)
    if simple is None or not _PLAIN_NAME.fullmatch(table):
        return None
    if simple.dialect == "sqlite":
        assert simple.path is not None
        return _open_sqlite(simple.path, table, timeout)
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(
        host=simple.host,
        port=simple.port,
        user=simple.user,
        # An empty password is no password (SQLAlchemy passes none): asyncpg then reads
        # PGPASSWORD or ~/.pgpass, which password="" would rule out.
        password=simple.password or None,
        database=simple.database,
        timeout=timeout,
        statement_cache_size=0,
    )
    return _PgReads(table, conn)


def _open_sqlite(file: str, table: str, timeout: float) -> LiteReads | None:
    path = Path(file)
    if not path.is_file():
        return None  # the SQL store says what is wrong (or creates the file if asked to)
    import sqlite3

    uri = f"{path.absolute().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
    return _SqliteReads(table, conn)


def lite_enabled() -> bool:
    """``SAGA_LITE_READS=0`` turns this path off (every read through SQLAlchemy)."""
    return os.environ.get("SAGA_LITE_READS", "1") != "0"
