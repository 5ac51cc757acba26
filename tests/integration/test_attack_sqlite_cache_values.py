"""Attack on SQLite's kept checkpoint statements (``SqliteSagaStore._checkpoint_call``):
awkward values (history entries with surrogates, NUL, huge text, non-str keys, NaN/inf,
datetimes and UUIDs, big integers; last_error with markup and surrogates; inbox set and
cleared) stored by the kept statement and by the statement built afresh
(``SqlSagaStore._checkpoint_stmt``): the same bytes, or the same refusal; every stored
history is valid JSON. Also: many shapes evicting the cache while statements are in use,
two stores (two tables) in one process, fencing, the deadline HOLD by a lease about to
expire, and the clock of a checkpoint in the caller's session."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from itkit import Harness, make_model, unique_table_name
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from test_sqlite_checkpoint_shapes import OWN, TIMESTAMPS, leased_row, stored
from test_store_conformance import values

from saga_core.store import Checkpoint, DeadlineChange, LeaseChange, RowUpdate
from saga_core.store.sql import SqlSagaStore
from saga_core.store.sqlite import _SHAPES_MAX, SqliteSagaStore

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

BIG = 2**70
ODD_ENTRIES: dict[str, dict[Any, Any]] = {
    "surrogate": {"s": "a\ud800b\udcff", "k\udfff": 1},
    "nul": {"s": "x\x00y", "\x00": "\x00"},
    "huge": {"s": "é" * 3_000_000},
    "int-keys": {1: "a", 2.5: "b", None: "c", False: "d"},
    "floats": {"f": [1e308, -0.0, 5e-324, 0.1]},
    "nan": {"f": math.nan},
    "inf": {"f": [math.inf, -math.inf]},
    "datetime-uuid": {"at": datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "id": uuid.UUID(int=7)},
    "decimal-bytes-set": {"d": Decimal("1.10"), "b": b"\x00\xff", "s": {1}},
    "big-int": {"n": BIG, "m": -BIG},
    "markup": {"s": "<b>&amp;</b>\u2028\u2029'\"\\", "$[#]": "$.a"},
    "nested": {"a": [[[{"b": [None, True, False]}]]]},
    "tuple-key": {(1, 2): "x"},
}


def upd_with(entries: list[Any], **kw: Any) -> RowUpdate:
    return RowUpdate(history=entries, deadline=DeadlineChange.HOLD, **kw)


async def both_ways(
    store: SqliteSagaStore, upd: RowUpdate, *, left: int = 25, base: dict[str, Any] | None = None
) -> tuple[Any, Any, Checkpoint, Checkpoint]:
    """Apply ``upd`` to two identical rows, afresh and kept; each result is the stored row
    or the exception's type."""
    base = base or values(lease_owner="w", recovery_count=2, last_error="before")
    fresh = await leased_row(store, base, left)
    cached = await leased_row(store, base, left)
    a: Any
    b: Any
    try:
        async with store.engine.begin() as conn:
            stmt, _ = SqlSagaStore._checkpoint_call(
                store, Checkpoint(fresh.saga_id, fresh.token, upd)
            )
            await conn.execute(stmt)
        a = await stored(store, fresh.saga_id)
    except Exception as exc:
        a = type(exc)
    try:
        await store.saga_checkpoint([Checkpoint(cached.saga_id, cached.token, upd)])
        b = await stored(store, cached.saga_id)
    except Exception as exc:
        b = type(exc)
    return a, b, fresh, cached


def assert_same(a: Any, b: Any, upd: RowUpdate, fresh: Checkpoint, cached: Checkpoint) -> None:
    if isinstance(a, type) or isinstance(b, type):
        assert a == b, (a, b)
        return
    for col in a:
        if col in OWN:
            continue
        if col == "lease_token" and upd.new_lease_token is None:
            assert (a[col], b[col]) == (fresh.token.hex, cached.token.hex)
            continue
        if col in TIMESTAMPS and a[col] is not None and b[col] is not None:
            gap = datetime.fromisoformat(b[col]) - datetime.fromisoformat(a[col])
            assert abs(gap) < timedelta(seconds=2), (col, a[col], b[col])
            continue
        assert a[col] == b[col], (col, str(a[col])[:200], str(b[col])[:200])


