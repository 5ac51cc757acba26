"""A real PostgreSQL restart under running ``sagad`` workers: the sagas live on a throwaway
server of this test's own (never the shared one), which is restarted (fast shutdown, then
start) twice while sagas run. Steps record their runs on the session's server, which stays
up. Afterwards every saga is checked as in the chaos test: nothing lost or stuck, no
overlapping runs, re-executions explained.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_sagas import runs_ddl
from faultkit import FaultDb, SagadFactory, check_invariants, child_env, wait_until
from sqlalchemy import text


def _root_kit() -> Any:
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("root_conftest_kit", path)
    assert spec is not None and spec.loader is not None
    if "root_conftest_kit" in sys.modules:
        return sys.modules["root_conftest_kit"]
    module = importlib.util.module_from_spec(spec)
    sys.modules["root_conftest_kit"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def own_server() -> Iterator[tuple[str, Any]]:
    kit = _root_kit()
    pg_ctl = kit.find_pg_ctl()
    if pg_ctl is None:
        pytest.skip("no pg_ctl to run a throwaway PostgreSQL server")
    dsn, server = kit._start_throwaway(pg_ctl)
    try:
        yield dsn.replace("postgresql://", "postgresql+asyncpg://", 1), server
    finally:
        server.stop()


async def test_postgres_restarts_while_sagas_run(
    sagad: SagadFactory, own_server: tuple[str, Any], pg_url: str
) -> None:
    url, server = own_server
    db = FaultDb(url)
    await db.setup()
    rec = FaultDb(pg_url, table=db.table)  # the runs table, on the server that stays up
    async with rec.engine.begin() as conn:
        await conn.execute(text(runs_ddl("postgresql", db.table)))
    env = child_env(
        db.table,
        lease=2.0,
        CHAOS_RECORD_URL=pg_url,
        SAGA_POLL_INTERVAL="0.25",
        SAGA_STARTUP_TIMEOUT="60",
    )
    args = ["--app", "chaos_app:make", "--database-url", url, "--concurrency", "16"]
    workers = [sagad.start(*args, env=env) for _ in range(3)]
    try:
        for w in workers:
            await w.wait_ready()
        n = 400
        await db.start_many([("chaos", {"sleep": 0.05}) for _ in range(n)])

        async def ok_runs() -> int:
            rows = await rec.fetch("SELECT count(*) FROM {t}_runs WHERE outcome = 'ok'")
            return int(rows[0][0])

        for threshold in (150, 600):

            async def progressed(at_least: int = threshold) -> bool:
                return await ok_runs() >= at_least

            await wait_until(progressed, timeout=60, what=f"{threshold} steps done")
            await db.engine.dispose()
            await asyncio.to_thread(server.executor.stop)  # fast shutdown: kills sessions
            await asyncio.to_thread(server.executor.start)
            assert all(w.running() for w in workers), "workers ride the restart out"

        async def all_done() -> bool:
            return await db.unfinished() == 0 and sum((await db.status_counts()).values()) == n

        await wait_until(all_done, timeout=120, what="every saga to finish", interval=0.25)
        report = await check_invariants(db, {}, runs_db=rec)
        assert report.statuses == {"COMPLETED": n}, report
        assert not report.problems, "\n".join([*report.problems, *report.details])
        assert report.concurrent == 0 and report.unexplained_reexecutions == 0
        for w in workers:
            assert await w.stop() == 0, w.log
        assert any("retrying" in w.log for w in workers), "the restart was noticed"
    finally:
        async with rec.engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {db.table}_runs"))
        await rec.engine.dispose()
        await db.engine.dispose()
