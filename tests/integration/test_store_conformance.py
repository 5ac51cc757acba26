"""The store conformance suite: the persistence seam (``SagaStore``) behaves the same on
PostgreSQL, SQLite and the in-memory store of ``saga_core.testing`` (``ALSO_IN_MEMORY``).
Rows are written through the store itself, never through the ORM."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from itkit import Harness

from saga_core import ActiveSagaAlreadyExistsError, SagaNotFoundError
from saga_core.lease import LeaseLost
from saga_core.store import (
    Checkpoint,
    DeadlineChange,
    LeaseChange,
    RowUpdate,
    SagaFilter,
    SagaRow,
)

ALSO_IN_MEMORY = True
"""Every test here runs on the three stores: pg, sqlite and memory."""

LEASE = timedelta(seconds=30)


def values(**overrides: Any) -> dict[str, Any]:
    """A complete new saga row, due now unless ``deadline_at`` is given."""
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "saga_name": "flow",
        "aggregation_id": f"agg-{uuid.uuid4().hex[:8]}",
        "status": "RUNNING",
        "phase": "execute",
        "current_step_index": 0,
        "steps_state": [
            {"step_id": "a", "status": "PENDING", "attempts": 0, "compensation_attempts": 0}
        ],
        "step_execution_token": uuid.uuid4(),
        "context": {"initial_data": {"x": 1}},
        "step_history": [],
        "lease_owner": None,
        "retry_counter": 0,
        "takeover_count": 0,
        "last_error": None,
        "definition_fingerprint": "fp",
        "trace_id": "trace",
    }
    row.update(overrides)
    return row


NAMES = pytest.mark.parametrize(
    "names", [("flow",), None], ids=["by-name", "any-name"]
)  # the engine always claims by name (PostgreSQL's fast path); the store also takes None


async def claim(
    h: Harness,
    *,
    owner: str,
    lease: timedelta = LEASE,
    limit: int,
    saga_ids: list[uuid.UUID] | None = None,
    names: tuple[str, ...] | None = ("flow",),
) -> list[SagaRow]:
    return await h.store.saga_claim(
        owner=owner,
        lease=lease,
        limit=limit,
        saga_names=None if names is None else list(names),
        saga_ids=saga_ids,
    )


async def insert(h: Harness, **overrides: Any) -> uuid.UUID:
    v = values(**overrides)
    await h.store.saga_insert(v)
    return uuid.UUID(str(v["id"]))


async def test_insert_and_read_back(h: Harness) -> None:
    sid = await insert(h, context={"initial_data": {"text": "żółw", "nested": [1, 2.5, None]}})
    row = await h.row(sid)
    now = await h.db_now()
    assert row.status == "RUNNING"
    assert row.context == {"initial_data": {"text": "żółw", "nested": [1, 2.5, None]}}
    assert row.step_history == []
    assert row.created_at.tzinfo is not None and row.deadline_at is not None
    assert row.deadline_at <= now, "a new saga is due at once"
    assert now.utcoffset() == timedelta(0)
    assert await h.store.saga_get(uuid.uuid4()) is None


async def test_one_active_saga_per_aggregation_id(h: Harness) -> None:
    await insert(h, aggregation_id="order-1")
    with pytest.raises(ActiveSagaAlreadyExistsError):
        await insert(h, aggregation_id="order-1")
    with pytest.raises(ActiveSagaAlreadyExistsError):
        await insert(h, aggregation_id="order-1", status="FAILED", deadline_at=None)
    # Finished sagas do not count.
    await insert(h, aggregation_id="order-2", status="COMPLETED", deadline_at=None)
    await insert(h, aggregation_id="order-2", status="ABORTED", deadline_at=None)
    await insert(h, aggregation_id="order-2")
    assert await h.count() == 4


async def test_claim_takes_only_due_claimable_rows(h: Harness) -> None:
    future = datetime.now(UTC) + timedelta(hours=1)
    due = await insert(h)
    suspended_due = await insert(h, status="SUSPENDED")
    compensating_due = await insert(h, status="COMPENSATING", phase="compensate")
    await insert(h, deadline_at=future)  # not due yet
    await insert(h, status="SUSPENDED", deadline_at=None)  # waits for an event
    await insert(h, status="FAILED", deadline_at=None)
    await insert(h, status="COMPLETED", deadline_at=None)
    await insert(h, saga_name="other")

    rows = await claim(h, owner="w1", lease=LEASE, limit=10)
    assert {r.id for r in rows} == {due, suspended_due, compensating_due}
    by_id = {r.id: r for r in rows}
    assert by_id[suspended_due].status == "RUNNING", "a claim ends the retry wait"
    assert by_id[compensating_due].status == "COMPENSATING"
    assert not await claim(h, owner="w2", lease=LEASE, limit=10)


@NAMES
async def test_claim_rotates_token_and_takes_a_lease(
    h: Harness, names: tuple[str, ...] | None
) -> None:
    sid = await insert(h)
    before = await h.row(sid)
    (claimed,) = await claim(h, owner="w1", lease=LEASE, limit=1, names=names)
    after = await h.row(sid)
    now = await h.db_now()
    assert claimed.id == sid
    assert claimed.lease_token is not None and claimed.lease_token != before.lease_token
    assert after.lease_token == claimed.lease_token
    assert after.step_execution_token == before.step_execution_token, "step tokens survive"
    assert after.lease_owner == "w1"
    assert after.deadline_at is not None
    assert now + LEASE - timedelta(seconds=5) < after.deadline_at <= now + LEASE
    assert after.takeover_count == 0
    assert after.step_history == before.step_history


def token_of(row: SagaRow) -> uuid.UUID:
    assert row.lease_token is not None, "a claimed row carries its lease token"
    return row.lease_token


async def test_a_hold_checkpoint_extends_a_lease_that_runs_short(h: Harness) -> None:
    """The write between two steps extends the lease, by the database clock, once less
    than half of it is left: a worker never starts a step on a lease about to run out."""
    sid = await insert(h)
    lease = h.store.lease  # what a renewal extends to
    (row,) = await claim(h, owner="w1", lease=lease, limit=1)
    keep = RowUpdate(history=[], deadline=DeadlineChange.HOLD)

    async def hold() -> float:
        (res,) = await h.store.saga_checkpoint([Checkpoint(sid, token_of(row), keep)])
        assert res is not None and res.lease_left is not None
        return res.lease_left

    first = (await h.row(sid)).deadline_at
    assert await hold() > lease.total_seconds() / 2
    assert (await h.row(sid)).deadline_at == first, "more than half left: unchanged (HOT)"

    def expires_in(seconds: float) -> Any:
        def set_deadline(r: Any, now: datetime) -> RowUpdate:
            return RowUpdate(deadline=DeadlineChange.AFTER, delay=timedelta(seconds=seconds))

        return h.store.saga_update_locked(sid, set_deadline)

    await expires_in(5)
    assert await hold() > lease.total_seconds() - 10, "5 s left: extended"
    await expires_in(-1)
    assert (await h.row(sid)).lease_owner == "w1"
    assert await hold() > lease.total_seconds() - 10, (
        "run out, but nobody took it (the token matched): extended"
    )


async def test_unclaim_releases_what_an_owner_does_not_run(h: Harness) -> None:
    a, b = await insert(h), await insert(h)
    rows = await claim(h, owner="w1", lease=LEASE, limit=2)
    assert {r.id for r in rows} == {a, b}
    assert await h.store.saga_unclaim("w1", [a]) == 1
    ra, rb = await h.row(a), await h.row(b)
    assert ra.lease_owner == "w1" and rb.lease_owner is None
    assert rb.lease_token != token_of(next(r for r in rows if r.id == b)), "old token spent"
    (again,) = await claim(h, owner="w2", lease=LEASE, limit=5)
    assert again.id == b and (await h.row(b)).recovery_count == 0, "no recovery counted"


async def test_update_locked_fenced_by_the_lease(h: Harness) -> None:
    sid = await insert(h)
    (row,) = await claim(h, owner="w1", lease=LEASE, limit=1)

    def bump(r: Any, now: datetime) -> RowUpdate:
        return RowUpdate(retry_counter=r.retry_counter + 1)

    with pytest.raises(LeaseLost):
        await h.store.saga_update_locked(sid, bump, lease_token=uuid.uuid4())
    new, applied = await h.store.saga_update_locked(sid, bump, lease_token=token_of(row))
    assert applied and new.retry_counter == 1


async def test_inbox_written_under_the_lock_and_flagged_by_checkpoints(h: Harness) -> None:
    sid = await insert(h)
    (row,) = await claim(h, owner="w1", lease=LEASE, limit=1)
    assert not await h.store.saga_inbox_pending(sid)
    item = {"event_id": "e1", "token": None, "name": "x", "event": {"n": 1}}

    def put(r: Any, now: datetime) -> RowUpdate:
        return RowUpdate(inbox=[item], set_inbox=True)

    await h.store.saga_update_locked(sid, put)
    assert await h.store.saga_inbox_pending(sid)
    (res,) = await h.store.saga_checkpoint([Checkpoint(sid, token_of(row), RowUpdate(history=[]))])
    assert res is not None and res.inbox is True
    assert (await h.row(sid)).inbox == [item]

    def take(r: Any, now: datetime) -> RowUpdate:
        return RowUpdate(inbox=None, set_inbox=True)

    await h.store.saga_update_locked(sid, take)
    assert not await h.store.saga_inbox_pending(sid)
    assert (await h.row(sid)).inbox is None


@NAMES
async def test_claim_limit_and_ids(h: Harness, names: tuple[str, ...] | None) -> None:
    ids = [await insert(h) for _ in range(5)]
    picked = await claim(h, owner="w1", lease=LEASE, limit=5, saga_ids=[ids[4]], names=names)
    assert [r.id for r in picked] == [ids[4]]
    first = await claim(h, owner="w1", lease=LEASE, limit=2, names=names)
    assert len(first) == 2
    rest = await claim(h, owner="w1", lease=LEASE, limit=10, names=names)
    assert len(rest) == 2
    assert {r.id for r in [*picked, *first, *rest]} == set(ids)
    assert await claim(h, owner="w1", lease=LEASE, limit=0, names=names) == []


@NAMES
async def test_expired_lease_is_taken_over_and_counted(
    h: Harness, names: tuple[str, ...] | None
) -> None:
    sid = await insert(h)
    (first,) = await claim(h, owner="w1", lease=timedelta(seconds=1), limit=1, names=names)
    await h.wait_lease_expired(sid)
    (second,) = await claim(h, owner="w2", lease=LEASE, limit=1, names=names)
    row = await h.row(sid)
    assert second.lease_token != first.lease_token
    assert row.lease_owner == "w2"
    assert row.takeover_count == 1


async def test_checkpoint_is_fenced_by_the_token(h: Harness) -> None:
    sid = await insert(h)
    (old,) = await claim(h, owner="w1", lease=timedelta(seconds=1), limit=1)
    await h.wait_lease_expired(sid)
    (new,) = await claim(h, owner="w2", lease=LEASE, limit=1)
    before = await h.row(sid)

    stale = RowUpdate(
        status="COMPLETED",
        current_step_index=1,
        context={"stale": True},
        history=[{"phase": "execute", "step_id": "a", "status": "SUCCESS", "attempt": 1}],
        deadline=DeadlineChange.CLEAR,
        lease=LeaseChange.RELEASE,
        finished=True,
    )
    assert old.lease_token is not None and new.lease_token is not None
    assert await h.store.saga_checkpoint([Checkpoint(sid, old.lease_token, stale)]) == [None]
    assert await h.row(sid) == before, "a stale checkpoint changes nothing"

    fresh = RowUpdate(
        context={"fresh": True},
        history=[{"phase": "execute", "step_id": "a", "status": "SUCCESS", "attempt": 1}],
    )
    (res,) = await h.store.saga_checkpoint([Checkpoint(sid, new.lease_token, fresh)])
    assert res is not None and res.lease_left is not None
    assert LEASE.total_seconds() - 10 < res.lease_left <= LEASE.total_seconds()
    assert res.inbox is False
    row = await h.row(sid)
    assert row.context == {"fresh": True}
    assert row.step_history == fresh.history
    assert row.lease_owner == "w2"


async def test_checkpoint_batch_reports_per_row(h: Harness) -> None:
    a, b = await insert(h), await insert(h)
    rows = {r.id: r for r in await claim(h, owner="w1", lease=LEASE, limit=2)}
    done = RowUpdate(
        status="COMPLETED", deadline=DeadlineChange.CLEAR, lease=LeaseChange.RELEASE, finished=True
    )
    later = RowUpdate(
        status="SUSPENDED",
        retry_counter=1,
        deadline=DeadlineChange.AFTER,
        delay=timedelta(seconds=60),
        lease=LeaseChange.RELEASE,
    )
    results = await h.store.saga_checkpoint(
        [
            Checkpoint(a, token_of(rows[a]), done),
            Checkpoint(b, uuid.uuid4(), done),
            Checkpoint(b, token_of(rows[b]), later),
        ]
    )
    assert results[0] is not None and results[0].lease_left is None, "released"
    assert results[1] is None, "fenced out"
    assert results[2] is not None and results[2].lease_left is None
    assert (await h.row(b)).deadline_at > await h.db_now() + timedelta(seconds=50)
    ra, rb = await h.row(a), await h.row(b)
    assert (ra.status, ra.deadline_at, ra.lease_owner) == ("COMPLETED", None, None)
    assert ra.finished_at is not None
    assert (rb.status, rb.retry_counter, rb.lease_owner) == ("SUSPENDED", 1, None)


async def test_history_appends_in_order(h: Harness) -> None:
    sid = await insert(h)
    (row,) = await claim(h, owner="w1", lease=LEASE, limit=1)
    batches: list[list[dict[str, Any]]] = [
        [{"phase": "execute", "step_id": "a", "status": "ERROR", "attempt": 1, "x": 1.5}],
        [
            {
                "phase": "execute",
                "step_id": "a",
                "status": "SUCCESS",
                "attempt": 2,
                "o": {"k": [1]},
            },
            {"phase": "event", "step_id": None, "status": "RECEIVED", "attempt": 0, "u": "ü"},
        ],
    ]
    for batch in batches:
        upd = RowUpdate(history=batch)
        assert await h.store.saga_checkpoint([Checkpoint(sid, token_of(row), upd)]) != [None]
    assert (await h.row(sid)).step_history == [*batches[0], *batches[1]]


async def test_renew_lease_is_fenced(h: Harness) -> None:
    sid = await insert(h)
    (row,) = await claim(h, owner="w1", lease=LEASE, limit=1)
    before = await h.row(sid)
    assert await h.store.saga_renew_lease(sid, uuid.uuid4()) is None
    assert await h.row(sid) == before
    left = await h.store.saga_renew_lease(sid, token_of(row))
    lease = h.store.lease.total_seconds()  # a renewal gives the store's lease
    assert left is not None and lease - 10 < left <= lease
    after = (await h.row(sid)).deadline_at
    assert after is not None and before.deadline_at is not None and after >= before.deadline_at


@pytest.mark.parametrize("outcome", ["released", "suspended", "completed"])
async def test_renew_after_the_lease_was_given_up_changes_nothing(h: Harness, outcome: str) -> None:
    """A renewal racing the worker's own last checkpoint (the lease keeper runs in its own
    task) must not put a lease back on a row the worker has let go: that would make a
    finished saga look leased, or bring a retry forward."""
    sid = await insert(h)
    (row,) = await claim(h, owner="w1", lease=LEASE, limit=1)
    token = token_of(row)
    if outcome == "released":
        assert await h.store.saga_release(sid, token, None)
    else:
        upd = (
            RowUpdate(
                status="SUSPENDED",
                deadline=DeadlineChange.AFTER,
                delay=timedelta(hours=1),
                lease=LeaseChange.RELEASE,
            )
            if outcome == "suspended"
            else RowUpdate(
                status="COMPLETED",
                deadline=DeadlineChange.CLEAR,
                lease=LeaseChange.RELEASE,
                finished=True,
            )
        )
        assert await h.store.saga_checkpoint([Checkpoint(sid, token, upd)]) != [None]
    before = await h.row(sid)
    assert await h.store.saga_renew_lease(sid, token) is None
    assert await h.row(sid) == before


async def test_release_makes_the_saga_due_for_anyone(h: Harness) -> None:
    sid = await insert(h)
    (row,) = await claim(h, owner="w1", lease=LEASE, limit=1)
    assert not await h.store.saga_release(sid, uuid.uuid4(), None)
    note = {"phase": "execute", "step_id": "a", "status": "INTERRUPTED", "attempt": 0}
    assert await h.store.saga_release(sid, token_of(row), note)
    after = await h.row(sid)
    assert after.lease_owner is None
    assert after.deadline_at is not None and after.deadline_at <= await h.db_now()
    assert after.step_history == [note]
    (again,) = await claim(h, owner="w2", lease=LEASE, limit=1)
    assert again.id == sid
    assert (await h.row(sid)).takeover_count == 0, "a released saga is not a takeover"


async def test_update_locked(h: Harness) -> None:
    sid = await insert(h)
    before = await h.row(sid)

    seen: list[tuple[str, datetime]] = []

    def nothing(row: Any, now: datetime) -> None:
        seen.append((row.status, now))
        return None

    row, applied = await h.store.saga_update_locked(sid, nothing)
    assert not applied and row == await h.store.saga_get(sid) and row.id == sid
    assert seen[0][0] == "RUNNING" and seen[0][1].tzinfo is not None

    def refuse(row: Any, now: datetime) -> RowUpdate:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await h.store.saga_update_locked(sid, refuse)
    assert await h.row(sid) == before

    token = uuid.uuid4()

    def change(row: Any, now: datetime) -> RowUpdate:
        return RowUpdate(
            status="ABORTED",
            step_token=token,
            history=[{"phase": "admin", "step_id": "a", "status": "ABORT", "attempt": 0}],
            deadline=DeadlineChange.CLEAR,
            lease=LeaseChange.RELEASE,
            finished=True,
        )

    row, applied = await h.store.saga_update_locked(sid, change)
    assert applied
    assert (row.status, row.step_execution_token, row.deadline_at) == ("ABORTED", token, None)
    assert (await h.row(sid)).step_history == [
        {"phase": "admin", "step_id": "a", "status": "ABORT", "attempt": 0}
    ]
    with pytest.raises(SagaNotFoundError):
        await h.store.saga_update_locked(uuid.uuid4(), change)


async def test_update_locked_serialises_concurrent_writers(h: Harness) -> None:
    """Read-modify-write under the row lock: concurrent increments are never lost."""
    sid = await insert(h)

    def bump(row: Any, now: datetime) -> RowUpdate:
        return RowUpdate(retry_counter=row.retry_counter + 1)

    await asyncio.gather(*(h.store.saga_update_locked(sid, bump) for _ in range(10)))
    assert (await h.row(sid)).retry_counter == 10


async def test_list_count_and_due_summary(h: Harness) -> None:
    ids = []
    for i in range(5):
        ids.append(await insert(h, saga_name="flow" if i % 2 == 0 else "other"))
    await insert(h, status="FAILED", deadline_at=None, aggregation_id="agg-failed")

    listed = await h.store.saga_list(SagaFilter(), limit=100)
    assert [r.created_at for r in listed] == sorted((r.created_at for r in listed), reverse=True)
    assert len(listed) == 6
    assert all(r.step_history is None for r in listed), "lists leave the history out"
    assert len(await h.store.saga_list(SagaFilter(), limit=2)) == 2
    assert len(await h.store.saga_list(SagaFilter(), limit=100, offset=4)) == 2
    assert await h.store.saga_count(SagaFilter(saga_names=["flow"])) == 4
    assert await h.store.saga_count(SagaFilter(statuses=["FAILED"])) == 1
    assert await h.store.saga_count(SagaFilter(aggregation_id="agg-failed")) == 1
    assert await h.store.saga_count(SagaFilter(ids=ids[:2])) == 2
    stats = dict(((n, s), c) for n, s, c in await h.store.saga_stats())
    assert stats == {("flow", "RUNNING"): 3, ("other", "RUNNING"): 2, ("flow", "FAILED"): 1}
    due, oldest = await h.store.saga_due_summary()
    assert due == 5
    assert oldest is not None and oldest.tzinfo is not None and oldest <= await h.db_now()
    assert ids[0] in await h.store.saga_find_by_prefix(str(ids[0])[:8])
    assert await h.store.saga_find_by_prefix(str(ids[0])) == [ids[0]]


async def test_a_repeated_idempotency_key_returns_the_first_saga(h: Harness) -> None:
    first = await insert(h, idempotency_key="key-1", aggregation_id="order-9")
    again = values(idempotency_key="key-1", aggregation_id="order-9")
    existing = await h.store.saga_insert(again)
    assert existing is not None and existing.id == first
    assert existing.step_history is None, "returned without its history"
    assert await h.store.saga_insert(values(idempotency_key="key-2")) is None
    assert await h.count() == 2


async def test_claim_by_versions_and_suspects(h: Harness) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    v1, v2 = await insert(h), await insert(h, definition_version=2)
    lost = await insert(h, lease_owner="dead", recovery_count=1, deadline_at=past)
    picked = await h.store.saga_claim(
        owner="w1", lease=LEASE, limit=10, saga_names=["flow"], versions=[("flow", 2)]
    )
    assert [r.id for r in picked] == [v2]
    plain = await h.store.saga_claim(owner="w1", lease=LEASE, limit=10, suspects=False)
    assert [r.id for r in plain] == [v1], "a suspect is left out of ordinary claims"
    (suspect,) = await h.store.saga_claim(owner="w2", lease=LEASE, limit=10, suspects=True)
    assert suspect.id == lost
    row = await h.row(lost)
    assert (row.lease_owner, row.takeover_count, row.recovery_count) == ("w2", 1, 2)


def _refusal(reason: str) -> dict[str, Any]:
    from saga_core import history

    return history.refused(
        at=datetime.now(UTC).isoformat(),
        step_id="a",
        reason=reason,
        event={"n": 1},
        event_name=None,
        actor=None,
        note=None,
    )


async def test_deliver_writes_an_acceptance_or_a_bounded_refusal(h: Harness) -> None:
    sid = await insert(h, aggregation_id="order-7")
    before = await h.row(sid)
    for i in range(4):
        row, accepted = await h.store.saga_deliver(
            lambda r, now, i=i: _refusal(f"no {i}"), saga_id=sid, refusals_kept=2
        )
        assert not accepted and row.id == sid
    after = await h.row(sid)
    assert after.updated_at == before.updated_at, "a refusal changes nothing else"
    assert [e["status"] for e in after.step_history or []] == [
        "REFUSED",
        "REFUSED",
        "REFUSALS_UNRECORDED",
    ]
    counted = (after.step_history or [])[-1]
    assert counted["count"] == 2 and counted["last_reason"] == "no 3"

    def accept(r: SagaRow, now: datetime) -> RowUpdate:
        entry = {"phase": "event", "step_id": "a", "status": "RECEIVED", "attempt": 0}
        return RowUpdate(status="SUSPENDED", history=[entry])

    row, accepted = await h.store.saga_deliver(accept, aggregation_id="order-7")
    assert accepted and row.status == "RUNNING", "the row as it was read"
    assert (await h.row(sid)).status == "SUSPENDED"
    with pytest.raises(SagaNotFoundError):
        await h.store.saga_deliver(accept, aggregation_id="nobody")


async def test_deliver_by_aggregation_id_picks_the_active_saga_else_the_newest(
    h: Harness,
) -> None:
    old = await insert(h, aggregation_id="order-8", status="COMPLETED", deadline_at=None)
    active = await insert(h, aggregation_id="order-8")
    seen: list[uuid.UUID] = []

    def look(r: SagaRow, now: datetime) -> dict[str, Any]:
        seen.append(r.id)
        return _refusal("looked")

    await h.store.saga_deliver(look, aggregation_id="order-8")
    assert seen == [active]
    assert old != active


async def test_purge_deletes_old_finished_sagas_in_batches(h: Harness) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=30)
    done = [
        await insert(h, status="COMPLETED", deadline_at=None, finished_at=long_ago)
        for _ in range(3)
    ]
    recent = await insert(h, status="COMPLETED", deadline_at=None, finished_at=datetime.now(UTC))
    running = await insert(h)
    cutoff = datetime.now(UTC) - timedelta(days=1)
    assert await h.store.saga_purge(["COMPLETED"], cutoff, 2) == 2
    assert await h.store.saga_purge(["COMPLETED"], cutoff, 2) == 1
    assert await h.store.saga_purge(["COMPLETED"], cutoff, 2) == 0
    assert all([await h.store.saga_get(s) is None for s in done])
    assert await h.store.saga_get(recent) is not None
    assert await h.store.saga_get(running) is not None
