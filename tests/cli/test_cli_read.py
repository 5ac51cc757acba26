"""list, show, stats and workers against real sagas in every status, text and JSON."""

from __future__ import annotations

import asyncio
import uuid

from cli_app import build
from cli_helpers import CliFn
from cli_seed import LABELS, Seeded

from sagactl.appload import bare_orchestrator, make_engine

STATUS_OF = {
    "completed": "COMPLETED",
    "compensated": "COMPENSATED",
    "failed": "FAILED",
    "compensating": "COMPENSATING",
    "suspended": "SUSPENDED",
    "aborted": "ABORTED",
    "running": "RUNNING",
    "held": "RUNNING",
}


def test_list_text_shows_every_saga_with_its_columns(cli: CliFn, seeded: Seeded) -> None:
    r = cli("list")
    assert r.exit_code == 0, r.stderr
    header = r.stdout.splitlines()[1]
    for col in ("ID", "NAME", "STATUS", "STEP", "ATT", "AGE", "UPDATED", "WORKER", "LAST ERROR"):
        assert col in header
    for label in LABELS:
        line = next(ln for ln in r.stdout.splitlines() if str(seeded[label])[:8] in ln)
        assert STATUS_OF[label] in line
    held = next(ln for ln in r.stdout.splitlines() if str(seeded["held"])[:8] in ln)
    assert "worker-held" in held and "1/3 reserve" in held
    failed = next(ln for ln in r.stdout.splitlines() if str(seeded["failed"])[:8] in ln)
    assert "2/3 charge" in failed and "card declined" in failed
    comp = next(ln for ln in r.stdout.splitlines() if str(seeded["compensating"])[:8] in ln)
    assert "↩ 1/3 reserve" in comp and "warehouse API down" in comp
    assert "showing 1-8 of 8" in r.stderr


def test_list_json_shape_and_filters(cli: CliFn, seeded: Seeded) -> None:
    r = cli("list", "-o", "json", "--status", "failed,suspended")
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert data["total"] == 2 and data["offset"] == 0 and data["next_offset"] is None
    got = {s["id"]: s["status"] for s in data["sagas"]}
    assert got == {str(seeded["failed"]): "FAILED", str(seeded["suspended"]): "SUSPENDED"}
    saga = data["sagas"][0]
    for key in (
        "saga_name",
        "aggregation_id",
        "current_step_id",
        "total_steps",
        "retry_counter",
        "lease_owner",
        "step_execution_token",
        "last_error",
        "created_at",
        "updated_at",
    ):
        assert key in saga
    assert saga["created_at"].endswith("Z")
    # Options before or after the command alike; names and aggregation ids filter too.
    r = cli("-o", "jsonl", "list", "--name", "order_fast")
    assert {s["id"] for s in r.lines()} == {str(seeded["compensated"]), str(seeded["compensating"])}
    r = cli("list", "-o", "json", "-a", "agg-held")
    assert [s["id"] for s in r.json()["sagas"]] == [str(seeded["held"])]
    assert r.json()["sagas"][0]["lease_owner"] == "worker-held"


def test_list_paging_and_time_filters(cli: CliFn, seeded: Seeded) -> None:
    first = cli("list", "-o", "json", "--limit", "3").json()
    second = cli("list", "-o", "json", "--limit", "3", "--page", "2").json()
    assert first["total"] == 8 and first["next_offset"] == 3
    assert second["offset"] == 3 and len(second["sagas"]) == 3
    assert not {s["id"] for s in first["sagas"]} & {s["id"] for s in second["sagas"]}
    text = cli("list", "--limit", "3")
    assert "showing 1-3 of 8; next page: --page 2" in text.stderr
    assert cli("list", "-o", "json", "--since", "1h").json()["total"] == 8
    assert cli("list", "-o", "json", "--until", "1h").json()["total"] == 0
    assert cli("list", "-o", "json", "--since", "2000-01-01T00:00:00Z").json()["total"] == 8
    assert cli("list", "-o", "json", "--since", "2999-01-01").json()["total"] == 0


