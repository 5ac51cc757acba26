"""Attack 14 on the performance commits (a551d2b..124fbad), PostgreSQL store side: claims and
checkpoint batches now take a raw asyncpg connection straight from SQLAlchemy's pool
(``FastPostgresSagaStore._raw``) and give it back, or invalidate it, "to completion even when
cancelled"; claims return their JSON columns as text decoded by orjson (json where a run of 19
digits may be an integer beyond 64 bits).

Hostile callers cancel claims and checkpoints at every await, kill the backend in the middle
of one (``pg_terminate_backend``) and store numbers orjson reads differently from json."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from dbutil import plain_dsn
from itkit import Harness, define_standard
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from saga_core.store import make_store
from saga_core.store.base import Checkpoint, RowUpdate
from saga_core.store.postgres import FastPostgresSagaStore

pytestmark = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", id="pg", marks=pytest.mark.postgres)]
)

POOL = 2


class Small:
    """A store of ``h``'s table on its own small pool, its connections named ``app``."""

    def __init__(self, h: Harness, pool: int = POOL) -> None:
        assert h.url is not None
        self.app = f"a14-{uuid.uuid4().hex[:8]}"
        self.engine: AsyncEngine = create_async_engine(
            make_url(h.url),
            pool_size=pool,
            max_overflow=0,
            pool_timeout=5,
            connect_args={"server_settings": {"application_name": self.app}},
        )
        store = make_store(
            self.engine,
            h.model.__table__,  # type: ignore[attr-defined]
            lease=timedelta(seconds=30),
        )
        assert isinstance(store, FastPostgresSagaStore)
        self.store = store
        self.dsn = plain_dsn(h.url)

    def checked_out(self) -> int:
        return int(self.engine.pool.checkedout())  # type: ignore[attr-defined]

    async def backends(self) -> list[tuple[int, str, str | None]]:
        """This pool's server connections: pid, state, wait event type."""
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT pid, state, wait_event_type FROM pg_stat_activity "
                "WHERE application_name = $1",
                self.app,
            )
            return [(r[0], r[1], r[2]) for r in rows]
        finally:
            await conn.close()


@pytest.fixture
async def small(h: Harness) -> AsyncIterator[Small]:
    s = Small(h)
    try:
        yield s
    finally:
        await s.engine.dispose()


async def started(h: Harness, n: int = 1) -> list[uuid.UUID]:
    define_standard(h)
    w = await h.worker()
    ids = [
        await w.orch.start(saga_name="flow", initial_data={"n": i}, aggregation_id=f"agg-{i}")
        for i in range(n)
    ]
    await w.close()
    return ids


async def cancel_after(make: Callable[[], Awaitable[Any]], spins: int) -> bool:
    """Run ``make()`` as a task and cancel it after ``spins`` loop iterations; True if the
    cancellation landed (the call had not finished)."""
    task = asyncio.ensure_future(make())
    for _ in range(spins):
        await asyncio.sleep(0)
    landed = not task.done()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return landed
    return False


async def test_attack3_a14_cancelled_claims_and_checkpoints_leave_no_connection_out(
    h: Harness, small: Small
) -> None:
    """Held: a claim or a checkpoint cancelled after 0, 1, 2, ... loop iterations (every await
    of the checkout, the query, the return) gives its connection back: checkedout() is 0,
    the pool (2 connections) is never exhausted, and no server connection is left in a
    transaction or running a query."""
    (sid,) = await started(h)
    store = small.store

    def claim() -> Awaitable[Any]:
        return store.saga_claim(
            owner="nobody", lease=timedelta(seconds=1), limit=0 + 1, saga_names=["no-such-saga"]
        )

    def checkpoint() -> Awaitable[Any]:
        # A stale token: the statement runs in full and changes nothing.
        return store.saga_checkpoint([Checkpoint(sid, uuid.uuid4(), RowUpdate(retry_counter=1))])

    landed = 0
    for make in (claim, checkpoint):
        for spins in range(0, 60):
            landed += await cancel_after(make, spins)
            assert small.checked_out() == 0, f"{make.__name__} cancelled after {spins} spins"
        rng = random.Random(14)
        for _ in range(60):
            try:
                await asyncio.wait_for(make(), timeout=rng.uniform(0, 0.004))
            except TimeoutError:
                landed += 1
            assert small.checked_out() == 0, f"{make.__name__} timed out"
    assert landed > 40, "the cancellations never landed mid-call"
    # Still usable, every connection: as many calls at once as the pool holds, twice over.
    await asyncio.gather(*(claim() for _ in range(2 * POOL)))
    await asyncio.gather(*(checkpoint() for _ in range(2 * POOL)))
    assert small.checked_out() == 0
    states = await small.backends()
    assert len(states) <= POOL
    assert all(state == "idle" for _, state, _ in states), states


