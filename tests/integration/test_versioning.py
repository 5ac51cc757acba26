"""Definition versioning: sagas run with the version they started under, new ones start under
the latest; a worker claims only the (name, version) pairs it registered and leaves the other
sagas untouched; the schema upgrade adds ``definition_version``; ``SagaAdmin.orphans`` lists
active sagas no live worker runs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from itkit import LONG_WAIT, Harness, Worker, chain, entries, make_model, unique_table_name
from sqlalchemy import MetaData, Table, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from saga_core import (
    FixedRetry,
    SagaDefinition,
    SagaInputError,
    SagaOrchestrator,
    schema_status,
)
from saga_core.rows import initial_steps_state
from saga_core.schema import SCHEMA_VERSION, upgrade_tables
from saga_core.state import SagaWorker
from saga_core.store.sql import WORKERS

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


async def versioned_worker(
    h: Harness, versions: dict[int, SagaDefinition], name: str = "flow", **options: Any
) -> Worker:
    """A worker with exactly ``versions`` of saga ``name`` registered."""
    w = await h.worker(definitions={}, **options)
    for version, definition in versions.items():
        w.orch.register(name, definition, version=version)
    return w


def step_ids_run(history: list[dict[str, Any]]) -> list[str]:
    return [e["step_id"] for e in entries(history, phase="execute") if e["status"] == "SUCCESS"]


async def test_in_flight_saga_keeps_its_version_new_ones_start_on_the_latest(h: Harness) -> None:
    p = h.probe
    # v1: a, b (b suspends for an hour when it fails). v2: a, b, c: different steps, so a
    # v1 saga run with v2's definition would fail DEFINITION_MISMATCH.
    v1 = chain(p, ["a", "b"], retry={"b": FixedRetry(3, LONG_WAIT)})
    v2 = chain(p, ["a", "b", "c"])
    assert v1.fingerprint != v2.fingerprint
    old = await versioned_worker(h, {1: v1})
    p.fail["b"] = 1
    first = await old.orch.start(
        saga_name="flow", initial_data={"n": 0}, aggregation_id="o1", inline=True
    )
    assert (await h.row(first)).status == "SUSPENDED", "in flight under v1"

    new = await versioned_worker(h, {1: v1, 2: v2})
    second = await new.orch.start(saga_name="flow", initial_data={"n": 0}, aggregation_id="o2")
    snap = await new.orch.get_snapshot(second)
    assert snap.definition_version == 2
    assert snap.definition_fingerprint == v2.fingerprint
    assert (await new.orch.get_snapshot(first)).definition_version == 1

    await new.admin.retry_step(first, reason="run b again")
    assert await new.drain() == 2
    row1, row2 = await h.row(first), await h.row(second)
    assert (row1.status, row2.status) == ("COMPLETED", "COMPLETED")
    assert step_ids_run(row1.step_history or []) == ["a", "b"], "v1's steps"
    assert step_ids_run(row2.step_history or []) == ["a", "b", "c"], "v2's steps"
    assert not [
        e
        for e in row1.step_history or []
        if e["status"] in ("DEFINITION_CHANGED", "DEFINITION_MISMATCH")
    ], "the v1 saga ran with v1's own definition"
    assert row1.definition_version == 1 and row1.definition_fingerprint == v1.fingerprint
    assert p.effects["c"] == 1, "only the v2 saga ran c"


async def test_worker_without_the_version_leaves_the_saga_untouched(h: Harness) -> None:
    p = h.probe
    v1, v2 = chain(p, ["a", "b"]), chain(p, ["a", "b", "c"])
    starter = await versioned_worker(h, {1: v1})
    sid = await starter.orch.start(saga_name="flow", initial_data={}, aggregation_id="o1")
    before = await h.row(sid)

    only_v2 = await versioned_worker(h, {2: v2})
    assert await only_v2.orch.run_due() == 0
    assert await only_v2.orch.engine.claim(10, saga_ids=[sid]) == []
    after = await h.row(sid)
    assert after == before, "same token, no lease, no history, not even updated_at"
    assert p.effects == {}

    # A v2 saga is likewise invisible to a worker with only v1.
    v2_saga = await only_v2.orch.start(saga_name="flow", initial_data={}, aggregation_id="o2")
    assert (await h.row(v2_saga)).definition_version == 2
    only_v1 = await versioned_worker(h, {1: v1})
    assert await only_v1.drain() == 1, "the v1 saga only"
    assert (await h.row(sid)).status == "COMPLETED"
    assert (await h.row(v2_saga)).status == "RUNNING"
    assert (await h.row(v2_saga)).step_history == []
    assert await only_v2.drain() == 1
    assert (await h.row(v2_saga)).status == "COMPLETED"


@pytest.mark.sql_only
async def test_store_claim_filters_on_pairs(h: Harness) -> None:
    """The store's claim by (name, version), on both of PostgreSQL's paths (the raw asyncpg
    statement with names, the SQLAlchemy one without) and on SQLite."""
    p = h.probe
    w1 = await versioned_worker(h, {1: chain(p, ["a"])})
    w = await versioned_worker(h, {1: chain(p, ["a"]), 3: chain(p, ["a", "b"])})
    w.orch.register("other", chain(p, ["a"]), version=2)
    ids = {}
    for starter, name, version, agg in (
        (w1, "flow", 1, "f1"),
        (w, "flow", 3, "f3"),
        (w, "other", 2, "o2"),
    ):
        ids[(name, version)] = await starter.orch.start(
            saga_name=name, initial_data={}, aggregation_id=agg
        )
        assert (await h.row(ids[(name, version)])).definition_version == version
    # A row of flow v2, a version no worker here has (written directly).
    table = h.model.__table__  # type: ignore[attr-defined]
    stray = uuid.uuid4()
    template = await h.row(ids[("flow", 1)])
    async with h.store.engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(
            insert(table).values(
                id=stray,
                saga_name="flow",
                aggregation_id="stray",
                status="RUNNING",
                phase="execute",
                current_step_index=0,
                steps_state=template.steps_state,
                step_execution_token=uuid.uuid4(),
                context=template.context,
                step_history=[],
                deadline_at=datetime.now(UTC) - timedelta(seconds=1),
                definition_fingerprint=template.definition_fingerprint,
                definition_version=2,
            )
        )
    store = w.orch.engine.store
    lease = timedelta(seconds=30)
    for names in (["flow", "other"], None):
        got = await store.saga_claim(
            owner=f"probe-{names is None}",
            lease=lease,
            limit=10,
            saga_names=names,
            versions=[("flow", 3), ("other", 2)],
        )
        assert {(r.saga_name, r.definition_version) for r in got} == {("flow", 3), ("other", 2)}
        assert all(r.id != stray for r in got)
        # Give them back (due now) for the next round.
        for r in got:
            assert r.lease_token is not None
            assert await store.saga_release(r.id, r.lease_token, None)
    assert await store.saga_claim(owner="x", lease=lease, limit=10, versions=[]) == []
    assert (await h.row(stray)).lease_owner is None and (await h.row(stray)).step_history == []


async def test_register_versions_on_one_orchestrator(h: Harness) -> None:
    p = h.probe
    v1, v2 = chain(p, ["a"]), chain(p, ["a", "b"])
    w = await h.worker(definitions={})
    orch = w.orch
    orch.register("flow", v2, version=2)
    orch.register("flow", v1)  # version 1, registered after 2: 2 is still the latest
    assert orch.engine.definitions["flow"] is v2
    assert orch.engine.definition_for("flow", 1) is v1
    assert orch.engine.definition_for("flow", 3) is None
    assert orch.engine.definitions.pairs() == [("flow", 1), ("flow", 2)]
    sid = await orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    snap = await orch.get_snapshot(sid)
    assert (snap.definition_version, snap.status.value) == (2, "COMPLETED")


async def test_skip_validates_against_the_sagas_own_version(h: Harness) -> None:
    p = h.probe
    # b's output model: OutV2 (with defaults for note and ratio) in v1, Out in v2.
    v1 = chain(p, ["a", "b"], retry={"b": FixedRetry(3, LONG_WAIT)}, v2=["b"])
    v2 = chain(p, ["a", "b"])
    old = await versioned_worker(h, {1: v1})
    p.fail["b"] = 1
    sid = await old.orch.start(saga_name="flow", initial_data={}, aggregation_id="o", inline=True)
    assert (await h.row(sid)).status == "SUSPENDED"

    only_v2 = await versioned_worker(h, {2: v2})
    before = await h.row(sid)
    with pytest.raises(SagaInputError, match=r"needs its definition \(version 1\)"):
        await only_v2.admin.skip_step(sid, mock_output={"n": 5}, reason="by hand")
    assert await h.row(sid) == before, "nothing changed"

    both = await versioned_worker(h, {1: v1, 2: v2})
    snap = await both.admin.skip_step(sid, mock_output={"n": 5}, reason="by hand")
    assert snap.status.value == "COMPLETED"
    assert (await h.row(sid)).context["step_outputs"]["b"] == {"n": 5, "note": "", "ratio": 0.0}


# --------------------------------------------------------------------------- schema upgrade


@pytest.fixture
async def sql(h: Harness) -> AsyncIterator[AsyncEngine]:
    engine = h.sql_engine()
    yield engine
    await engine.dispose()


@pytest.mark.sql_only
async def test_upgrade_adds_definition_version_existing_rows_are_v1(
    h: Harness, sql: AsyncEngine
) -> None:
    p = h.probe
    v1, v2 = chain(p, ["a"]), chain(p, ["a", "b"])
    model = make_model(unique_table_name("pre_v"))
    current: Table = model.__table__  # type: ignore[attr-defined]
    old = Table(
        current.name,
        MetaData(),
        *[c._copy() for c in current.columns if c.name != "definition_version"],
    )
    async with sql.begin() as conn:
        await conn.run_sync(old.create)
    old_id = uuid.uuid4()
    now = datetime.now(UTC)
    async with sql.begin() as conn:
        await conn.execute(
            insert(old).values(
                id=old_id,
                saga_name="flow",
                aggregation_id="old-1",
                status="RUNNING",
                phase="execute",
                current_step_index=0,
                steps_state=initial_steps_state(v1),
                step_execution_token=uuid.uuid4(),
                context={"initial_data": {}, "step_outputs": {}, "step_inputs": {}},
                step_history=[],
                deadline_at=now,
                retry_counter=0,
                takeover_count=0,
                recovery_count=0,
                definition_fingerprint=v1.fingerprint,
                created_at=now,
                updated_at=now,
            )
        )
    assert (await schema_status(sql, [model]))["tables"][current.name]["missing_columns"] == [
        "definition_version"
    ]
    only_v2 = SagaOrchestrator(model_class=model, session_maker=async_sessionmaker(sql))
    only_v2.register("flow", v2, version=2)
    both = SagaOrchestrator(model_class=model, session_maker=async_sessionmaker(sql))
    both.register("flow", v1)
    both.register("flow", v2, version=2)
    try:
        done = await both.create_tables()
        assert f"added column {current.name}.definition_version" in done
        assert await both.create_tables() == []
        status = await schema_status(sql, [model])
        assert status["up_to_date"] is True
        assert status["tables"][current.name]["version"] == SCHEMA_VERSION == 5

        assert (await both.get_snapshot(old_id)).definition_version == 1
        assert await only_v2.run_due() == 0, "a v2-only worker leaves the old row alone"
        assert await both.run_due() == 1
        row = await both.engine.store.saga_get(old_id)
        assert row is not None and row.status == "COMPLETED"
        assert step_ids_run(row.step_history or []) == ["a"], "ran as version 1"
        # A row inserted by code that does not know the column (an older release) is v1.
        legacy_id = uuid.uuid4()
        async with sql.begin() as conn:
            await conn.execute(
                insert(old).values(
                    id=legacy_id,
                    saga_name="flow",
                    aggregation_id="old-2",
                    status="COMPLETED",
                    phase="execute",
                    current_step_index=1,
                    steps_state=initial_steps_state(v1),
                    step_execution_token=uuid.uuid4(),
                    context={},
                    step_history=[],
                    retry_counter=0,
                    takeover_count=0,
                    recovery_count=0,
                    definition_fingerprint=v1.fingerprint,
                    created_at=now,
                    updated_at=now,
                )
            )
        assert (await both.get_snapshot(legacy_id)).definition_version == 1
    finally:
        async with sql.begin() as conn:
            await conn.run_sync(current.drop)


@pytest.mark.sql_only
async def test_upgrade_adds_saga_versions_to_an_older_worker_registry(sql: AsyncEngine) -> None:
    """The registry's new column on a copy of ``saga_workers`` (the real one is shared by
    the session's tests): added with an empty object, and rows written without it (an older
    sagad) read back as ``{}``."""
    name = unique_table_name("workers")
    md = MetaData()
    full = Table(name, md, *[c._copy() for c in SagaWorker.__table__.columns])
    old = Table(name, MetaData(), *[c._copy() for c in full.columns if c.name != "saga_versions"])
    async with sql.begin() as conn:
        await conn.run_sync(old.create)
    now = datetime.now(UTC)
    row = {
        "host": "h",
        "pid": 1,
        "version": "0.0.9",
        "started_at": now,
        "heartbeat_at": now,
        "in_flight": 0,
        "concurrency": 1,
        "saga_names": ["flow"],
        "info": {},
    }
    try:
        async with sql.begin() as conn:
            await conn.execute(insert(old).values(id="before", **row))
        done = await upgrade_tables(sql, [full])
        assert done == [f"added column {name}.saga_versions"]
        async with sql.begin() as conn:
            await conn.execute(insert(old).values(id="after", **row))  # an older sagad
            got = dict((await conn.execute(select(full.c.id, full.c.saga_versions))).all())
        assert got == {"before": {}, "after": {}}
    finally:
        async with sql.begin() as conn:
            await conn.run_sync(full.drop)
            await conn.execute(
                text("DELETE FROM saga_schema_version WHERE table_name = :t"), {"t": name}
            )


# --------------------------------------------------------------------------- orphans


def _unique(prefix: str) -> str:
    # Saga names of their own: the PostgreSQL registry is shared by the session's tests.
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.mark.sql_only
async def test_orphans_are_active_sagas_no_live_worker_runs(h: Harness) -> None:
    p = h.probe
    name, other = _unique("ship"), _unique("bill")
    app = await h.worker(definitions={})
    app.orch.register(name, chain(p, ["a"]))
    app.orch.register(name, chain(p, ["a", "b"]), version=2)
    app.orch.register(other, chain(p, ["a"]))
    start = app.orch.start
    v2_ids = [await start(saga_name=name, initial_data={}, aggregation_id="s2")]
    other_id = await start(saga_name=other, initial_data={}, aggregation_id="b1")
    # v1 sagas of `name`: started by an orchestrator that has only v1.
    old = await h.worker(definitions={})
    old.orch.register(name, chain(p, ["a"], retry={"a": FixedRetry(3, LONG_WAIT)}))
    v1_ids = [
        await old.orch.start(saga_name=name, initial_data={}, aggregation_id=f"s1-{i}")
        for i in range(2)
    ]
    p.fail["a"] = 1
    assert await old.orch.run_due() == 2
    status_of = {s: (await h.row(s)).status for s in v1_ids}
    assert sorted(status_of.values()) == ["COMPLETED", "SUSPENDED"]
    suspended = next(s for s, st in status_of.items() if st == "SUSPENDED")
    finished = next(s for s in v1_ids if s != suspended)
    v1_running = await old.orch.start(saga_name=name, initial_data={}, aggregation_id="s1-x")

    admin = app.admin
    store = h.store
    table = h.table_name
    # No worker at all: every active saga is an orphan (FAILED and finished ones are not).
    assert [(g.saga_name, g.definition_version, g.count) for g in await admin.orphans()] == sorted(
        [(other, 1, 1), (name, 1, 2), (name, 2, 1)]
    )

    base = {
        "host": "box",
        "pid": 1,
        "version": "test",
        "in_flight": 0,
        "concurrency": 1,
        "info": {"tables": [table]},
    }
    await store.worker_heartbeat(
        {
            **base,
            "id": _unique("w-v2"),
            "saga_names": [name, other],
            "saga_versions": {table: {name: [2], other: [1]}},
        }
    )
    # A stopped worker that ran v1 counts for nothing.
    stopped = _unique("w-stopped")
    await store.worker_heartbeat(
        {**base, "id": stopped, "saga_names": [name], "saga_versions": {table: {name: [1]}}}
    )
    await store.worker_stopped(stopped)
    # Nor does one advertising v1 for another table.
    await store.worker_heartbeat(
        {
            **base,
            "id": _unique("w-elsewhere"),
            "saga_names": [name],
            "saga_versions": {"another_table": {name: [1]}},
        }
    )
    groups = await admin.orphans()
    assert len(groups) == 1
    g = groups[0]
    assert (g.saga_name, g.definition_version, g.count, g.live_versions) == (name, 1, 2, [2])
    created = [(await h.row(s)).created_at for s in (suspended, v1_running)]
    assert g.oldest_created_at == min(created)
    ids = {
        s.id
        for s in await admin.list_sagas(
            saga_name=name, definition_version=1, status=["RUNNING", "SUSPENDED", "COMPENSATING"]
        )
    }
    assert ids == {suspended, v1_running} and finished not in ids
    assert {(s.id, s.definition_version) for s in await admin.list_sagas(saga_name=name)} >= {
        (v2_ids[0], 2),
        (suspended, 1),
    }

    # A worker from before versioning (no saga_versions) runs every version of its names.
    legacy = _unique("w-legacy")
    await store.worker_heartbeat({**base, "id": legacy, "saga_names": [name]})
    assert await admin.orphans() == []
    # ... until its heartbeat is older than stale_after (30 s by default).
    async with store.engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(
            update(WORKERS)
            .where(WORKERS.c.id == legacy)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(minutes=10))
        )
    assert [(g.saga_name, g.definition_version) for g in await admin.orphans()] == [(name, 1)]
    assert len(await admin.orphans(stale_after=3600)) == 0
    assert (await h.row(other_id)).status == "RUNNING"
