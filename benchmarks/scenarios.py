"""The scenarios (each sets up its own tables; see ``run.py`` for the list)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks import app
from benchmarks.harness import (
    Seeder,
    Workers,
    commits,
    database_name,
    fresh_pg_database,
    latencies,
    ms,
    pct,
    reset_tables,
    scalar,
    wait_drained,
    wait_registered,
)
from benchmarks.procs import PgCpu, ms_per
from benchmarks.revisions import ROOT, Code
from benchmarks.seed import bulk_start
from benchmarks.seed import reset_tables as reset_in_process


async def burn_down(
    url: str, code: Code, n: int, workers: int, settings: str, flags: list[str]
) -> dict[str, Any]:
    """N sagas pre-started in one transaction, drained by ``workers`` sagad processes of
    ``code``. Times run from the commit of that transaction (when the sagas become due)."""
    postgres = url.startswith("postgresql")
    if postgres:
        url = await fresh_pg_database(url)
    reset_tables(code, url)
    engine = create_async_engine(url)
    w = Workers(code, url, workers, flags)
    pg = PgCpu(database_name(url))
    w.start()
    seeder: Seeder | None = None
    try:
        await wait_registered(engine, workers)
        await asyncio.sleep(0.5)
        c0 = await commits(engine)
        if postgres:
            pg.start()
        w0 = w.cpu()
        seeder = Seeder(code, url, n)
        committed = await seeder.committed()
        await wait_drained(engine, timeout=max(120, n / 50))
        worker_cpu = w.cpu() - w0
        if postgres:
            pg.stop()
        rss = w.peak_rss()
        w.check_alive()
        await asyncio.sleep(1.2)  # statistics collector flush
        c1 = await commits(engine)
    finally:
        if seeder is not None:
            seeder.close()
        w.stop()
    lat = await latencies(engine, since=committed)
    await engine.dispose()
    seconds = lat.last_finished - committed
    return {
        "scenario": "burn-down",
        "code": code.label,
        "settings": settings,
        "flags": " ".join(flags) or "(none)",
        "workers": workers,
        "sagas": n,
        "seconds": round(seconds, 3),
        "sagas_per_s": round(n / seconds, 1),
        "steps_per_s": round(3 * n / seconds, 1),
        "commits_per_saga": round((c1 - c0) / n, 3) if postgres else None,
        "p50_ms": round(pct(lat.done, 50) * 1000, 1),
        "p99_ms": round(pct(lat.done, 99) * 1000, 1),
        "worker_cpu_ms_per_saga": ms_per(worker_cpu, n),
        "db_cpu_ms_per_saga": ms_per(pg.own, n) if postgres else None,
        "db_cpu_all_ms_per_saga": ms_per(pg.total, n) if postgres else None,
        "peak_rss_mb": rss,
    }


def _spawn_starter(
    code: Code, url: str, rate: float, seconds: float, nice: int, pin: bool
) -> subprocess.Popen[str]:
    # The worker's interpreter and app module (saga_bench_app), so that the sagas it starts
    # carry the fingerprint the worker expects (no DEFINITION_CHANGED entry at the claim).
    cmd = [code.python, "-m", "benchmarks.starter", "--url", url, "--rate", str(rate)]
    starter = subprocess.Popen(
        [*cmd, "--seconds", str(seconds)],
        cwd=ROOT,
        env=code.env({"PYTHONPATH": os.pathsep.join([*code.pythonpath, str(ROOT)])}),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )
    if pin:
        os.sched_setaffinity(starter.pid, {max(os.sched_getaffinity(0))})
    return starter


async def open_loop(
    url: str,
    code: Code,
    rate: float,
    seconds: float,
    settings: str,
    flags: list[str],
    nice: int,
    pin: bool,
) -> dict[str, Any]:
    """Sagas started at ``rate``/s by a separate, niced starter process on a pre-computed
    schedule, run by one sagad: p50/p99 from ``start`` to the first step and to the end."""
    url = await fresh_pg_database(url)
    reset_tables(code, url)
    engine = create_async_engine(url)
    w = Workers(code, url, 1, flags, cpus={0} if pin else None)
    w.start()
    starter: subprocess.Popen[str] | None = None
    try:
        await wait_registered(engine, 1)
        starter = _spawn_starter(code, url, rate, seconds, nice, pin)
        assert starter.stdin is not None and starter.stdout is not None
        json.loads(await asyncio.to_thread(starter.stdout.readline))  # ready
        await asyncio.sleep(0.5)
        w0 = w.cpu()
        starter.stdin.write("go\n")
        starter.stdin.flush()
        line = await asyncio.to_thread(starter.stdout.readline)
        if not line:
            raise RuntimeError(f"the starter failed (exit code {starter.wait()})")
        started = json.loads(line)
        await wait_drained(engine, timeout=120)
        worker_cpu = w.cpu() - w0
        w.check_alive()
    finally:
        if starter is not None and starter.poll() is None:
            starter.kill()
        if starter is not None:
            starter.wait()
        w.stop()
    lat = await latencies(engine)
    await engine.dispose()
    n = started["sagas"]
    return {
        "scenario": "open-loop",
        "settings": settings,
        "target_rate": rate,
        "achieved_rate": started["achieved_rate"],
        "sagas": n,
        "starter": f"own process, nice {nice}" + (", pinned apart" if pin else ""),
        "starter_lag_p50_ms": started["lag_p50_ms"],
        "starter_lag_p99_ms": started["lag_p99_ms"],
        "starter_cpu_ms_per_saga": started["cpu_ms_per_start"],
        "first_step_p50_ms": ms(pct(lat.first_step, 50)),
        "first_step_p99_ms": ms(pct(lat.first_step, 99)),
        "complete_p50_ms": ms(pct(lat.done, 50)),
        "complete_p99_ms": ms(pct(lat.done, 99)),
        "worker_cpu_ms_per_saga": ms_per(worker_cpu, n),
    }


async def claim_cost(
    url: str, finished_rows: int, claims: int = 300, batch: int = 32
) -> dict[str, Any]:
    """Mean time of one claim of ``batch`` due sagas with ``finished_rows`` finished sagas
    in the table."""
    engine = create_async_engine(url)
    await reset_in_process(engine)
    if finished_rows:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    """
