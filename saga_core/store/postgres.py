"""PostgreSQL (asyncpg) dialect of the SQL store: database clock, SKIP LOCKED claims,
row locks for operator actions, NOTIFY wake-ups, JSONB history appends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Interval, Select, Text, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.util import greenlet_spawn

from saga_core.errors import ActiveSagaAlreadyExistsError
from saga_core.history import storable
from saga_core.rows import CLAIMABLE_STATUSES, SUSPECT_SQL
from saga_core.state import UTCDateTime
from saga_core.store.base import Applied, Checkpoint, LeaseChange, SagaRow
from saga_core.store.sql import SqlSagaStore

WAKEUP_CHANNEL = "saga_wakeup"
"""Channel of the NOTIFY sent on start, notify and operator actions; payload: table name."""


class PostgresSagaStore(SqlSagaStore):
    def _now(self) -> ColumnElement[datetime]:
        return func.now(type_=UTCDateTime)

    def _now_plus(self, delta: timedelta) -> ColumnElement[datetime]:
        return (func.now() + bindparam(None, delta, type_=Interval)).cast(UTCDateTime)

    def _statement_now(self) -> ColumnElement[datetime]:
        return func.statement_timestamp(type_=UTCDateTime)

    def _statement_now_plus(self, delta: timedelta) -> ColumnElement[datetime]:
        return (func.statement_timestamp() + bindparam(None, delta, type_=Interval)).cast(
            UTCDateTime
        )

    def _new_token_sql(self) -> ColumnElement[Any]:
        return func.gen_random_uuid()

    def _history_append(self, entries: list[dict[str, Any]]) -> ColumnElement[Any]:
        return self.table.c.step_history.op("||")(bindparam(None, entries, type_=JSONB))

    def _history_replace(self, index: int, entry: dict[str, Any]) -> ColumnElement[Any]:
        return func.jsonb_set(
            self.table.c.step_history,
            bindparam(None, [str(index)], type_=ARRAY(Text)),
            bindparam(None, entry, type_=JSONB),
            type_=JSONB,
        )

    async def _wake(self, conn: AsyncConnection | AsyncSession) -> None:
        await conn.execute(select(func.pg_notify(WAKEUP_CHANNEL, self.table_name)))

    def _claim_subquery(self, sel: Select[Any]) -> Select[Any]:
        return sel.with_for_update(skip_locked=True)

    def _lock_row(self, sel: Select[Any]) -> Select[Any]:
        return sel.with_for_update()

    def _write_lock(self) -> AbstractAsyncContextManager[Any]:
        return contextlib.nullcontext()


# --- the hot path on the raw asyncpg connection -----------------------------------------------
#
# Claims and checkpoints are most of the database work. They bypass SQLAlchemy's statement
# construction (its per-call cost dominated a profile) and run as fixed SQL text on the asyncpg
# connection underneath the pool, so asyncpg prepares each once per connection. A batch of
# checkpoints is ONE statement, fenced per row by its token: UPDATE ... FROM the batch's rows,
# one JSON document (jsonb_to_recordset) or, for what that cannot carry, parallel arrays.
#
# A batch retried after its connection died may already have committed (the server applied it,
# the answer was lost). Every field is written absolutely, so re-applying it changes nothing,
# except the history append: entries already there (each carries its own timestamp and
# worker) are not appended again.

_RETURN_COLS = (
    "id, saga_name, aggregation_id, status, phase, current_step_index, steps_state, "
    "step_execution_token, context, deadline_at, lease_owner, retry_counter, takeover_count, "
    "recovery_count, last_error, definition_fingerprint, trace_id, created_at, updated_at, finished_at, "
    "idempotency_key, definition_version, lease_token, inbox"
)

_JSON_RETURNED = frozenset({"steps_state", "context", "inbox"})
"""Returned by a claim as text and decoded here (see ``_loads``)."""
_RETURNING = ", ".join(
    f"t.{c}::text AS {c}" if c in _JSON_RETURNED else f"t.{c}"
    for c in (c.strip() for c in _RETURN_COLS.split(","))
)
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19


def _loads(text: str) -> Any:
    """A JSON column as stored: orjson where it decodes exactly as json would. It reads an
    integer beyond 64 bits as a float, so a run of 19 digits (wherever it is) takes json."""
    data = text.encode()
    if data.translate(_DIGITS_AS_ZERO).find(_NINETEEN_DIGITS) < 0:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def _claimed_row(record: Any) -> SagaRow:
    values = dict(record.items())
    for name in _JSON_RETURNED:
        text = values[name]
        if text is not None:
            values[name] = _loads(text)
    return SagaRow(**values)


_DEADLINE_MODE = {"keep": 0, "clear": 1, "after": 2, "lease": 3, "hold": 4}
_CLAIMABLE_IN = ", ".join(f"'{s}'" for s in CLAIMABLE_STATUSES)


def _claim_sql(
    table: str, by_ids: bool, by_versions: bool = False, suspects: bool | None = None
) -> str:
    extra = "AND id = ANY($5::uuid[])" if by_ids else ""
    if suspects is not None:
        extra += f" AND {'' if suspects else 'NOT '}{SUSPECT_SQL}"
    if by_versions:
        # Parallel arrays of the (name, version) pairs this worker has registered.
        n = 6 if by_ids else 5
        extra += (
            f" AND (saga_name, definition_version) IN "
            f"(SELECT * FROM unnest(${n}::text[], ${n + 1}::int[]))"
        )
    return f"""
