"""SQLite reuses one checkpoint UPDATE per shape of update, its values bound as parameters
(``SqliteSagaStore._checkpoint_call``). Held here to the statement the SQL store builds
afresh (``SqlSagaStore._checkpoint_stmt``): for every shape, two identical rows updated one
way each end up the same, byte for byte in the stored text (timestamps within the time
between the two writes), and report the same ``Applied``."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from itkit import Harness
from sqlalchemy import text
from test_store_conformance import values

from saga_core.store import Checkpoint, DeadlineChange, LeaseChange, RowUpdate
from saga_core.store.sql import SqlSagaStore
from saga_core.store.sqlite import SqliteSagaStore

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

TIMESTAMPS = ("updated_at", "finished_at", "deadline_at")
OWN = ("id", "aggregation_id", "created_at")


def updates() -> list[RowUpdate]:
    """Every deadline and lease change, with or without the other columns, history and
    inbox a checkpoint or a settling write may carry."""
    out = []
    for deadline, lease, full, history, inbox, finished in itertools.product(
        DeadlineChange,
        LeaseChange,
        (False, True),
        ([], [{"n": 1}], [{"n": i, "at": uuid.UUID(int=i)} for i in range(12)]),
        (None, [], [{"event": "é\u2028"}]),
        (False, True),
    ):
        if inbox is not None and (full or finished):
            continue  # fewer combinations: the inbox is written by its own updates
        out.append(
            RowUpdate(
                status="COMPLETED" if full else None,
                phase="compensate" if full else None,
                current_step_index=2 if full else None,
                steps_state=[{"step_id": "a", "status": "DONE", "note": "ü"}] if full else None,
                context={"x": [1, 2.5, None, "s"]} if full else None,
                retry_counter=3 if full else None,
                last_error="bo\x00om" if full else None,  # escaped (history.storable)
                set_last_error=not full and finished,
                history=history,
                deadline=deadline,
                delay=timedelta(seconds=-2 if finished else 7),
                lease=lease,
                finished=finished,
                step_token=uuid.uuid4() if full else None,
                new_lease_token=uuid.uuid4() if finished else None,
                inbox=inbox,
                set_inbox=inbox is not None,
            )
        )
    return out


async def leased_row(store: SqliteSagaStore, base: dict[str, Any], left: int) -> Checkpoint:
    row = {**base, "id": uuid.uuid4(), "aggregation_id": f"agg-{uuid.uuid4().hex}"}
    await store.saga_insert(row)
    token = uuid.uuid4()
    t = store.table
    async with store.engine.begin() as conn:
        await conn.execute(
            t.update()
            .where(t.c.id == row["id"])
            .values(
                lease_token=token,
                lease_owner=base["lease_owner"],
                deadline_at=store._now_plus(timedelta(seconds=left)),
            )
        )
    return Checkpoint(row["id"], token, RowUpdate())


async def stored(store: SqliteSagaStore, saga_id: uuid.UUID) -> dict[str, Any]:
    async with store.engine.connect() as conn:
        sql = text(f"SELECT * FROM {store.table_name} WHERE id = :id")
        row = (await conn.execute(sql, {"id": saga_id.hex})).mappings().one()
    return dict(row)


async def test_each_shape_writes_what_the_statement_built_afresh_writes(h: Harness) -> None:
    store = h.store
    assert isinstance(store, SqliteSagaStore)
    shapes = updates()
    for i, upd in enumerate(shapes):
        # A lease with less than half left (HOLD extends it) or more (HOLD keeps it).
        base = values(
            lease_owner="w" if i % 3 else None,
            inbox=[{"queued": 1}] if i % 2 else None,
            recovery_count=2,
            last_error="before",
        )
        left = 3 if i % 4 < 2 else 25
        fresh = await leased_row(store, base, left)
        cached = await leased_row(store, base, left)
        async with store.engine.begin() as conn:
            cp = Checkpoint(fresh.saga_id, fresh.token, upd)
            stmt, params = SqlSagaStore._checkpoint_call(store, cp)
            assert params is None
            want = store._applied((await conn.execute(stmt)).first())
        (got,) = await store.saga_checkpoint([Checkpoint(cached.saga_id, cached.token, upd)])
        assert got is not None and want is not None
        assert got.inbox == want.inbox
        assert (got.lease_left is None) == (want.lease_left is None)
        if got.lease_left is not None and want.lease_left is not None:
            assert abs(got.lease_left - want.lease_left) < 1
        a, b = await stored(store, fresh.saga_id), await stored(store, cached.saga_id)
        for col in a:
            if col in OWN:
                continue
            if col == "lease_token" and upd.new_lease_token is None:
                assert (a[col], b[col]) == (fresh.token.hex, cached.token.hex)
                continue
            if col in TIMESTAMPS and a[col] is not None and b[col] is not None:
                assert len(a[col]) == len(b[col]), (i, col, a[col], b[col])
                gap = datetime.fromisoformat(b[col]) - datetime.fromisoformat(a[col])
                assert abs(gap) < timedelta(seconds=1), (i, col, a[col], b[col])
                continue
            assert a[col] == b[col], (i, col, a[col], b[col], upd)
        # A wrong token writes nothing, either way.
        (refused,) = await store.saga_checkpoint([Checkpoint(cached.saga_id, uuid.uuid4(), upd)])
        assert refused is None


async def test_a_shape_reuses_its_statement(h: Harness) -> None:
    store = h.store
    assert isinstance(store, SqliteSagaStore)
    upd = RowUpdate(status="RUNNING", history=[{"n": 1}], deadline=DeadlineChange.HOLD)
    other = RowUpdate(status="COMPLETED", history=[{"n": 2}], deadline=DeadlineChange.HOLD)
    first, p1 = store._checkpoint_call(Checkpoint(uuid.uuid4(), uuid.uuid4(), upd))
    again, p2 = store._checkpoint_call(Checkpoint(uuid.uuid4(), uuid.uuid4(), other))
    assert first is again
    assert p1 is not None and p2 is not None and p1["p_status"] != p2["p_status"]
    # Another shape (one more history entry), another statement.
    more = RowUpdate(status="RUNNING", history=[{"n": 1}, {"n": 2}], deadline=DeadlineChange.HOLD)
    assert store._checkpoint_call(Checkpoint(uuid.uuid4(), uuid.uuid4(), more))[0] is not first