INSERT INTO saga_state (id, saga_name, aggregation_id, status, phase, current_step_index,
    steps_state, step_execution_token, context, step_history, deadline_at, retry_counter,
    takeover_count, recovery_count, definition_fingerprint, created_at, updated_at, finished_at)
SELECT gen_random_uuid(), 'bench3', 'done-' || g, 'COMPLETED', 'execute', 3, '[]'::jsonb,
    gen_random_uuid(), '{}'::jsonb, '[]'::jsonb, NULL, 0, 0, 0, 'x',
    now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
FROM generate_series(1, :n) AS g
"""
                ),
                {"n": finished_rows},
            )
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE saga_state"))
    await bulk_start(engine, app, claims * batch)
    # Fresh planner statistics, as autovacuum keeps them in steady state (the schema ships
    # autovacuum_analyze_scale_factor = 0.02): with stale ones PostgreSQL may sort all due
    # rows instead of reading the due index in order.
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("ANALYZE saga_state"))
    orch = app.make_orchestrator(url)
    store = orch.engine.store
    times: list[float] = []
    for _ in range(claims):
        t = time.perf_counter()
        rows = await store.saga_claim(
            owner="bench", lease=orch.engine.execution_lease, limit=batch, saga_names=["bench3"]
        )
        times.append(time.perf_counter() - t)
        assert len(rows) == batch
    await orch.engine.sql_engine.dispose()
    await engine.dispose()
    return {
        "scenario": "claim-cost",
        "finished_rows": finished_rows,
        "claims": claims,
        "batch": batch,
        "mean_ms": round(statistics.mean(times) * 1000, 3),
        "p50_ms": round(pct(times, 50) * 1000, 3),
        "p99_ms": round(pct(times, 99) * 1000, 3),
    }


async def memory(url: str, code: Code, n: int) -> dict[str, Any]:
    engine = create_async_engine(url)
    await reset_in_process(engine)
    env = {"BENCH_SLEEP": "25", "BENCH_POOL": "4"}
    w = Workers(code, url, 1, ["--concurrency", str(n), "--batch-size", "500"], extra_env=env)
    w.start()
    try:
        await wait_registered(engine, 1)
        await bulk_start(engine, app, n, saga="sleeper")
        deadline = time.monotonic() + 60
        held = 0
        while time.monotonic() < deadline:
            held = int(
                await scalar(
                    engine, "SELECT count(*) FROM saga_state WHERE lease_owner IS NOT NULL"
                )
            )
            if held >= n:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        rss = w.peak_rss()
    finally:
        w.stop()
    await engine.dispose()
    return {"scenario": "memory", "in_flight": held, "peak_rss_mb": rss}


async def sqlite_burn_down(code: Code, n: int, settings: str, flags: list[str]) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="saga-bench-")
    url = f"sqlite+aiosqlite:///{tmp}/bench.db"
    result = await burn_down(url, code, n, 1, settings, flags)
    result["scenario"] = "sqlite burn-down"
    return result
