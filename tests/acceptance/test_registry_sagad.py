"""No ghost workers: a ``sagad`` that fails during start-up leaves no live row in the worker
registry, and of two ``sagad`` racing to start on one SQLite file exactly one runs."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

import app_sagas
from sagad_kit import Sagad, SagaDb, SagadFactory, wait_until

EXIT_CONFIG = 78
RACE_ROUNDS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_start_up_failure_after_connecting_leaves_no_live_worker_row(
    sagad: SagadFactory, saga_db: SagaDb
) -> None:
    with socket.socket() as taken:  # the metrics port is in use: exit 78 late in start-up
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = sagad.start(
            *saga_db.sagad_args(),
            env={**saga_db.sagad_env(2), "SAGA_METRICS_PORT": str(port)},
        )
        assert await worker.wait_exit() == EXIT_CONFIG, worker.log
    assert f"metrics_port: cannot listen on 127.0.0.1:{port}" in worker.log
    rows = await saga_db.fetch(
        "SELECT id, stopped_at FROM saga_workers WHERE pid = :p", p=worker.pid
    )
    assert all(stopped is not None for _, stopped in rows), rows


async def _race_once(
    sagad: SagadFactory, db_path: Path, args: list[str], env: dict[str, str]
) -> list[Sagad]:
    """Start two sagad while this test holds SQLite's write lock; let them go once both have
    bound their metrics port (the last step before registering); the outcome."""
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        ports = [_free_port(), _free_port()]
        workers = [sagad.start(*args, env={**env, "SAGA_METRICS_PORT": str(p)}) for p in ports]

        async def both_at_registration() -> bool:
            for w in workers:
                if not w.running():
                    raise AssertionError(f"sagad exited early:\n{w.log}")
            return all(await asyncio.gather(*(asyncio.to_thread(_accepts, p) for p in ports)))

        await wait_until(both_at_registration, timeout=30, what="both sagad to bind metrics")
    finally:
        holder.execute("ROLLBACK")  # go
        holder.close()
    return workers


async def _outcome(workers: list[Sagad]) -> tuple[Sagad, Sagad]:
    async def settled() -> list[Sagad] | None:
        ready = [w for w in workers if w.notify is not None and w.notify.seen("READY=1")]
        exited = [w for w in workers if not w.running()]
        return ready if len(ready) + len(exited) == 2 else None

    ready = await wait_until(settled, timeout=30, what="one sagad ready, the other refused")
    assert len(ready) == 1, "\n---\n".join(w.log for w in workers)
    winner = ready[0]
    loser = next(w for w in workers if w is not winner)
    return winner, loser


async def test_two_sagad_racing_on_one_sqlite_file_exactly_one_runs(
    sagad: SagadFactory, tmp_path: Path
) -> None:
    path = tmp_path / "race.db"
    url = f"sqlite+aiosqlite:///{path}"
    orch = app_sagas.build(url, table="race")
    await orch.create_tables()  # the file in WAL mode with its tables
    await orch.engine.sql_engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute(app_sagas.runs_ddl("sqlite", "race"))
    args = ["--app", "app_sagas:make", "--database-url", url]
    env = {"ACCEPT_TABLE": "race", "SAGA_POLL_INTERVAL": "0.2"}
    for round_ in range(RACE_ROUNDS):
        workers = await _race_once(sagad, path, args, env)
        winner, loser = await _outcome(workers)
        assert await loser.wait_exit() == EXIT_CONFIG, loser.log
        assert "SQLite supports one worker process" in loser.log
        assert f"pid {winner.pid}" in loser.log
        with sqlite3.connect(path) as conn:
            live = conn.execute("SELECT pid FROM saga_workers WHERE stopped_at IS NULL").fetchall()
        assert live == [(winner.pid,)], f"round {round_}: {live}"
        assert await winner.stop() == 0
