"""The benchmark suite: ``python -m benchmarks --help``.

Scenarios (each sets up its own database and tables):

- burn-down: N pre-started three-step sagas drained by W ``sagad`` processes (W = 1, 2, 4):
  sagas/s, steps/s, database commits per saga, p50/p99 start-to-completion latency, CPU
  seconds per saga (workers and PostgreSQL separately), peak RSS per worker;
- open loop: sagas started at a fixed rate (fractions of the burn-down peak): p50/p99 from
  ``start`` to the first step beginning and to completion;
- table size: the cost of a claim with 1,000,000 finished sagas in the table versus none;
- memory: 10,000 sagas in flight (steps awaiting a sleep) in one worker: peak RSS;
- sqlite: the embedded default, one process.

Figures are printed as a table and written as JSON. Nothing here is a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks.app import make_orchestrator, sleeper, three_steps
from saga_core.rows import new_saga_values
from saga_core.schema import upgrade_schema
from saga_core.state import SagaState

ROOT = Path(__file__).resolve().parent.parent
APP = "benchmarks.app:make_orchestrator"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- process accounting (Linux /proc) ------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def postgres_cpu_seconds() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("postgres"):
            total += proc_cpu_seconds(int(entry.name))
    return total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


# --- database setup ----------------------------------------------------------------------------


def plain_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def fresh_pg_database(url: str) -> str:
    """Drop and create the database named in ``url``; returns the URL."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    name = u.database or "saga_bench"
    admin = plain_dsn(u.set(database="postgres").render_as_string(hide_password=False))
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return str(u.set(database=name).render_as_string(hide_password=False))


async def reset_tables(engine: AsyncEngine) -> None:
    await upgrade_schema(engine)
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("TRUNCATE saga_state, saga_workers"))
        else:
            await conn.execute(text("DELETE FROM saga_state"))
            await conn.execute(text("DELETE FROM saga_workers"))


async def bulk_start(engine: AsyncEngine, n: int, saga: str = "bench3") -> None:
    """Insert ``n`` due sagas in one transaction (what ``start`` writes, without its per-call
    overhead) and wake the workers."""
    definition = three_steps() if saga == "bench3" else sleeper()
    table = SagaState.__table__
    rows = [
        new_saga_values(definition, saga, f"bench-{uuid.uuid4()}", {"n": i}, None) for i in range(n)
    ]
    async with engine.begin() as conn:
        for i in range(0, n, 5000):
            await conn.execute(
                insert(table).values(deadline_at=text("CURRENT_TIMESTAMP")), rows[i : i + 5000]
            )
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_notify('saga_wakeup', 'saga_state')"))


async def commits(engine: AsyncEngine) -> int:
    if engine.dialect.name != "postgresql":
        return 0
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                    )
                )
            ).scalar_one()
        )


async def count_active(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM saga_state WHERE status NOT IN ('COMPLETED','COMPENSATED','ABORTED','FAILED')"
                    )
                )
            ).scalar_one()
        )


