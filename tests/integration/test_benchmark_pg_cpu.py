"""The benchmark's PostgreSQL CPU accounting (benchmarks/procs.py) against the real server:
a backend's CPU counts for its database, also when the backend exits before the end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from benchmarks.procs import PgCpu, _postgres_titles


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def test_cpu_of_an_exited_backend_counts_for_its_database(pg_admin_dsn: str) -> None:
    if not _postgres_titles():
        pytest.skip("the PostgreSQL server runs elsewhere: its processes are not in /proc")
    database = pg_admin_dsn.rsplit("/", 1)[1].split("?")[0]
    meter = PgCpu(database, interval=0.05)
    meter.start()
    conn = await asyncpg.connect(pg_admin_dsn)
    pid = conn.get_server_pid()
    began = time.process_time()
    await conn.fetchval("SELECT count(*) FROM generate_series(1, 4000000)")
    await conn.close()
    deadline = time.monotonic() + 10
    while _alive(pid):  # the backend is gone before the meter stops
        assert time.monotonic() < deadline, "the backend did not exit"
        await asyncio.sleep(0.02)
    meter.stop()
    assert time.process_time() - began < 0.5  # the work was the server's, not ours
    assert meter.own >= 0.1, meter
    assert meter.total >= meter.own * 0.9, meter


def test_another_database_is_not_counted(pg_admin_dsn: str) -> None:
    meter = PgCpu("no_such_database_here", interval=0.05)
    meter.start()
    meter.stop()
    assert meter.own == 0.0