async def test_attack3_a14_backend_killed_mid_checkpoint_is_not_handed_out_again(
    h: Harness,
) -> None:
    """A checkpoint blocked on the saga's row lock has its backend terminated
    (``pg_terminate_backend``): the checkpoint fails, and the dead connection must not go back
    into the pool: the very next claim on the (one-connection) pool must work."""
    (sid,) = await started(h)
    small = Small(h, pool=1)
    try:
        store = small.store
        # Claimed (its lease token for the checkpoint); the pool's only connection warmed.
        (row,) = await store.saga_claim(
            owner="x", lease=timedelta(seconds=60), limit=1, saga_names=["flow"]
        )
        locker = await asyncpg.connect(small.dsn)
        try:
            tr = locker.transaction()
            await tr.start()
            table = h.model.__table__.name  # type: ignore[attr-defined]
            await locker.execute(f'SELECT 1 FROM "{table}" WHERE id = $1 FOR UPDATE', sid)
            token = row.lease_token
            assert token is not None
            task = asyncio.ensure_future(
                store.saga_checkpoint([Checkpoint(sid, token, RowUpdate(retry_counter=7))])
            )
            blocked: list[int] = []
            for _ in range(500):
                blocked = [pid for pid, _, wait in await small.backends() if wait == "Lock"]
                if blocked or task.done():
                    break
                await asyncio.sleep(0.01)
            assert blocked, "the checkpoint never blocked on the row lock"
            await locker.fetchval("SELECT pg_terminate_backend($1)", blocked[0])
            with pytest.raises(Exception) as failed:
                await asyncio.wait_for(task, 10)
            await tr.rollback()
        finally:
            await locker.close()
        assert small.checked_out() == 0
        # The next claim on the one-connection pool: a dead connection handed out again would
        # fail it ("connection is closed").
        try:
            await store.saga_claim(
                owner="x", lease=timedelta(seconds=1), limit=1, saga_names=["no-such-saga"]
            )
        except Exception as exc:
            pytest.fail(
                f"the connection killed mid-checkpoint ({type(failed.value).__name__}: "
                f"{failed.value}) was handed out again: {type(exc).__name__}: {exc}"
            )
    finally:
        await small.engine.dispose()


HOSTILE: dict[str, Any] = {
    "i63": 2**63 - 1,
    "i63n": -(2**63),
    "i63n_minus": -(2**63) - 1,
    "u64": 2**64 - 1,
    "u64_plus": 2**64,
    "huge": 2**200,
    "neg_huge": -(2**100),
    "nested": [{"x": [2**70, {"y": -(2**65)}]}],
    "digits19_str": "1234567890123456789",
    "digits19_key": {"1234567890123456789": 1},
    "num_19": 1234567890123456789,
    "num_18": 123456789012345678,
    "float": 0.1,
    "tiny": 1e-300,
    "big_float": 1.7976931348623157e308,
    "fraction_19": 0.1234567890123456789,
    "nan_text": "NaN",
    "inf_text": "Infinity",
    "unicode": "\u00e9\u6f22\U0001f600\u2028",
    "escapes": '"\\/\b\f\n\r\t',
}


async def test_attack3_a14_claim_decodes_json_columns_as_json_would(
    h: Harness, small: Small
) -> None:
    """Held: hostile numbers in steps_state, context and inbox read back by a claim exactly as
    ``json.loads`` reads the stored text (types too: an int stays an int)."""
    (sid,) = await started(h)
    table = h.model.__table__.name  # type: ignore[attr-defined]
    conn = await asyncpg.connect(small.dsn)
    try:
        await conn.execute(
            f'UPDATE "{table}" SET context = context || $2::jsonb, '
            "steps_state = jsonb_set(steps_state, '{0,extra}', $2::jsonb), "
            "inbox = jsonb_build_array($2::jsonb), "
            "lease_owner = NULL, deadline_at = now() - interval '1 second' WHERE id = $1",
            sid,
            json.dumps({"hostile": HOSTILE}),
        )
        texts = await conn.fetchrow(
            f'SELECT steps_state::text, context::text, inbox::text FROM "{table}" WHERE id = $1',
            sid,
        )
    finally:
        await conn.close()
    rows = await small.store.saga_claim(
        owner="a14", lease=timedelta(seconds=30), limit=5, saga_names=["flow"]
    )
    assert [r.id for r in rows] == [sid]
    got = rows[0]

    def typed(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: typed(x) for k, x in v.items()}
        if isinstance(v, list):
            return [typed(x) for x in v]
        return (type(v).__name__, v)

    for name, text in zip(("steps_state", "context", "inbox"), texts, strict=True):
        assert typed(getattr(got, name)) == typed(json.loads(text)), name
    assert got.context["hostile"]["huge"] == 2**200
    assert got.inbox is not None and got.inbox[0]["hostile"]["u64_plus"] == 2**64