def test_list_bad_arguments_exit_2(cli: CliFn, seeded: Seeded) -> None:
    r = cli("list", "--since", "yesterday")
    assert r.exit_code == 2 and "not a duration" not in r.stdout
    assert "neither a duration" in r.stderr
    r = cli("list", "--status", "BROKEN")
    assert r.exit_code == 2 and "unknown status 'BROKEN'" in r.stderr
    r = cli("list", "-o", "yaml")
    assert r.exit_code == 2


def test_show_text_header_steps_and_timeline(cli: CliFn, seeded: Seeded) -> None:
    sid = str(seeded["compensating"])
    r = cli("show", sid[:6])
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    for text in (
        f"saga {sid}",
        "COMPENSATING",
        "order_fast",
        "agg-compensating",
        "trace id",
        "↩ 1/3 reserve",
        "lease",
        "due",
        "in 59m",
        str(seeded.tokens["compensating"]),
        "warehouse API down",
        "timeline",
        "steps",
    ):
        assert text in out, text
    timeline = out[out.index("timeline") :]
    rows = [ln for ln in timeline.splitlines() if ln.strip()[:1].isdigit()]
    assert len(rows) == 3
    assert "execute" in rows[0] and "reserve" in rows[0] and "SUCCESS" in rows[0]
    assert "charge" in rows[1] and "ERROR" in rows[1] and "card declined" in rows[1]
    assert "compensate" in rows[2] and "retry in 1h00m" in rows[2]


def test_show_draws_the_branches_of_a_parallel_saga(
    cli: CliFn, seeded: Seeded, pg_url: str
) -> None:
    async def start() -> str:
        orch = build(pg_url)
        try:
            sid = await orch.start(
                saga_name="order_parallel",
                initial_data={"order_id": "fail-7"},
                aggregation_id="agg-parallel",
                inline=True,
            )
            return str(sid)
        finally:
            await orch.engine.sql_engine.dispose()

    sid = asyncio.run(start())
    r = cli("show", sid)
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    steps = out[out.index("steps") : out.index("timeline")]
    head = next(ln for ln in steps.splitlines() if "AFTER" in ln)
    rows = [ln for ln in steps.splitlines() if ln.strip()[:1] in "▶0123456789" and ln.strip()]
    by_step = {
        name: next(r for r in rows if f" {name} " in r) for name in ("reserve", "charge", "pack")
    }
    by_step["ship"] = next(r for r in rows if r.rstrip().endswith("0") and " ship " in r)
    # Stage 1: reserve; stage 2 forks into charge and pack; stage 3: ship after both.
    assert " 1   reserve" in by_step["reserve"]
    assert " 2 ┬ charge" in by_step["charge"] and "└ pack" in by_step["pack"]
    assert " 3   ship" in by_step["ship"]
    col = head.index("AFTER")
    assert by_step["ship"][col:].startswith("charge, pack")
    assert by_step["charge"][col:].startswith("reserve")
    # The branch waiting for its retry is the one marked to run next.
    assert "▶" in by_step["charge"] and "▶" not in by_step["pack"]
    assert "SUSPENDED" in out
    data = cli("show", sid, "-o", "json").json()
    assert [s.get("after") for s in data["steps_state"]] == [
        [],
        ["reserve"],
        ["reserve"],
        ["charge", "pack"],
    ]


def test_show_operator_action_and_full_json(cli: CliFn, seeded: Seeded) -> None:
    r = cli("show", str(seeded["aborted"]), "--history", "--context")
    assert r.exit_code == 0
    assert "SUSPENDED→ABORTED by seed: seeding" in r.stdout
    assert '"initial_data"' in r.stdout and '"phase": "admin"' in r.stdout
    data = cli("show", str(seeded["aborted"]), "-o", "json").json()
    assert data["status"] == "ABORTED"
    assert data["step_history"][-1]["status"] == "ABORT"
    assert data["step_history"][-1]["actor"] == "seed"
    assert data["context"]["initial_data"]["order_id"] == "aborted"
    assert data["steps_state"][0]["step_id"] == "reserve"