async def latencies(engine: AsyncEngine) -> tuple[list[float], list[float], float, float]:
    """(start→first step, start→completion, first created, last finished) in seconds."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT created_at, finished_at, step_history FROM saga_state WHERE finished_at IS NOT NULL"
                )
            )
        ).all()
    first: list[float] = []
    done: list[float] = []
    created_min = float("inf")
    finished_max = 0.0
    for created, finished, history in rows:
        if isinstance(created, str):
            created = datetime.fromisoformat(created).replace(tzinfo=UTC)
            finished = datetime.fromisoformat(finished).replace(tzinfo=UTC)
        if isinstance(history, str):
            history = json.loads(history)
        c, f = created.timestamp(), finished.timestamp()
        created_min = min(created_min, c)
        finished_max = max(finished_max, f)
        done.append(f - c)
        if history:
            started = (
                datetime.fromisoformat(history[0]["at"]).timestamp()
                - history[0].get("duration_ms", 0) / 1000
            )
            first.append(started - c)
    return first, done, created_min, finished_max


# --- workers ------------------------------------------------------------------------------------


@dataclass
class Workers:
    url: str
    count: int
    concurrency: int
    batch_size: int
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.extra_env}
        for _ in range(self.count):
            cmd = [
                sys.executable,
                "-m",
                "sagad",
                "run",
                "--app",
                APP,
                "--database-url",
                self.url,
                "--concurrency",
                str(self.concurrency),
                "--batch-size",
                str(self.batch_size),
                "--log-level",
                "WARNING",
            ]
            self.procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL))

    def cpu(self) -> float:
        return sum(proc_cpu_seconds(p.pid) for p in self.procs)

    def peak_rss(self) -> list[float]:
        return [proc_peak_rss_mb(p.pid) for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def wait_registered(engine: AsyncEngine, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            live = (
                await conn.execute(
                    text("SELECT count(*) FROM saga_workers WHERE stopped_at IS NULL")
                )
            ).scalar_one()
        if live >= n:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{n} sagad workers did not register within {timeout}s")


async def wait_drained(engine: AsyncEngine, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await count_active(engine) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"sagas still active after {timeout}s")
        await asyncio.sleep(0.1)


# --- scenarios ------------------------------------------------------------------------------------


async def burn_down(url: str, n: int, workers: int, concurrency: int, batch: int) -> dict[str, Any]:
    engine = create_async_engine(url)
    await reset_tables(engine)
    w = Workers(url, workers, concurrency, batch)
    w.start()
    try:
        await wait_registered(engine, workers)
        await asyncio.sleep(0.5)
        c0, db0, w0 = await commits(engine), postgres_cpu_seconds(), w.cpu()
        await bulk_start(engine, n)
        await wait_drained(engine, timeout=max(120, n / 100))
        worker_cpu = w.cpu() - w0
        db_cpu = postgres_cpu_seconds() - db0
        rss = w.peak_rss()
        await asyncio.sleep(1.2)  # statistics collector flush
        c1 = await commits(engine)
    finally:
        w.stop()
    _first, done, created, finished = await latencies(engine)
    await engine.dispose()
    seconds = finished - created
    return {
        "scenario": "burn-down",
        "workers": workers,
        "sagas": n,
        "seconds": round(seconds, 3),
        "sagas_per_s": round(n / seconds, 1),
        "steps_per_s": round(3 * n / seconds, 1),
        "commits_per_saga": round((c1 - c0) / n, 2) if c1 else None,
        "p50_ms": round(pct(done, 50) * 1000, 1),
        "p99_ms": round(pct(done, 99) * 1000, 1),
        "worker_cpu_ms_per_saga": round(worker_cpu / n * 1000, 3),
        "db_cpu_ms_per_saga": round(db_cpu / n * 1000, 3) if c1 else None,
        "peak_rss_mb": [round(r, 1) for r in rss],
    }


async def open_loop(
    url: str, rate: float, seconds: float, concurrency: int, batch: int
) -> dict[str, Any]:
    engine = create_async_engine(url)
    await reset_tables(engine)
    w = Workers(url, 1, concurrency, batch)
    w.start()
    os.environ["BENCH_POOL"] = "8"
    orch = make_orchestrator(url)
    started = 0
    slots = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        try:
            await orch.start(
                saga_name="bench3", initial_data={"n": i}, aggregation_id=f"ol-{uuid.uuid4()}"
            )
        finally:
            slots.release()

    try:
        await wait_registered(engine, 1)
        await asyncio.sleep(0.5)
        interval = 1.0 / rate
        t0 = time.monotonic()
        total = int(rate * seconds)
        pending: set[asyncio.Task[Any]] = set()
        for i in range(total):
            due = t0 + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # At most 64 starts in flight: a starter that cannot keep up slows down (the
            # achieved rate says so) instead of queueing without bound.
            await slots.acquire()
            task = asyncio.create_task(one(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            started += 1
        await asyncio.gather(*pending)
        achieved = started / (time.monotonic() - t0)
        await wait_drained(engine, timeout=120)
    finally:
        w.stop()
        await orch.engine.sql_engine.dispose()
    first, done, _, _ = await latencies(engine)
    await engine.dispose()
    return {
        "scenario": "open-loop",
        "target_rate": rate,
        "achieved_rate": round(achieved, 1),
        "sagas": started,
        "first_step_p50_ms": round(pct(first, 50) * 1000, 2),
        "first_step_p99_ms": round(pct(first, 99) * 1000, 2),
        "complete_p50_ms": round(pct(done, 50) * 1000, 2),
        "complete_p99_ms": round(pct(done, 99) * 1000, 2),
    }


async def claim_cost(
    url: str, finished_rows: int, claims: int = 300, batch: int = 32
) -> dict[str, Any]:
    """Mean time of one claim of ``batch`` due sagas with ``finished_rows`` finished sagas
    in the table."""
    engine = create_async_engine(url)
    await reset_tables(engine)
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
    await bulk_start(engine, claims * batch)
    # Fresh planner statistics, as autovacuum keeps them in steady state (the schema ships
    # autovacuum_analyze_scale_factor = 0.02): with stale ones PostgreSQL may sort all due
    # rows instead of reading the due index in order.
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("ANALYZE saga_state"))
    orch = make_orchestrator(url)
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


async def memory(url: str, n: int) -> dict[str, Any]:
    engine = create_async_engine(url)
    await reset_tables(engine)
    w = Workers(url, 1, n, 500, extra_env={"BENCH_SLEEP": "25", "BENCH_POOL": "4"})
    w.start()
    try:
        await wait_registered(engine, 1)
        await bulk_start(engine, n, saga="sleeper")
        deadline = time.monotonic() + 60
        held = 0
        while time.monotonic() < deadline:
            async with engine.connect() as conn:
                held = int(
                    (
                        await conn.execute(
                            text("SELECT count(*) FROM saga_state WHERE lease_owner IS NOT NULL")
                        )
                    ).scalar_one()
                )
            if held >= n:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        rss = w.peak_rss()
    finally:
        w.stop()
    await engine.dispose()
    return {"scenario": "memory", "in_flight": held, "peak_rss_mb": [round(r, 1) for r in rss]}


async def sqlite_burn_down(n: int, concurrency: int, batch: int) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="saga-bench-")
    url = f"sqlite+aiosqlite:///{tmp}/bench.db"
    result = await burn_down(url, n, 1, concurrency, batch)
    result["scenario"] = "sqlite burn-down"
    return result


# --- main -----------------------------------------------------------------------------------------


def render(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 160))
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_kind.setdefault(r["scenario"], []).append(r)
    for kind, rows in by_kind.items():
        table = Table(title=kind)
        keys = [k for k in rows[0] if k != "scenario"]
        for k in keys:
            table.add_column(k, justify="right")
        for r in rows:
            table.add_row(*(str(r.get(k)) for k in keys))
        console.print(table)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    url = args.database_url
    if not args.sqlite_only:
        url = await fresh_pg_database(url)
        peak = args.peak
        for w in [] if args.skip_burn_down else args.workers:
            r = await burn_down(url, args.sagas, w, args.concurrency, args.batch_size)
            results.append(r)
            print(json.dumps(r), flush=True)
            peak = max(peak, r["sagas_per_s"])
        if not args.skip_open_loop:
            for frac in (0.25, 0.5, 0.75, 0.9):
                r = await open_loop(
                    url,
                    round(peak * frac),
                    args.open_loop_seconds,
                    args.concurrency,
                    args.batch_size,
                )
                r["fraction_of_peak"] = frac
                results.append(r)
                print(json.dumps(r), flush=True)
        if not args.skip_table_size:
            for rows in (0, args.finished_rows):
                r = await claim_cost(url, rows)
                results.append(r)
                print(json.dumps(r), flush=True)
        if not args.skip_memory:
            r = await memory(url, args.memory_sagas)
            results.append(r)
            print(json.dumps(r), flush=True)
    if not args.skip_sqlite:
        r = await sqlite_burn_down(args.sqlite_sagas, args.concurrency, args.batch_size)
        results.append(r)
        print(json.dumps(r), flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/saga_bench"
        ),
        help="PostgreSQL URL; its database is DROPPED and re-created",
    )
    p.add_argument("--sagas", type=int, default=20000)
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    p.add_argument("--concurrency", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--open-loop-seconds", type=float, default=10.0)
    p.add_argument("--finished-rows", type=int, default=1_000_000)
    p.add_argument("--memory-sagas", type=int, default=10_000)
    p.add_argument("--sqlite-sagas", type=int, default=5000)
    p.add_argument("--sqlite-only", action="store_true")
    p.add_argument("--skip-burn-down", action="store_true")
    p.add_argument(
        "--peak",
        type=float,
        default=0.0,
        help="burn-down peak (sagas/s) for the open loop when burn-down is skipped",
    )
    p.add_argument("--skip-open-loop", action="store_true")
    p.add_argument("--skip-table-size", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-sqlite", action="store_true")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = p.parse_args()
    results = asyncio.run(main_async(args))
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    render(results)
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
