"""A stop at any point of ``sagad``'s start-up: exit 0, one log line "stopped before ready",
no ``READY=1``, and no row in the worker registry.

Each test waits for something it can observe before it signals (the kernel reporting that
the process catches SIGTERM, a file the app writes while it is imported, a log line, a
backend waiting on a lock), never for a guessed delay.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from datetime import datetime
from pathlib import Path

import pytest
from sagad_kit import Sagad, SagaDb, SagadFactory, wait_until
from sqlalchemy import text

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads signal masks from /proc (Linux)"
)

STOPPED = "stopped before ready"
READY_LINE = re.compile(r"sagad \S+ ready: ")
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| INFO     \| stopped before ready$"
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _registry_rows(db: SagaDb, worker: Sagad, since: datetime) -> int:
    """Rows of ``saga_workers`` that belong to this process."""
    rows = await db.fetch(
        "SELECT count(*) FROM saga_workers WHERE host = :host AND pid = :pid "
        "AND started_at >= :since",
        host=socket.gethostname(),
        pid=worker.pid,
        since=since,
    )
    return int(rows[0][0])


def _assert_stopped_before_ready(worker: Sagad, code: int) -> list[str]:
    """Exit 0, the line exactly once, nothing of a running worker; the log's lines."""
    lines = worker.log.splitlines()
    assert code == 0, worker.log
    assert sum(STOPPED in line for line in lines) == 1, worker.log
    assert not any("received: stopping" in line or READY_LINE.search(line) for line in lines), (
        worker.log
    )
    assert not worker.ready(), worker.notify and worker.notify.poll()
    return lines


def _gated(saga_db: SagaDb, tmp_path: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    """sagad's arguments and environment for ``app_import_gate``: its import writes a marker
    file, then blocks on a FIFO this test never opens, so sagad cannot get past it."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    args = ["--app", "app_import_gate:make", "--database-url", saga_db.url, *extra]
    env = {
        **saga_db.sagad_env(lease=5),
        "ACCEPT_IMPORT_MARKER": str(tmp_path / "importing"),
        "ACCEPT_IMPORT_GATE": str(gate),
    }
    return args, env


async def test_stop_right_after_spawn(sagad: SagadFactory, saga_db: SagaDb, tmp_path: Path) -> None:
    """The earliest moment sagad's code can see a signal: its entry point's first lines,
    while sagad itself is still importing. (The app's import is gated, so however late the
    signal lands, it lands before ready.)"""
    since = await saga_db.db_now()
    args, env = _gated(saga_db, tmp_path)
    worker = sagad.start(*args, env=env)
    await worker.wait_handles(signal.SIGTERM, timeout=30)
    worker.signal(signal.SIGTERM)
    lines = _assert_stopped_before_ready(worker, await worker.wait_exit())
    assert len(lines) == 1 and TEXT_LINE.match(lines[0]), worker.log
    assert await _registry_rows(saga_db, worker, since) == 0


async def test_stop_while_the_app_is_imported(
    sagad: SagadFactory, saga_db: SagaDb, tmp_path: Path
) -> None:
    """The app's import blocks (on a FIFO nobody opens): the stop does not wait for it. The
    line is in the configured log format (JSON here)."""
    since = await saga_db.db_now()
    args, env = _gated(saga_db, tmp_path, "--log-format", "json")
    worker = sagad.start(*args, env=env)
    marker = tmp_path / "importing"

    async def importing() -> bool:
        if not worker.running():
            raise AssertionError(f"sagad exited {worker.proc.returncode}:\n{worker.log}")
        return marker.exists() and marker.read_text() == str(worker.pid)

    await wait_until(importing, timeout=30, what="sagad to import the app")
    worker.signal(signal.SIGTERM)
    lines = _assert_stopped_before_ready(worker, await worker.wait_exit(timeout=10))
    records = [json.loads(line) for line in lines]
    assert [(r["level"], r["message"]) for r in records] == [("INFO", STOPPED)]
    assert datetime.fromisoformat(records[0]["ts"]).utcoffset() is not None
    assert await _registry_rows(saga_db, worker, since) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_while_waiting_for_the_database(sagad: SagadFactory, sig: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nowhere"
    worker = sagad.start(
        "--app", "app_sagas:make", "--database-url", url, env={"SAGA_STARTUP_TIMEOUT": "600"}
    )

    async def retrying() -> bool:
        if not worker.running():
            raise AssertionError(f"sagad exited {worker.proc.returncode}:\n{worker.log}")
        return "not reachable yet" in worker.log

    await wait_until(retrying, timeout=30, what="sagad to retry the database")
    worker.signal(sig)
    _assert_stopped_before_ready(worker, await worker.wait_exit(timeout=10))


@pytest.mark.parametrize("database", ["answers", "hangs"])
async def test_stop_while_registering_leaves_no_row(
    sagad: SagadFactory, saga_db: SagaDb, database: str
) -> None:
    """The registry row is being written when the stop comes.

    The test holds a SHARE lock on ``saga_workers`` so sagad's registration waits on it and
    signals once sagad's backend is seen waiting. ``answers``: the lock goes once sagad has
    logged the signal (DEBUG); the row is written, then removed. ``hangs``: the lock stays
    (a database that stopped answering); sagad gives the write a few seconds, then stops
    all the same (no row was written: the write never got the lock)."""
    since = await saga_db.db_now()
    async with saga_db.engine.connect() as conn:
        await conn.execute(text("LOCK TABLE saga_workers IN SHARE MODE"))
        worker = sagad.start(
            *saga_db.sagad_args("--log-level", "DEBUG"), env=saga_db.sagad_env(lease=5)
        )

        async def registering() -> bool:
            if not worker.running():
                raise AssertionError(f"sagad exited {worker.proc.returncode}:\n{worker.log}")
            rows = await saga_db.fetch(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query ILIKE '%saga_workers%'"
            )
            return int(rows[0][0]) > 0

        await wait_until(registering, timeout=30, what="sagad's registration to wait on the lock")
        worker.signal(signal.SIGTERM)

        async def seen() -> bool:
            return "SIGTERM received before ready" in worker.log

        await wait_until(seen, timeout=10, what="sagad to take the signal")
        if database == "answers":
            await conn.rollback()
            code = await worker.wait_exit(timeout=20)
        else:
            code = await worker.wait_exit(timeout=30)
            await conn.rollback()
    _assert_stopped_before_ready(worker, code)
    assert await _registry_rows(saga_db, worker, since) == 0
