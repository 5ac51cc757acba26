"""Retention: ``SagaAdmin.purge`` deletes finished sagas older than an age in small batches,
never active or FAILED ones; ``dry_run`` counts; sagad's retention run does the same."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from itkit import Harness, Worker, define_standard, eventually, reach
from sqlalchemy import update

from saga_core import SagaInputError, SagaNotFoundError
from sagad.retention import purge_once, run_retention


async def backdate(h: Harness, saga_id: uuid.UUID, days: float) -> None:
    """Pretend the saga finished ``days`` ago."""
    table = h.model.__table__  # type: ignore[attr-defined]
    when = await h.db_now() - timedelta(days=days)
    sql = h.sql_engine()
    try:
        async with sql.begin() as conn:
            await conn.execute(update(table).where(table.c.id == saga_id).values(finished_at=when))
    finally:
        await sql.dispose()


async def population(h: Harness, w: Worker) -> dict[str, uuid.UUID]:
    """One saga per status; the finished ones finished 40 days ago, plus a fresh COMPLETED."""
    out: dict[str, uuid.UUID] = {}
    for i, status in enumerate(
        ("COMPLETED", "COMPENSATED", "ABORTED", "FAILED", "SUSPENDED", "RUNNING")
    ):
        out[status] = (await reach(h, w, status, aggregation_id=f"agg-{i}")).saga_id
        h.probe.fail.clear()
        h.probe.fail_comp.clear()
    for status in ("COMPLETED", "COMPENSATED", "ABORTED"):
        await backdate(h, out[status], 40)
    out["fresh"] = (await reach(h, w, "COMPLETED", aggregation_id="agg-fresh")).saga_id
    return out


async def exists(w: Worker, saga_id: uuid.UUID) -> bool:
    try:
        await w.orch.get_snapshot(saga_id)
    except SagaNotFoundError:
        return False
    return True


async def test_purge_deletes_only_old_finished_sagas(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    ids = await population(h, w)
    assert await h.count() == 7

    assert await w.admin.purge(timedelta(days=30), dry_run=True) == 3
    assert await h.count() == 7, "a dry run deletes nothing"
    assert await w.admin.purge(timedelta(days=30), statuses="COMPLETED", dry_run=True) == 1

    assert await w.admin.purge(timedelta(days=30), statuses=["COMPLETED"]) == 1
    assert not await exists(w, ids["COMPLETED"])
    assert await w.admin.purge(30 * 86400) == 2
    assert await h.count() == 4
    for status in ("FAILED", "SUSPENDED", "RUNNING", "fresh"):
        assert await exists(w, ids[status]), status
    assert await w.admin.purge(timedelta(days=30)) == 0
    # Age zero: everything finished so far, still never the active or FAILED ones.
    assert await w.admin.purge(timedelta(0)) == 1
    assert await h.count() == 3


async def test_purge_works_in_batches(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    define_standard(h)
    w = await h.worker()
    for i in range(7):
        sid = await w.orch.start(
            saga_name="flow", initial_data={}, aggregation_id=f"b-{i}", inline=True
        )
        await backdate(h, sid, 2 + i)
    calls: list[int] = []
    real = w.admin.store.saga_purge

    async def spy(statuses: Any, finished_before: Any, batch: int) -> int:
        n = await real(statuses, finished_before, batch)
        calls.append(n)
        return n

    monkeypatch.setattr(w.admin.store, "saga_purge", spy)
    assert await w.admin.purge(timedelta(days=1), batch_size=3) == 7
    assert calls == [3, 3, 1], "one short statement per batch"
    assert await h.count() == 0


async def test_a_purged_sagas_idempotency_key_starts_a_new_saga(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    first = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="k", idempotency_key="k", inline=True
    )
    assert await w.admin.purge(timedelta(0)) == 1
    second = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="k", idempotency_key="k"
    )
    assert second != first


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"statuses": "FAILED"}, "only finished sagas"),
        ({"statuses": ["COMPLETED", "RUNNING"]}, "only finished sagas"),
        ({"statuses": "NOPE"}, "unknown status"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
async def test_purge_refuses_what_it_must_not_delete(
    h: Harness, kwargs: dict[str, Any], match: str
) -> None:
    define_standard(h)
    w = await h.worker()
    with pytest.raises(SagaInputError, match=match):
        await w.admin.purge(timedelta(days=1), **kwargs)
    with pytest.raises(SagaInputError, match="negative"):
        await w.admin.purge(timedelta(days=-1))


async def test_sagad_retention_run(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    ids = await population(h, w)
    other = await h.worker()  # a second orchestrator on the same table: purged once
    assert await purge_once([w.orch.engine, other.orch.engine], days=30, batch_size=2) == 3
    assert await h.count() == 4
    assert await exists(w, ids["fresh"]) and await exists(w, ids["FAILED"])
    assert await purge_once([w.orch.engine], days=30, batch_size=2) == 0


async def test_sagad_retention_loop_runs_at_start_and_every_interval(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    first = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="l-1", inline=True)
    await backdate(h, first, 3)
    loop = asyncio.ensure_future(
        run_retention([w.orch.engine], days=1, interval=0.05, batch_size=10)
    )
    try:
        await eventually(lambda: _gone(w, first), what="the first purge")
        later = await w.orch.start(
            saga_name="flow", initial_data={}, aggregation_id="l-2", inline=True
        )
        await backdate(h, later, 3)
        await eventually(lambda: _gone(w, later), what="a later purge")
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def _gone(w: Worker, saga_id: uuid.UUID) -> bool:
    return not await exists(w, saga_id)