def test_show_not_found_and_ambiguous_prefix(cli: CliFn, seeded: Seeded) -> None:
    r = cli("show", str(uuid.uuid4()))
    assert r.exit_code == 3 and "no saga" in r.stderr
    r = cli("show", "ffffffffff")
    assert r.exit_code == 3
    # Every uuid4 has "4" at position 14: a prefix of 0 characters would match all; a
    # one-hex-digit prefix shared by two seeded sagas is ambiguous.
    firsts = [str(seeded[label])[0] for label in LABELS]
    dup = next((c for c in firsts if firsts.count(c) > 1), None)
    if dup is not None:
        r = cli("show", dup)
        assert r.exit_code == 3 and "ambiguous" in r.stderr
    r = cli("-o", "json", "show", str(uuid.uuid4()))
    assert r.exit_code == 3 and '"code": 3' in r.stderr and r.stdout == ""


def test_stats_text_and_json(cli: CliFn, seeded: Seeded) -> None:
    r = cli("stats")
    assert r.exit_code == 0, r.stderr
    assert "order_manual" in r.stdout and "FAILED" in r.stdout and "due now: 1" in r.stdout
    assert "throughput (last 5m00s): 3 finished" in r.stdout
    data = cli("stats", "-o", "json", "--window", "1h").json()
    assert data["totals"] == {
        "RUNNING": 2,
        "SUSPENDED": 1,
        "COMPENSATING": 1,
        "COMPLETED": 1,
        "COMPENSATED": 1,
        "FAILED": 1,
        "ABORTED": 1,
    }
    assert data["total"] == 8
    assert data["due_now"] == 1 and data["oldest_due_at"].endswith("Z")
    assert {"saga_name": "order_manual", "status": "FAILED", "count": 1} in data["counts"]
    assert data["throughput"]["window_s"] == 3600
    assert data["throughput"]["finished_by_status"] == {
        "COMPLETED": 1,
        "COMPENSATED": 1,
        "ABORTED": 1,
    }


def _register_workers(url: str) -> None:
    async def work() -> None:
        engine = make_engine(url)
        try:
            store = bare_orchestrator(engine, "saga_state").engine.store
            base = {
                "host": "box1",
                "version": "0.1.0",
                "in_flight": 2,
                "concurrency": 64,
                "saga_names": ["order"],
                "info": {},
            }
            await store.worker_heartbeat({"id": "w-live", "pid": 11, **base})
            await store.worker_heartbeat({"id": "w-stopped", "pid": 12, **base})
            await store.worker_stopped("w-stopped")
            await store.worker_heartbeat({"id": "w-stale", "pid": 13, **base})
            async with engine.begin() as conn:
                from sqlalchemy import text

                await conn.execute(
                    text(
                        "UPDATE saga_workers SET heartbeat_at = now() - interval '10 minutes' "
                        "WHERE id = 'w-stale'"
                    )
                )
        finally:
            await engine.dispose()

    asyncio.run(work())


def test_workers_live_stale_stopped(cli: CliFn, seeded: Seeded, pg_url: str) -> None:
    _register_workers(pg_url)
    r = cli("workers")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "live" in next(ln for ln in lines if "w-live" in ln)
    assert "stale" in next(ln for ln in lines if "w-stale" in ln)
    assert "stopped" in next(ln for ln in lines if "w-stopped" in ln)
    assert "1 live, 1 stale, 1 stopped" in r.stderr
    data = cli("workers", "-o", "json").json()
    states = {w["id"]: w["state"] for w in data["workers"]}
    assert states == {"w-live": "live", "w-stale": "stale", "w-stopped": "stopped"}
    w = next(w for w in data["workers"] if w["id"] == "w-live")
    assert w["host"] == "box1" and w["in_flight"] == 2 and w["heartbeat_at"].endswith("Z")
