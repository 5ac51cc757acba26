"""Delayed starts (``start(run_at=...)``): the saga is inserted RUNNING with its due time in
the future (a ``timedelta`` counts from the database clock), no worker claims it before then,
and it runs normally once due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from itkit import Harness, define_standard, eventually

from saga_core import ActiveSagaAlreadyExistsError, SagaError, SagaInputError

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


async def test_a_delay_makes_the_saga_due_later_by_the_database_clock(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    before = await h.db_now()
    sid = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="d-1", run_at=timedelta(minutes=10)
    )
    after = await h.db_now()
    snap = await w.orch.get_snapshot(sid)
    assert snap.status.value == "RUNNING" and snap.lease_owner is None
    assert snap.deadline_at is not None
    assert before + timedelta(minutes=10) <= snap.deadline_at <= after + timedelta(minutes=10)
    assert await w.orch.run_due() == 0
    assert h.probe.effects["a"] == 0
    assert (await w.admin.due_summary())[0] == 0, "not counted as due"
    # Active for its aggregation id meanwhile.
    with pytest.raises(ActiveSagaAlreadyExistsError):
        await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="d-1")


async def test_it_runs_once_due(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    sid = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="d-2", run_at=timedelta(seconds=0.6)
    )
    assert await w.orch.run_due() == 0

    async def ran() -> bool:
        await w.orch.run_due()
        return (await w.orch.get_snapshot(sid)).status.value == "COMPLETED"

    await eventually(ran, what="the delayed saga to run")
    assert h.probe.effects["a"] == 1


async def test_an_absolute_time(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="d-3", run_at=when)
    assert (await w.orch.get_snapshot(sid)).deadline_at == when
    assert await w.orch.run_due() == 0
    # Any zone: the same instant.
    zoned = when.astimezone(timezone(timedelta(hours=5)))
    other = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="d-3b", run_at=zoned
    )
    assert (await w.orch.get_snapshot(other)).deadline_at == when
    past = datetime.now(UTC) - timedelta(minutes=5)
    old = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="d-4", run_at=past)
    assert await w.orch.run_due() == 1
    assert (await w.orch.get_snapshot(old)).status.value == "COMPLETED"


async def test_inline_needs_a_saga_that_is_due(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    for run_at in (timedelta(seconds=30), datetime.now(UTC) + timedelta(minutes=1)):
        with pytest.raises(SagaError, match="run_at in the future"):
            await w.orch.start(
                saga_name="flow", initial_data={}, aggregation_id="d-5", run_at=run_at, inline=True
            )
    assert await h.count() == 0
    sid = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="d-5", run_at=timedelta(0), inline=True
    )
    assert (await w.orch.get_snapshot(sid)).status.value == "COMPLETED"


@pytest.mark.parametrize(
    "run_at",
    [datetime(2030, 1, 1), timedelta(seconds=-1), 5, "tomorrow"],
    ids=["naive", "negative", "number", "text"],
)
async def test_bad_run_at_is_refused_before_anything_is_written(h: Harness, run_at: object) -> None:
    define_standard(h)
    w = await h.worker()
    with pytest.raises(SagaInputError, match="run_at"):
        await w.orch.start(
            saga_name="flow",
            initial_data={},
            aggregation_id="d-6",
            run_at=run_at,  # type: ignore[arg-type]
        )
    assert await h.count() == 0


@pytest.mark.sql_only  # the caller's SQLAlchemy session
async def test_with_the_callers_session_and_an_idempotency_key(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    async with w.orch.engine.session_maker() as session, session.begin():
        sid = await w.orch.start(
            saga_name="flow",
            initial_data={},
            aggregation_id="d-7",
            session=session,
            run_at=timedelta(hours=1),
            idempotency_key="later",
        )
    snap = await w.orch.get_snapshot(sid)
    assert snap.deadline_at is not None and snap.deadline_at > await h.db_now()
    # A repeated start returns it, and does not move its due time.
    again = await w.orch.start(
        saga_name="flow", initial_data={}, aggregation_id="d-7", idempotency_key="later"
    )
    assert again == sid
    assert (await w.orch.get_snapshot(sid)).deadline_at == snap.deadline_at
    assert await w.orch.run_due() == 0