WITH due AS (
    SELECT id FROM {table}
    WHERE status IN ({_CLAIMABLE_IN})
      AND deadline_at IS NOT NULL AND deadline_at <= now()
      AND saga_name = ANY($1::text[]) {extra}
    ORDER BY deadline_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE {table} AS t SET
    status = CASE WHEN t.status = 'SUSPENDED' THEN 'RUNNING' ELSE t.status END,
    lease_token = gen_random_uuid(),
    lease_owner = $3,
    deadline_at = now() + $4::float8 * interval '1 second',
    takeover_count = t.takeover_count + (t.lease_owner IS NOT NULL)::int,
    recovery_count = t.recovery_count + (t.lease_owner IS NOT NULL)::int,
    updated_at = now()
FROM due
WHERE t.id = due.id
RETURNING {_RETURNING}
"""


# The checkpoint batch's rows, as parallel arrays ($15: the lease in seconds) ...
_ROWS_FROM_ARRAYS = """unnest(
    $1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int[], $6::jsonb[], $7::jsonb[],
    $8::int[], $9::bool[], $10::text[], $11::jsonb[], $12::int[], $13::float8[], $14::bool[],
    $16::bool[], $17::uuid[], $18::uuid[]
) AS v(id, token, status, phase, idx, steps, ctx, rc, set_err, err, hist, dmode, delay_s,
       release, finished, step_token, new_lease)"""
# ... or as one JSON array of objects ($2: the lease): one orjson call encodes the batch,
# instead of asyncpg encoding seventeen arrays element by element.
_ROWS_FROM_JSON = """jsonb_to_recordset($1::jsonb) AS v(id uuid, token uuid, status text,
    phase text, idx int, steps jsonb, ctx jsonb, rc int, set_err bool, err text, hist jsonb,
    dmode int, delay_s float8, release bool, finished bool, step_token uuid, new_lease uuid)"""


_JSON_BATCH_MAX_BYTES = 32 * 1024 * 1024
"""A larger batch goes as arrays. PostgreSQL caps one jsonb value at 256 MB in its binary
form, which is up to six times the text (arrays of small numbers): a batch of contexts
that are each well within ``max_payload_bytes`` would be refused as one document (and
written one checkpoint at a time), where each element of the array form is its own jsonb."""


def _checkpoint_sql(table: str, rows: str, lease: str) -> str:
    # deadline modes: 0 keep, 1 clear, 2 now + delay, 3 now + lease (renewal), 4 keep but
    # renew when less than half the lease is left (the write between two steps).
    return f"""
UPDATE {table} AS t SET
    status = COALESCE(v.status, t.status),
    phase = COALESCE(v.phase, t.phase),
    current_step_index = COALESCE(v.idx, t.current_step_index),
    steps_state = COALESCE(v.steps, t.steps_state),
    recovery_count = CASE WHEN v.steps IS NULL THEN t.recovery_count ELSE 0 END,
    context = COALESCE(v.ctx, t.context),
    retry_counter = COALESCE(v.rc, t.retry_counter),
    last_error = CASE WHEN v.set_err THEN v.err ELSE t.last_error END,
    step_history = CASE WHEN v.hist IS NULL OR t.step_history @> v.hist THEN t.step_history
        ELSE t.step_history || v.hist END,
    deadline_at = CASE v.dmode
        WHEN 0 THEN t.deadline_at
        WHEN 1 THEN NULL
        WHEN 2 THEN now() + v.delay_s * interval '1 second'
        WHEN 3 THEN now() + {lease}::float8 * interval '1 second'
        ELSE CASE WHEN t.lease_owner IS NOT NULL
                  AND t.deadline_at < now() + {lease}::float8 * interval '0.5 second'
             THEN now() + {lease}::float8 * interval '1 second'
             ELSE t.deadline_at END
        END,
    lease_owner = CASE WHEN v.release THEN NULL ELSE t.lease_owner END,
    finished_at = CASE WHEN v.finished THEN now() ELSE t.finished_at END,
    step_execution_token = COALESCE(v.step_token, t.step_execution_token),
    lease_token = COALESCE(v.new_lease, t.lease_token),
    updated_at = now()
FROM {rows}
WHERE t.id = v.id AND t.lease_token = v.token
RETURNING t.id, v.token,
    CASE WHEN t.lease_owner IS NULL THEN NULL
         ELSE extract(epoch FROM t.deadline_at - now())::float8 END,
    t.inbox IS NOT NULL
"""


def _dumps(value: Any) -> str | None:
    # orjson: the JSON columns are most of a checkpoint's encoding work. What it refuses
    # (integers beyond 64 bits, non-string keys, lone surrogates) is encoded as before.
    if value is None:
        return None
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), default=str)


async def _to_completion(fn: Callable[..., Any], *args: Any) -> None:
    """``fn`` (a pool operation) in a greenlet, as SQLAlchemy runs it, finished even if the
    caller is cancelled meanwhile (the cancellation is raised once it is)."""
    task = asyncio.ensure_future(greenlet_spawn(fn, *args))
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            cancelled = exc
    task.result()
    if cancelled is not None:
        raise cancelled


def _err(value: str | None) -> str | None:
    return None if value is None else storable(value)


class FastPostgresSagaStore(PostgresSagaStore):
    """The PostgreSQL store with claims and checkpoints on raw asyncpg."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        q = self.engine.dialect.identifier_preparer.format_table(self.table)
        self._sql_claims: dict[tuple[bool, bool, bool | None], str] = {}
        self._sql_checkpoint = _checkpoint_sql(q, _ROWS_FROM_ARRAYS, "$15")
        self._sql_checkpoint_json = _checkpoint_sql(q, _ROWS_FROM_JSON, "$2")
        self._quoted = q
        self._insert_sql: dict[tuple[str, ...], str] = {}

    _JSON_COLUMNS = frozenset({"steps_state", "context", "step_history"})
    _SQL_TIMES = frozenset({"deadline_at", "created_at", "updated_at"})

    def _column_defaults(self, given: dict[str, Any]) -> dict[str, Any]:
        """The Python-side column defaults SQLAlchemy would apply to an INSERT."""
        out: dict[str, Any] = {}
        for col in self.table.columns:
            default = col.default
            if col.name in given or col.name in self._SQL_TIMES or default is None:
                continue
            if getattr(default, "is_scalar", False):
                out[col.name] = default.arg  # type: ignore[attr-defined]
            elif getattr(default, "is_callable", False):
                out[col.name] = default.arg(None)  # type: ignore[attr-defined]
        return out

    def _insert_statement(self, columns: tuple[str, ...]) -> str:
        """INSERT of a new saga due after ``$last`` seconds, and its wake-up, as one
        statement (the NOTIFY is delivered when the insert commits)."""
        sql = self._insert_sql.get(columns)
        if sql is None:
            n = len(columns)
            names = ", ".join(columns)
            params = ", ".join(f"${i + 1}" for i in range(n))
            sql = (
                f"WITH ins AS (INSERT INTO {self._quoted} ({names}, deadline_at, created_at, "
                f"updated_at) VALUES ({params}, now() + ${n + 1}::float8 * interval '1 second', "
                f"now(), now()) RETURNING 1) "
                f"SELECT pg_notify('{WAKEUP_CHANNEL}', ${n + 2}) FROM ins"
            )
            self._insert_sql[columns] = sql
        return sql

    async def saga_insert(
        self,
        values: dict[str, Any],
        *,
        session: AsyncSession | None = None,
        due_in: timedelta | None = None,
    ) -> SagaRow | None:
        if (
            session is not None
            or values.get("idempotency_key") is not None
            or not self._SQL_TIMES.isdisjoint(values)
        ):
            return await super().saga_insert(values, session=session, due_in=due_in)
        values = {**self._column_defaults(values), **values}
        columns = tuple(sorted(values))
        args = [_dumps(values[c]) if c in self._JSON_COLUMNS else values[c] for c in columns]
        args += [0.0 if due_in is None else due_in.total_seconds(), self.table_name]
        try:
            async with self._raw() as raw:
                await raw.execute(self._insert_statement(columns), *args)
        except Exception as exc:
            constraint = getattr(exc, "constraint_name", None) or ""
            if getattr(exc, "sqlstate", None) == "23505" and "active_aggregation" in constraint:
                raise ActiveSagaAlreadyExistsError(values["aggregation_id"]) from None
            raise
        return None

    @contextlib.asynccontextmanager
    async def _raw(self) -> AsyncIterator[Any]:
        """A pooled connection as raw asyncpg. Errors raised on it bypass SQLAlchemy, so a
        connection found closed (database restarted, network cut) is invalidated here;
        otherwise the pool would hand the dead connection out again and again."""
        # Straight from the pool: without a SQLAlchemy Connection around it, a checkout costs
        # half the CPU.
        pooled = await self.engine.raw_connection()
        try:
            raw = pooled.driver_connection
            assert raw is not None
            try:
                yield raw
            except Exception as exc:
                # A server-reported error leaves the connection usable; anything else (closed,
                # or a protocol left mid-operation when the server killed the backend) does not.
                if raw.is_closed() or not isinstance(getattr(exc, "sqlstate", None), str):
                    await _to_completion(pooled.invalidate, exc)
                raise
        finally:
            await _to_completion(pooled.close)

    async def saga_claim(
        self,
        *,
        owner: str,
        lease: timedelta,
        limit: int,
        saga_names: Sequence[str] | None = None,
        saga_ids: Sequence[uuid.UUID] | None = None,
        versions: Sequence[tuple[str, int]] | None = None,
        suspects: bool | None = None,
    ) -> list[SagaRow]:
        if limit <= 0:
            return []
        if saga_names is None:
            return await super().saga_claim(
                owner=owner,
                lease=lease,
                limit=limit,
                saga_names=None,
                saga_ids=saga_ids,
                versions=versions,
                suspects=suspects,
            )
        args: list[Any] = [list(saga_names), limit, owner, lease.total_seconds()]
        key = (saga_ids is not None, versions is not None, suspects)
        sql = self._sql_claims.get(key)
        if sql is None:
            sql = self._sql_claims[key] = _claim_sql(self._quoted, *key)
        if saga_ids is not None:
            args.append(list(saga_ids))
        if versions is not None:
            args += [[n for n, _ in versions], [v for _, v in versions]]
        async with self._raw() as raw:
            rows = await raw.fetch(sql, *args)
        return [_claimed_row(r) for r in rows]

    async def saga_checkpoint(self, checkpoints: Sequence[Checkpoint]) -> list[Applied | None]:
        if not checkpoints:
            return []
        if any(cp.update.set_inbox for cp in checkpoints):  # never on the hot path
            return await super().saga_checkpoint(checkpoints)
        try:
            encoded = self._checkpoint_json(checkpoints)
        except TypeError:  # what orjson refuses (integers beyond 64 bits, ...): as before
            encoded = None
        sql, args = encoded or self._checkpoint_arrays(checkpoints)
        # One statement, so atomic without BEGIN/COMMIT (two round trips fewer per batch).
        async with self._raw() as raw:
            rows = await raw.fetch(sql, *args)
        # Keyed by (id, token): a stale checkpoint batched with the current one for the same
        # saga (a run that lost its lease in this very process) must still be told None.
        applied = {(r[0], r[1]): Applied(lease_left=r[2], inbox=r[3]) for r in rows}
        return [applied.get((cp.saga_id, cp.token)) for cp in checkpoints]

    def _checkpoint_json(self, checkpoints: Sequence[Checkpoint]) -> tuple[str, list[Any]] | None:
        """The batch as one JSON document; None when it is too large to be one jsonb value."""
        rows = [
            {
                "id": cp.saga_id,
                "token": cp.token,
                "status": (u := cp.update).status,
                "phase": u.phase,
                "idx": u.current_step_index,
                "steps": u.steps_state,
                "ctx": u.context,
                "rc": u.retry_counter,
                "set_err": u.set_last_error or u.last_error is not None,
                "err": _err(u.last_error),
                "hist": u.history or None,
                "dmode": _DEADLINE_MODE[u.deadline],
                "delay_s": u.delay.total_seconds(),
                "release": u.lease is LeaseChange.RELEASE,
                "finished": u.finished,
                "step_token": u.step_token,
                "new_lease": u.new_lease_token,
            }
            for cp in checkpoints
        ]
        data = orjson.dumps(rows, default=str)
        if len(data) > _JSON_BATCH_MAX_BYTES:
            return None
        return self._sql_checkpoint_json, [data.decode(), self.lease.total_seconds()]

    def _checkpoint_arrays(self, checkpoints: Sequence[Checkpoint]) -> tuple[str, list[Any]]:
        cols: list[list[Any]] = [[] for _ in range(17)]
        for cp in checkpoints:
            u = cp.update
            values = (
                cp.saga_id,
                cp.token,
                u.status,
                u.phase,
                u.current_step_index,
                _dumps(u.steps_state),
                _dumps(u.context),
                u.retry_counter,
                u.set_last_error or u.last_error is not None,
                _err(u.last_error),
                _dumps(u.history) if u.history else None,
                _DEADLINE_MODE[u.deadline],
                u.delay.total_seconds(),
                u.lease is LeaseChange.RELEASE,
                u.finished,
                u.step_token,
                u.new_lease_token,
            )
            for col, value in zip(cols, values, strict=True):
                col.append(value)
        return self._sql_checkpoint, [*cols[:14], self.lease.total_seconds(), *cols[14:]]