async def json_valid(store: SqliteSagaStore, saga_id: uuid.UUID) -> bool:
    async with store.engine.connect() as conn:
        sql = text(
            f"SELECT json_valid(step_history) AND json_type(step_history) = 'array' "
            f"FROM {store.table_name} WHERE id = :id"
        )
        return bool((await conn.execute(sql, {"id": saga_id.hex})).scalar_one())


@pytest.mark.parametrize("kind", sorted(ODD_ENTRIES))
@pytest.mark.parametrize("n", [1, 8, 9])
async def test_odd_history_entries_stored_alike(h: Harness, kind: str, n: int) -> None:
    store = h.store
    assert isinstance(store, SqliteSagaStore)
    entries = [{"i": i, **ODD_ENTRIES[kind]} for i in range(n)]
    if kind == "huge":
        entries = entries[:1] + [{"i": i} for i in range(1, n)]
    upd = upd_with(entries)
    a, b, fresh, cached = await both_ways(store, upd)
    assert_same(a, b, upd, fresh, cached)
    if not isinstance(b, type):
        assert await json_valid(store, cached.saga_id)


@pytest.mark.parametrize(
    "error",
    ["<script>alert(1)</script>&lt;", "sur\ud800rogate\x00nul", "x" * 100_000, "", "é\u2028"],
)
async def test_last_error_stored_alike(h: Harness, error: str) -> None:
    store = h.store
    assert isinstance(store, SqliteSagaStore)
    for upd in (
        RowUpdate(last_error=error, history=[{"e": error}]),
        RowUpdate(last_error=None, set_last_error=True, deadline=DeadlineChange.CLEAR),
    ):
        a, b, fresh, cached = await both_ways(store, upd)
        assert_same(a, b, upd, fresh, cached)


@pytest.mark.parametrize(
    "inbox", [None, [], [{"event": {"x": "\ud800"}, "n": BIG}], [{"e": i} for i in range(40)]]
)
async def test_inbox_set_and_cleared_alike(h: Harness, inbox: Any) -> None:
    store = h.store
    assert isinstance(store, SqliteSagaStore)
    base = values(lease_owner="w", inbox=[{"queued": 1}])
    upd = RowUpdate(inbox=inbox, set_inbox=True, history=[{"n": 1}])
    a, b, fresh, cached = await both_ways(store, upd, base=base)
    assert_same(a, b, upd, fresh, cached)


async def test_hold_with_a_lease_about_to_expire_and_release(h: Harness) -> None:
    store = h.store
    assert isinstance(store, SqliteSagaStore)
    for left in (-5, 0, 1, int(store.lease.total_seconds() / 2) - 1, 10_000):
        for lease in LeaseChange:
            upd = RowUpdate(status="RUNNING", deadline=DeadlineChange.HOLD, lease=lease)
            a, b, fresh, cached = await both_ways(store, upd, left=left)
            assert_same(a, b, upd, fresh, cached)
    # A released saga is not given a lease back by a HOLD.
    base = values(lease_owner=None)
    upd = RowUpdate(deadline=DeadlineChange.HOLD)
    a, b, fresh, cached = await both_ways(store, upd, left=1, base=base)
    assert_same(a, b, upd, fresh, cached)


async def test_a_stale_token_writes_nothing(h: Harness) -> None:
    store = h.store
    assert isinstance(store, SqliteSagaStore)
    cp = await leased_row(store, values(lease_owner="w"), 25)
    before = await stored(store, cp.saga_id)
    for upd in (
        RowUpdate(status="FAILED", history=[{"n": 1}], finished=True, lease=LeaseChange.RELEASE),
        RowUpdate(new_lease_token=uuid.uuid4(), deadline=DeadlineChange.AFTER),
        RowUpdate(inbox=None, set_inbox=True),
    ):
        (res,) = await store.saga_checkpoint([Checkpoint(cp.saga_id, uuid.uuid4(), upd)])
        assert res is None
        assert await stored(store, cp.saga_id) == before
    # The right token after a rotation: the old one is stale at once, in one batch.
    new = uuid.uuid4()
    first, second = await store.saga_checkpoint(
        [
            Checkpoint(cp.saga_id, cp.token, RowUpdate(new_lease_token=new)),
            Checkpoint(cp.saga_id, cp.token, RowUpdate(status="FAILED")),
        ]
    )
    assert first is not None and second is None
    assert (await stored(store, cp.saga_id))["status"] == "RUNNING"


