"""``register(name, definition, version=)``: versions are positive ints, each (name, version)
once per orchestrator, the latest is the highest; the registry of one engine copies whole;
what the worker registry rows say a worker runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import BaseStep, SagaBuilder, SagaDefinition, SagaDefinitionError, SagaOrchestrator
from saga_core.store.base import WorkerRow
from saga_core.versioning import Definitions, advertised_pairs, find_orphans, live_workers


class In(BaseModel):
    n: int = 0


class Out(BaseModel):
    n: int = 0


class Step(BaseStep[In, Out]):
    async def execute(self, inp: In) -> Out:
        return Out(n=inp.n)


def definition(*ids: str) -> SagaDefinition:
    b = SagaBuilder()
    for sid in ids:
        b.add_step(step=Step(), step_id=sid, input_map=lambda _ctx: In())
    return b.build()


@pytest.fixture
def orch(tmp_path: Path) -> SagaOrchestrator[Any]:
    # No connection is made until the database is used.
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    return SagaOrchestrator(session_maker=async_sessionmaker(engine))


def test_versions_side_by_side_latest_is_highest(orch: SagaOrchestrator[Any]) -> None:
    v1, v2, v5 = definition("a"), definition("a", "b"), definition("a", "b", "c")
    orch.register("flow", v2, version=2)
    orch.register("flow", v5, version=5)
    orch.register("flow", v1)
    defs = orch.engine.definitions
    assert defs["flow"] is v5 and defs.latest_version("flow") == 5
    assert defs.versions("flow") == [1, 2, 5]
    assert [orch.engine.definition_for("flow", v) for v in (1, 2, 5)] == [v1, v2, v5]
    assert orch.engine.definition_for("flow", 3) is None
    assert orch.engine.definition_for("nope", 1) is None
    assert orch.saga_names == ["flow"] and len(defs) == 1 and list(defs) == ["flow"]
    assert defs.advertised() == {"flow": [1, 2, 5]}


@pytest.mark.parametrize("bad", [0, -1, True, False, "2", 1.0, None, 2**31])
def test_bad_version_is_refused_and_nothing_registered(
    orch: SagaOrchestrator[Any], bad: Any
) -> None:
    with pytest.raises(SagaDefinitionError, match="version of saga 'flow' must be"):
        orch.register("flow", definition("a"), version=bad)
    assert orch.saga_names == [] and orch.engine.definitions.pairs() == []


def test_same_name_and_version_twice_is_refused(orch: SagaOrchestrator[Any]) -> None:
    v1 = definition("a")
    orch.register("flow", v1)
    with pytest.raises(SagaDefinitionError, match="'flow' is already registered"):
        orch.register("flow", definition("a", "b"))  # no version: 1 again
    with pytest.raises(SagaDefinitionError, match="'flow' is already registered"):
        orch.register("flow", definition("a", "b"), version=1)
    orch.register("flow", definition("x"), version=2)
    with pytest.raises(SagaDefinitionError, match="already registered as version 2"):
        orch.register("flow", definition("y"), version=2)
    assert orch.engine.definition_for("flow", 1) is v1, "the first registration stands"
    assert orch.engine.definitions.pairs() == [("flow", 1), ("flow", 2)]


def test_update_copies_every_version() -> None:
    """What sagad does when it rebinds an orchestrator to another database URL."""
    src, dst = Definitions(), Definitions()
    v1, v2, o = definition("a"), definition("a", "b"), definition("o")
    src.add("flow", 1, v1)
    src.add("flow", 2, v2)
    src.add("other", 3, o)
    dst.update(src)
    assert dst.pairs() == [("flow", 1), ("flow", 2), ("other", 3)]
    assert dst.get_version("flow", 1) is v1 and dst["flow"] is v2


def _worker(**kw: Any) -> WorkerRow:
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "id": "w",
        "host": "h",
        "pid": 1,
        "version": "x",
        "started_at": now,
        "heartbeat_at": now,
        "in_flight": 0,
        "concurrency": 1,
        "saga_names": ["flow"],
        "stopped_at": None,
        "info": {"tables": ["t"]},
    }
    return WorkerRow(**{**base, **kw})


def test_advertised_pairs_and_legacy_rows() -> None:
    assert advertised_pairs({"t": {"flow": [1, 2]}, "u": {"x": [1]}}, ["flow", "x"], "t") == (
        {("flow", 1), ("flow", 2)},
        set(),
    )
    assert advertised_pairs({"u": {"x": [1]}}, ["x"], "t") == (set(), set())
    # Junk is ignored, not fatal.
    assert advertised_pairs({"t": {"flow": [1, "2", True], "x": "no"}}, [], "t") == (
        {("flow", 1)},
        set(),
    )
    # A worker from before versioning runs any version of its names.
    assert advertised_pairs({}, ["flow"], "t") == (set(), {"flow"})


def test_find_orphans_and_liveness() -> None:
    now = datetime.now(UTC)
    old = now - timedelta(hours=1)
    summary = [("flow", 1, 3, old), ("flow", 2, 1, now), ("other", 1, 2, now)]
    v2 = _worker(id="v2", saga_versions={"t": {"flow": [2]}})
    got = find_orphans(summary, [v2], table="t")
    assert [(g.saga_name, g.definition_version, g.count, g.live_versions) for g in got] == [
        ("flow", 1, 3, [2]),
        ("other", 1, 2, []),
    ]
    assert got[0].oldest_created_at == old
    legacy = _worker(id="legacy", saga_names=["other"])
    assert [g.saga_name for g in find_orphans(summary, [v2, legacy], table="t")] == ["flow"]
    legacy_elsewhere = _worker(id="l2", saga_names=["flow"], info={"tables": ["u"]})
    assert len(find_orphans(summary, [legacy_elsewhere], table="t")) == 3
    stale = _worker(id="s", heartbeat_at=now - timedelta(seconds=31))
    stopped = _worker(id="x", stopped_at=now)
    assert [w.id for w in live_workers([v2, stale, stopped], now, 30.0)] == ["v2"]
