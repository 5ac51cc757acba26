"""The views of ``show`` and ``watch``: a failed step reads FAILED and a finished saga's
header says how it ended; ``show --aggregation-id`` / ``--all`` / ``--follow``; one JSON
time form; ``watch`` at 80x24 (real process and a recorded console)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cli_app import build
from cli_helpers import SAGACTL, CliFn
from cli_seed import Seeded
from rich.console import Console

from saga_core import SagaSnapshot, SagaStatus
from saga_core.store import WorkerRow
from sagactl.render_watch import dashboard
from sagactl.stats import Dashboard, Stats, WorkerView

Z_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _row(out: str, first: str) -> list[str]:
    """The cells of the table row whose second cell is ``first`` (steps table)."""
    for line in out.splitlines():
        cells = line.replace("▶", " ").split()
        if len(cells) > 1 and cells[1] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{out}")


def _header(out: str, key: str) -> str:
    line = next(ln for ln in out.splitlines() if ln.startswith(f"│ {key} "))
    return line.strip("│ ").removeprefix(key).strip()


def test_show_names_the_failed_step_and_how_the_saga_ended(cli: CliFn, seeded: Seeded) -> None:
    out = cli("show", str(seeded["compensated"])).stdout
    assert _row(out, "charge")[2] == "FAILED"
    assert _row(out, "reserve")[2] == "COMPENSATED"
    assert _header(out, "step") == "- (rolled back after step 2/3 charge failed)"

    out = cli("show", str(seeded["failed"])).stdout
    assert _row(out, "charge")[2] == "FAILED" and _row(out, "ship")[2] == "PENDING"
    assert _header(out, "step") == "2/3 charge  (failed after 1 attempt)"

    out = cli("show", str(seeded["compensating"])).stdout
    assert _row(out, "charge")[2] == "FAILED" and _row(out, "reserve")[2] == "COMPENSATING"
    assert _header(out, "step") == "↩ 1/3 reserve  (compensate, attempt 2)"

    out = cli("show", str(seeded["aborted"])).stdout
    assert _row(out, "charge")[2] == "FAILED"  # its last attempt failed, then the abort
    assert _header(out, "step") == "- (aborted at step 2/3 charge)"

    out = cli("show", str(seeded["suspended"])).stdout
    assert _row(out, "charge")[2:4] == ["RETRY", "WAIT"]
    assert _header(out, "step") == "2/3 charge  (execute, next attempt 2)"

    out = cli("show", str(seeded["completed"])).stdout
    assert [_row(out, s)[2] for s in ("reserve", "charge", "ship")] == ["SUCCEEDED"] * 3
    assert _header(out, "step") == "3/3 (every step done)"
    assert "attempt -" not in out

    # The stored per-step state is not rewritten: JSON shows it as stored.
    data = cli("show", str(seeded["compensated"]), "-o", "json").json()
    assert [s["status"] for s in data["steps_state"]] == ["COMPENSATED", "PENDING", "PENDING"]


def _start(url: str, name: str, aggregation_id: str, **flags: bool) -> uuid.UUID:
    async def work() -> uuid.UUID:
        orch = build(url)
        try:
            return await orch.start(
                saga_name=name,
                initial_data={"order_id": aggregation_id, **flags},
                aggregation_id=aggregation_id,
                inline=False,
            )
        finally:
            await orch.engine.sql_engine.dispose()

    return asyncio.run(work())


def test_show_by_aggregation_id(cli: CliFn, seeded: Seeded, pg_url: str) -> None:
    r = cli("show", "--aggregation-id", "agg-failed")
    assert r.exit_code == 0, r.stderr
    assert f"saga {seeded['failed']}" in r.stdout
    assert cli("show", "-a", "agg-failed", "-o", "json").json()["id"] == str(seeded["failed"])

    newer = _start(pg_url, "order", "agg-completed")  # the first one finished
    assert cli("show", "-a", "agg-completed", "-o", "json").json()["id"] == str(newer)
    everything = cli("show", "-a", "agg-completed", "--all", "-o", "json").json()
    assert [s["id"] for s in everything["sagas"]] == [str(newer), str(seeded["completed"])]
    assert everything["total"] == 2 and "step_history" in everything["sagas"][0]
    lines = cli("show", "-a", "agg-completed", "--all", "-o", "jsonl").lines()
    assert [s["id"] for s in lines] == [str(newer), str(seeded["completed"])]
    r = cli("show", "-a", "agg-completed", "--all")
    assert r.stdout.index(f"saga {newer}") < r.stdout.index(f"saga {seeded['completed']}")
    assert "2 saga(s) of aggregation id 'agg-completed'" in r.stderr

    r = cli("show", "-a", "agg-nope")
    assert r.exit_code == 3 and "no saga with aggregation id 'agg-nope'" in r.stderr
    for bad in (
        [],
        [str(seeded["failed"]), "-a", "agg-failed"],
        [str(seeded["failed"]), "--all"],
        ["-a", "agg-failed", "--all", "--follow"],
        [str(seeded["failed"]), "--follow", "--interval", "0s"],
    ):
        r = cli("show", *bad)
        assert r.exit_code == 2, (bad, r.stdout, r.stderr)
        assert r.stdout == ""


def test_json_times_have_one_form(cli: CliFn, seeded: Seeded) -> None:
    """ISO-8601 UTC with microseconds and Z everywhere, history entries included."""
    saga = cli("show", str(seeded["compensating"]), "-o", "json").json()
    for key in ("created_at", "updated_at", "deadline_at"):
        assert Z_TIME.match(saga[key]), (key, saga[key])
    assert saga["finished_at"] is None
    assert saga["step_history"]
    for entry in saga["step_history"]:
        assert Z_TIME.match(entry["at"]), entry
    listed = cli("list", "-o", "json").json()["sagas"]
    assert all(Z_TIME.match(s["created_at"]) for s in listed)
    assert Z_TIME.match(cli("stats", "-o", "json").json()["at"])
    history = cli("show", str(seeded["compensating"]), "--history").stdout
    assert "+00:00" not in history and re.search(r'"at": "\d{4}-[^"]*\.\d{6}Z"', history)


class Follower:
    """``sagactl show --follow`` as a subprocess, its output collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [SAGACTL, "show", "--follow", "--interval", "0.1s", *args],
            env={**env, "COLUMNS": "140"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        self._reader = threading.Thread(target=lambda: self.lines.extend(stdout), daemon=True)
        self._reader.start()

    def wait_for(self, found: Callable[[list[str]], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not found(list(self.lines)):
            assert self.proc.poll() is None, (self.proc.returncode, self.lines)
            assert time.monotonic() < deadline, f"waited {timeout}s; output: {self.lines}"
            time.sleep(0.05)

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        assert self.proc.stderr is not None
        return code, "".join(self.lines), self.proc.stderr.read()


def _run_until(url: str, done: Callable[[], bool], timeout: float = 60) -> None:
    """Run due sagas in this process (as sagad would) until ``done()``."""

    async def work() -> None:
        orch = build(url)
        deadline = time.monotonic() + timeout
        try:
            while not done():
                assert time.monotonic() < deadline, "the followed saga did not finish"
                if not await orch.run_due():
                    await asyncio.sleep(0.05)
        finally:
            await orch.engine.sql_engine.dispose()

    asyncio.run(work())


def test_show_follow_prints_the_timeline_until_the_saga_finishes(
    subprocess_env: dict[str, str], seeded: Seeded, pg_url: str
) -> None:
    sid = _start(pg_url, "order_fast", "agg-follow", fail=True)
    f = Follower(subprocess_env, "--aggregation-id", "agg-follow")
    f.wait_for(lambda lines: any("(nothing has run yet)" in ln for ln in lines))
    _run_until(pg_url, lambda: f.proc.poll() is not None)
    code, out, err = f.finish()
    assert code == 0, (out, err)
    assert f"saga {sid}" in out
    page, _, followed = out.partition("(nothing has run yet)")
    rows = [
        ln.split()
        for ln in followed.splitlines()
        if ln.split()[:1] != [] and ln.split()[0].isdigit()
    ]
    assert [(r[0], r[3], r[4], r[6]) for r in rows] == [
        ("1", "execute", "reserve", "SUCCESS"),
        ("2", "execute", "charge", "ERROR"),
        ("3", "compensate", "reserve", "SUCCESS"),
    ]
    # Status changes as the follower saw them: from RUNNING to COMPENSATED, through
    # COMPENSATING when a poll fell between the rollback's checkpoints.
    changes = re.findall(r"status (\w+) → (\w+)", followed)
    assert changes in (
        [("RUNNING", "COMPENSATED")],
        [("RUNNING", "COMPENSATING"), ("COMPENSATING", "COMPENSATED")],
    ), changes
    assert f"saga {sid} finished: COMPENSATED" in err
    # The followed rows line up with the page's timeline header.
    head = next(ln for ln in page.splitlines() if "OUTCOME" in ln)
    first = next(ln for ln in followed.splitlines() if "SUCCESS" in ln)
    assert first.index("SUCCESS") == head.index("OUTCOME")


def test_show_follow_json_lines(
    subprocess_env: dict[str, str], seeded: Seeded, pg_url: str
) -> None:
    sid = _start(pg_url, "order", "agg-follow-json")
    f = Follower(subprocess_env, str(sid), "-o", "jsonl")
    f.wait_for(lambda lines: len(lines) >= 1)
    _run_until(pg_url, lambda: f.proc.poll() is not None)
    code, out, err = f.finish()
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs[0]["status"] == "RUNNING" and docs[-1]["status"] == "COMPLETED"
    assert all(d["id"] == str(sid) for d in docs)
    assert len(docs[-1]["step_history"]) == 3 and err == ""


def test_show_follow_stops_quietly_on_ctrl_c(
    subprocess_env: dict[str, str], seeded: Seeded
) -> None:
    """A SUSPENDED saga is followed on (a retry or an event moves it again) until Ctrl-C:
    exit 130, nothing on stderr."""
    f = Follower(subprocess_env, str(seeded["suspended"]))
    f.wait_for(lambda lines: any("timeline" in ln for ln in lines))
    f.wait_for(lambda lines: any("RuntimeError" in ln for ln in lines))
    f.proc.send_signal(signal.SIGINT)
    code, out, err = f.finish()
    assert code == 130 and err == "", err
    assert "card declined" in out


# --- watch at 80x24 ------------------------------------------------------------------------


def _frame_lines(out: str) -> list[str]:
    return [ln.rstrip() for ln in out.rstrip("\n").split("\n")]


def test_watch_fits_80_by_24(subprocess_env: dict[str, str], seeded: Seeded) -> None:
    env = {**subprocess_env, "COLUMNS": "80", "LINES": "24"}
    r = subprocess.run(
        [SAGACTL, "watch", "--count", "1"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = _frame_lines(r.stdout)
    assert len(lines) <= 23 and max(len(ln) for ln in lines) <= 80, r.stdout
    header = next(ln for ln in lines if ln.startswith("NAME"))
    assert header.split() == [
        "NAME",
        "RUNNING",
        "SUSPENDED",
        "COMPENSATING",
        "FAILED",
        "FINISHED",
        "TOTAL",
    ]
    assert next(ln for ln in lines if ln.startswith("all")).split() == [
        "all",
        "2",
        "1",
        "1",
        "1",
        "3",
        "8",
    ]
    assert "finished: COMPLETED 1 · COMPENSATED 1 · ABORTED 1" in lines
    for title in ("sagas", "workers", "failures"):
        assert sum(ln.split()[0] == title for ln in lines if ln) == 1, title
    failures = lines[next(i for i, ln in enumerate(lines) if ln.startswith("failures")) :]
    assert "1 FAILED" in failures[0]
    assert failures[2].startswith(str(seeded["failed"])[:8]) and "order_manual" in failures[2]


def _snapshot(i: int, now: datetime) -> SagaSnapshot:
    return SagaSnapshot(
        id=uuid.UUID(int=i + 1),
        saga_name=f"saga_name_number_{i}",
        aggregation_id=f"agg-{i}",
        status=SagaStatus.FAILED,
        phase="execute",
        current_step_index=1,
        current_step_id="charge",
        total_steps=3,
        retry_counter=1,
        takeover_count=0,
        deadline_at=None,
        lease_owner=None,
        trace_id=None,
        step_execution_token=uuid.uuid4(),
        last_error=f"RuntimeError: failure number {i} " + "x" * 200,
        definition_fingerprint="f",
        created_at=now - timedelta(minutes=i + 1),
        updated_at=now - timedelta(minutes=i),
        finished_at=None,
    )


def _worker(i: int, now: datetime) -> WorkerView:
    row = WorkerRow(
        id=f"host-{i}:{1000 + i}:abcdef",
        host=f"host-{i}",
        pid=1000 + i,
        version="0.1.0",
        started_at=now - timedelta(hours=1),
        heartbeat_at=now,
        in_flight=i,
        concurrency=64,
        saga_names=[f"saga_name_number_{j}" for j in range(30)],
        stopped_at=None,
        info={},
    )
    return WorkerView(row, "live", timedelta(seconds=1))


def test_watch_frame_keeps_totals_and_failures_on_a_full_80x24_screen() -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    statuses = [s.value for s in SagaStatus]
    counts = [(f"saga_name_number_{i}", s, i + 1) for i in range(30) for s in statuses]
    stats = Stats(now, counts, 5, now - timedelta(seconds=30), timedelta(minutes=5), [])
    failures = [_snapshot(i, now) for i in range(8)]
    d = Dashboard(stats, [_worker(i, now) for i in range(10)], failures)
    console = Console(width=80, height=24, record=True, force_terminal=True)
    console.print(
        dashboard(d, source="postgresql://db/orders · saga_state", interval=2, width=80, height=24)
    )
    lines = _frame_lines(console.export_text())
    assert len(lines) <= 23 and max(len(ln) for ln in lines) <= 80, "\n".join(lines)
    text = "\n".join(lines)
    for status in ("RUNNING", "SUSPENDED", "COMPENSATING", "FAILED", "FINISHED", "TOTAL"):
        assert status in text
    assert "RUNNI…" not in text and "COMPENS…" not in text
    total = sum(c for _, _, c in counts)
    assert next(ln for ln in lines if ln.startswith("all")).split()[-1] == str(total)
    failed_total = sum(i + 1 for i in range(30))
    at = next(i for i, ln in enumerate(lines) if ln.startswith("failures"))
    assert f"{failed_total} FAILED" in lines[at]
    shown = [ln for ln in lines[at:] if ln[:8] in {str(s.id)[:8] for s in failures}]
    assert len(shown) >= 3, text
    assert lines[-1] == f"… {failed_total - len(shown)} more failures (sagactl list -s FAILED)"
    assert any(ln.startswith("… ") and "more saga names" in ln for ln in lines)
    assert any(ln.startswith("… ") and "more workers" in ln for ln in lines)

    # Given the room, everything is shown.
    console = Console(width=200, record=True)
    console.print(dashboard(d, source="db", interval=2, width=200, height=None))
    text = console.export_text()
    assert all(f"saga_name_number_{i} " in text for i in range(30))
    assert "more saga names" not in text and "more workers" not in text