def all_shapes() -> list[RowUpdate]:
    """More than _SHAPES_MAX shapes of update."""
    out = []
    for n in range(9):
        for deadline in DeadlineChange:
            for finished in (False, True):
                for status in (None, "RUNNING"):
                    for step in (None, uuid.UUID(int=3)):
                        out.append(
                            RowUpdate(
                                status=status,
                                history=[{"n": i} for i in range(n)],
                                deadline=deadline,
                                finished=finished,
                                step_token=step,
                                delay=timedelta(seconds=5),
                            )
                        )
    assert len(out) > _SHAPES_MAX
    return out


async def test_shapes_beyond_the_cache_evict_while_in_use(h: Harness) -> None:
    store = h.store
    assert isinstance(store, SqliteSagaStore)
    shapes = all_shapes()
    cps = [await leased_row(store, values(lease_owner="w"), 25) for _ in range(len(shapes))]
    # Statements taken before the eviction are used after it.
    calls = [
        store._checkpoint_call(Checkpoint(c.saga_id, c.token, u))
        for c, u in zip(cps, shapes, strict=True)
    ]
    assert len(store._shapes) <= _SHAPES_MAX
    async with store.engine.begin() as conn:
        for stmt, params in calls:
            assert (await conn.execute(stmt, params)).first() is not None
    for c, u in zip(cps, shapes, strict=True):
        row = await stored(store, c.saga_id)
        assert len(__import__("json").loads(row["step_history"])) == len(u.history)
        assert (row["finished_at"] is not None) == u.finished
    # And through saga_checkpoint, twice round the cache, in one batch.
    res = await store.saga_checkpoint(
        [Checkpoint(c.saga_id, c.token, u) for c, u in zip(cps, shapes, strict=True)] * 2
    )
    assert all(r is not None for r in res)
    for c, u in zip(cps, shapes, strict=True):
        assert await json_valid(store, c.saga_id)
        row = await stored(store, c.saga_id)
        assert len(__import__("json").loads(row["step_history"])) == 3 * len(u.history)


async def test_two_stores_two_tables_one_process(h: Harness) -> None:
    store = h.store
    assert isinstance(store, SqliteSagaStore)
    name = unique_table_name("sq2")
    model = make_model(name)
    async with store.engine.begin() as conn:
        await conn.run_sync(model.metadata.create_all)
    other = SqliteSagaStore(store.engine, model.__table__, lease=store.lease)  # type: ignore[arg-type]
    try:
        upd = RowUpdate(status="COMPENSATING", history=[{"n": 1}], deadline=DeadlineChange.HOLD)
        a = await leased_row(store, values(lease_owner="w"), 25)
        b = await leased_row(other, values(lease_owner="w"), 25)
        # The same shape in both: each store's statement writes its own table.
        assert await store.saga_checkpoint([Checkpoint(a.saga_id, a.token, upd)]) != [None]
        assert await other.saga_checkpoint([Checkpoint(b.saga_id, b.token, upd)]) != [None]
        # Crossed ids: nothing written anywhere.
        assert await store.saga_checkpoint([Checkpoint(b.saga_id, b.token, upd)]) == [None]
        assert await other.saga_checkpoint([Checkpoint(a.saga_id, a.token, upd)]) == [None]
        assert (await stored(store, a.saga_id))["status"] == "COMPENSATING"
        assert (await stored(other, b.saga_id))["status"] == "COMPENSATING"
        assert (
            store._checkpoint_call(Checkpoint(a.saga_id, a.token, upd))[0]
            is not (other._checkpoint_call(Checkpoint(b.saga_id, b.token, upd))[0])
        )
    finally:
        async with store.engine.begin() as conn:
            await conn.run_sync(model.metadata.drop_all)


async def test_checkpoint_in_session_uses_the_statement_time(h: Harness) -> None:
    store = h.store
    assert isinstance(store, SqliteSagaStore)
    cp = await leased_row(store, values(lease_owner="w"), 25)
    async with AsyncSession(store.engine) as session:
        await store.begin_step_transaction(session)
        upd = RowUpdate(status="RUNNING", history=[{"n": 1}], deadline=DeadlineChange.LEASE)
        before = datetime.now(UTC)
        applied = await store.saga_checkpoint_in(session, Checkpoint(cp.saga_id, cp.token, upd))
        await session.commit()
    assert applied is not None and applied.lease_left is not None
    assert abs(applied.lease_left - store.lease.total_seconds()) < 2
    row = await stored(store, cp.saga_id)
    assert datetime.fromisoformat(row["updated_at"]).replace(tzinfo=UTC) >= before - timedelta(
        seconds=1
    )
