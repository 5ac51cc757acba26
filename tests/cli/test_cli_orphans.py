"""Definition versions in sagactl: ``orphans`` (text and JSON) lists active sagas of a
(name, version) no live worker runs; ``list``, ``show``, ``workers`` and ``stats`` show
versions."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from cli_app import build, definition
from cli_helpers import CliFn
from cli_seed import Seeded

from saga_core import NoRetry
from sagactl.appload import bare_orchestrator, make_engine


def _start_v2(url: str) -> uuid.UUID:
    """An ``order`` saga started under version 2 (due now, never run)."""

    async def work() -> uuid.UUID:
        orch = build(url)
        try:
            orch.register("order", definition(charge_retry=NoRetry(), rollback=True), version=2)
            return await orch.start(
                saga_name="order", initial_data={"order_id": "v2"}, aggregation_id="agg-v2"
            )
        finally:
            await orch.engine.sql_engine.dispose()

    return asyncio.run(work())


def _heartbeat(url: str, worker_id: str, versions: dict[str, list[int]]) -> None:
    async def work() -> None:
        engine = make_engine(url)
        try:
            store = bare_orchestrator(engine, "saga_state").engine.store
            await store.worker_heartbeat(
                {
                    "id": worker_id,
                    "host": "box1",
                    "pid": 7,
                    "version": "0.1.0",
                    "in_flight": 0,
                    "concurrency": 8,
                    "saga_names": sorted(versions),
                    "saga_versions": {"saga_state": versions},
                    "info": {"tables": ["saga_state"]},
                }
            )
        finally:
            await engine.dispose()

    asyncio.run(work())


def _groups(data: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(g["saga_name"], g["definition_version"], g["count"]) for g in data["orphans"]]


def test_orphans_without_workers_lists_every_active_saga(cli: CliFn, seeded: Seeded) -> None:
    r = cli("orphans", "-o", "json")
    assert r.exit_code == 0, r.stderr
    data = r.json()
    # running, held and suspended `order` sagas; the compensating `order_fast` one. The
    # FAILED `order_manual` saga waits for an operator: not an orphan.
    assert _groups(data) == [("order", 1, 3), ("order_fast", 1, 1)]
    assert data["live_workers"] == 0 and data["total"] == 4
    assert "no live sagad worker is registered" in r.stderr
    assert cli("orphans", "--ids", "--limit", "0").exit_code == 2, "a usage error"


def test_orphans_text_and_json_with_a_v2_worker(
    cli: CliFn, seeded: Seeded, pg_url: str, get_saga: Any
) -> None:
    v2 = _start_v2(pg_url)
    _heartbeat(pg_url, "w-v2", {"order": [2], "order_fast": [1], "order_manual": [1]})

    r = cli("orphans")
    assert r.exit_code == 0, r.stderr
    line = next(ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("order "))
    assert line.split()[:3] == ["order", "v1", "3"] and line.rstrip().endswith("v2")
    assert "order_fast" not in r.stdout, "a live worker runs order_fast v1"
    assert "3 active saga(s) in 1 (name, version) group(s)" in r.stderr
    assert "no live sagad worker" not in r.stderr

    data = cli("orphans", "-o", "json", "--ids").json()
    assert data["live_workers"] == 1 and data["total"] == 3
    (group,) = data["orphans"]
    expected = [seeded["suspended"], seeded["running"], seeded["held"]]  # oldest first
    assert group == {
        "saga_name": "order",
        "definition_version": 1,
        "count": 3,
        "oldest_created_at": group["oldest_created_at"],
        "live_versions": [2],
        "ids": [str(i) for i in expected],
    }
    oldest = get_saga(seeded["suspended"]).created_at
    assert group["oldest_created_at"] == oldest.isoformat().replace("+00:00", "Z")
    assert str(v2) not in group["ids"]
    assert (
        len(cli("orphans", "-o", "json", "--ids", "--limit", "1").json()["orphans"][0]["ids"]) == 1
    )
    lines = cli("orphans", "-o", "jsonl").lines()
    assert [(g["saga_name"], g["definition_version"]) for g in lines] == [("order", 1)]
    text_ids = cli("orphans", "--ids").stdout
    assert all(str(i) in text_ids for i in expected)

    # stats warns; workers, list and show carry the versions.
    stats = cli("stats")
    assert "warning: 3 active saga(s) of a version no live worker runs: order v1 (3)" in (
        stats.stdout.replace("\n", " ")
    )
    sj = cli("stats", "-o", "json").json()
    assert sj["orphaned"] == 3 and _groups({"orphans": sj["orphans"]}) == [("order", 1, 3)]
    w = cli("workers")
    assert "order v2, order_fast v1, order_manual v1" in w.stdout
    assert cli("workers", "-o", "json").json()["workers"][0]["saga_versions"] == {
        "saga_state": {"order": [2], "order_fast": [1], "order_manual": [1]}
    }
    listing = cli("list", "--name", "order")
    assert "VER" in listing.stdout.splitlines()[1]
    assert " v2 " in next(ln for ln in listing.stdout.splitlines() if str(v2)[:8] in ln)
    assert cli("list", "-o", "json").json()["sagas"][0]["definition_version"] in (1, 2)
    assert "version 2, fingerprint" in cli("show", str(v2)).stdout
    assert cli("show", str(v2), "-o", "json").json()["definition_version"] == 2

    # A worker with v1 of order starts: no orphans left.
    _heartbeat(pg_url, "w-v1", {"order": [1]})
    r = cli("orphans")
    assert r.exit_code == 0 and r.stdout == ""
    assert "no orphans" in r.stderr
    assert cli("orphans", "-o", "json").json()["orphans"] == []
    assert "warning" not in cli("stats").stdout
