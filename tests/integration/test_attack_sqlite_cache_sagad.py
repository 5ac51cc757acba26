"""Attack on SQLite's kept checkpoint statements under a real ``sagad``: parallel sagas
(``attacksq_app``) waiting for events delivered concurrently (some before the wait: the
inbox is set, then cleared), while ``sagactl`` aborts, retries and skips in bulk, a fresh
process each time, writing to the same file. Every saga must end as its plan says, with a
well-formed history (``json_valid``, an array of objects), an empty inbox and the failure
text stored escaped."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import attacksq_app

N_PER_NAME = 10
EXPECTED = {
    "fork_ok": "COMPLETED",
    "fork_abort": "ABORTED",
    "fork_retry": "COMPENSATED",
    "fork_skip": "COMPENSATED",
}
HERE = Path(__file__).resolve().parent


def env_for(table: str, marker: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "ATTACKSQ_TABLE": table,
        "ATTACKSQ_DIR": str(marker),
        "SAGA_POLL_INTERVAL": "0.1",
    }


def sagactl(
    url: str, table: str, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [str(bin_dir / "sagactl"), "--database-url", url, "--table", table, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def statuses(db: Path, table: str) -> dict[str, str]:
    with sqlite3.connect(db, timeout=30) as conn:
        return dict(conn.execute(f"SELECT id, status FROM {table}").fetchall())


def consumed(db: Path, table: str, sid: uuid.UUID) -> bool:
    with sqlite3.connect(db, timeout=30) as conn:
        (hist,) = conn.execute(
            f"SELECT step_history FROM {table} WHERE id = ?", (sid.hex,)
        ).fetchone()
    return any(
        e.get("status") == "CONSUMED" or (e.get("event") and e.get("status") == "RECEIVED")
        for e in json.loads(hist)
    )


async def test_sagad_parallel_waits_and_operator_actions(tmp_path: Path) -> None:
    db = tmp_path / "attack.db"
    url = f"sqlite+aiosqlite:///{db}"
    table = f"sq_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "markers"
    marker.mkdir()
    env = env_for(table, marker)
    orch = attacksq_app.build(url, table, marker)
    await orch.create_tables()
    log = (tmp_path / "sagad.log").open("wb")
    proc = subprocess.Popen(  # noqa: ASYNC220 - sagad runs beside the test
        [
            str(Path(sys.executable).parent / "sagad"),
            "--app",
            "attacksq_app:make",
            "--database-url",
            url,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    try:
        plans: dict[uuid.UUID, str] = {}

        async def start(name: str, i: int) -> None:
            agg = f"{name}-{i}"
            data = {"wait": True, "fail_d": name in ("fork_retry", "fork_skip"), "s": "\u2028é"}
            sid = await orch.start(saga_name=name, initial_data=data, aggregation_id=agg)
            plans[sid] = name
            if name == "fork_abort":
                return  # aborted by the operator while it waits
            if i % 2:
                await asyncio.sleep(0.05 * (i % 5))
                # Refused while no step waits for it by name, dropped (UNUSED) when accepted
            # while only other steps ran: sent again until n has taken one.
            give_up = time.monotonic() + 90
            while time.monotonic() < give_up:
                await orch.deliver(
                    aggregation_id=agg,
                    event_name="go",
                    event={"i": i, "big": 2**62, "odd": attacksq_app.ODD, "u": "\\u0000x"},
                    reason="<b>go</b>",
                )
                if await asyncio.to_thread(consumed, db, table, sid):
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"{sid}: no event ever consumed")

        await asyncio.gather(*(start(n, i) for n in EXPECTED for i in range(N_PER_NAME)))
        for sid, name in plans.items():
            if name == "fork_retry":
                (marker / str(sid)).write_text("ok")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = statuses(db, table)
            if all(now[sid.hex] == EXPECTED[name] for sid, name in plans.items()):
                break
            acts = [
                ("abort", "fork_abort", None),
                ("retry", "fork_retry", "FAILED"),
                ("skip", "fork_skip", "FAILED"),
            ]
            for cmd, name, status in acts:
                args = [cmd, "--name", name, "-y", "-r", "attack <i>\u2028"]
                if status:
                    args += ["--status", status]
                else:
                    args += ["--status", "RUNNING,SUSPENDED"]
                res = await asyncio.to_thread(sagactl, url, table, env, *args)
                assert res.returncode in (0, 1, 3, 4), (cmd, res.returncode, res.stderr[-2000:])
            await asyncio.sleep(0.2)
        now = statuses(db, table)
        wrong = {
            sid: (name, now[sid.hex])
            for sid, name in plans.items()
            if now[sid.hex] != EXPECTED[name]
        }
        assert not wrong, wrong
        assert proc.poll() is None, (tmp_path / "sagad.log").read_text()[-3000:]
        with sqlite3.connect(db, timeout=30) as conn:
            rows = conn.execute(
                f"SELECT id, json_valid(step_history), json_type(step_history), step_history, "
                f"inbox, last_error FROM {table}"
            ).fetchall()
        for sid, valid, kind, hist, inbox, last_error in rows:
            assert valid == 1 and kind == "array", sid
            entries: list[Any] = json.loads(hist)
            assert entries and all(isinstance(e, dict) and "phase" in e for e in entries), sid
            assert inbox is None, (sid, inbox)
            assert last_error is None or "\ud800" not in last_error
            text = hist.encode("utf-8").decode("utf-8")
            assert "\x00" not in text
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        await orch.engine.sql_engine.dispose()
