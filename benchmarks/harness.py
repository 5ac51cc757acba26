"""The harness's pieces: databases, ``sagad`` worker processes, the seeding process and the
latency read-out. Everything reads the database with plain SQL, so it works with the tables
of any revision under test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.procs import proc_cpu_seconds, proc_peak_rss_mb
from benchmarks.revisions import Code

ACTIVE_SQL = "status NOT IN ('COMPLETED','COMPENSATED','ABORTED','FAILED')"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# --- databases ----------------------------------------------------------------------------


def database_name(url: str) -> str:
    return make_url(url).database or ""


def _admin_dsn(url: str) -> str:
    u = make_url(url).set(drivername="postgresql", database="postgres")
    return u.render_as_string(hide_password=False)


async def fresh_pg_database(url: str) -> str:
    """Drop and create the database named in ``url``; returns the URL."""
    name = database_name(url) or "saga_bench"
    conn = await asyncpg.connect(_admin_dsn(url))
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return str(make_url(url).set(database=name).render_as_string(hide_password=False))


async def drop_pg_database(url: str) -> None:
    conn = await asyncpg.connect(_admin_dsn(url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')
    finally:
        await conn.close()


async def scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar_one()


async def commits(engine: AsyncEngine) -> int:
    if engine.dialect.name != "postgresql":
        return 0
    return int(
        await scalar(
            engine, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
    )


async def wait_registered(engine: AsyncEngine, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = await scalar(engine, "SELECT count(*) FROM saga_workers WHERE stopped_at IS NULL")
        if live >= n:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{n} sagad workers did not register within {timeout}s")


async def wait_drained(engine: AsyncEngine, timeout: float) -> None:
    """Until no saga is active (an EXISTS probe: cheap while many are, unlike a count)."""
    deadline = time.monotonic() + timeout
    probe = f"SELECT EXISTS (SELECT 1 FROM saga_state WHERE {ACTIVE_SQL})"
    while await scalar(engine, probe):
        if time.monotonic() > deadline:
            raise RuntimeError(f"sagas still active after {timeout}s")
        await asyncio.sleep(0.1)


def _ts(value: Any) -> float:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


@dataclass
class Latencies:
    first_step: list[float]
    """From the saga's start (``created_at``, or ``since`` if later) to its first step."""
    done: list[float]
    """From the same point to the saga's end (``finished_at``)."""
    last_finished: float


async def latencies(engine: AsyncEngine, since: float = 0.0) -> Latencies:
    """Per saga, measured from ``created_at`` or ``since`` (the commit of a bulk start, whose
    rows were created before they became visible), whichever is later."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT created_at, finished_at, step_history FROM saga_state "
                    "WHERE finished_at IS NOT NULL"
                )
            )
        ).all()
    out = Latencies([], [], 0.0)
    for created, finished, history in rows:
        begin = max(_ts(created), since)
        end = _ts(finished)
        out.last_finished = max(out.last_finished, end)
        out.done.append(end - begin)
        if isinstance(history, str):
            history = json.loads(history)
        if history:  # an attempt's "at" is when it began
            out.first_step.append(_ts(history[0]["at"]) - begin)
    return out


# --- processes ----------------------------------------------------------------------------


def sagad_flags(settings: str, concurrency: int, batch_size: int) -> list[str]:
    """``default``: no tuning flag (sagad's own defaults); ``tuned``: the given ones."""
    if settings == "default":
        return []
    return ["--concurrency", str(concurrency), "--batch-size", str(batch_size)]


@dataclass
class Workers:
    code: Code
    url: str
    count: int
    flags: list[str]
    extra_env: dict[str, str] = field(default_factory=dict)
    cpus: set[int] | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        cmd = [self.code.python, "-m", "sagad", "run", "--app", self.code.app]
        cmd += ["--database-url", self.url, *self.flags, "--log-level", "WARNING"]
        for _ in range(self.count):
            p = subprocess.Popen(
                cmd,
                env=self.code.env(self.extra_env),
                cwd=self.code.app_dir,
                stdin=subprocess.DEVNULL,
            )
            if self.cpus:
                os.sched_setaffinity(p.pid, self.cpus)
            self.procs.append(p)

    def cpu(self) -> float:
        return sum(proc_cpu_seconds(p.pid) for p in self.procs)

    def peak_rss(self) -> list[float]:
        return [round(proc_peak_rss_mb(p.pid), 1) for p in self.procs]

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"sagad (pid {p.pid}) exited with code {p.returncode}")

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


def reset_tables(code: Code, url: str) -> None:
    out = code.run(code.seed_script, "reset", "--url", url, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{code.label}: setting up the tables failed:\n{out.stderr[-3000:]}")


class Seeder:
    """``seed.py start``: N sagas inserted in one transaction by the code under test. The
    process keeps its connection (its backend's CPU is counted) until :meth:`close`."""

    def __init__(self, code: Code, url: str, n: int, saga: str = "bench3") -> None:
        cmd = [code.python, code.seed_script, "start", "--url", url, "--app", "saga_bench_app"]
        self.proc = subprocess.Popen(
            [*cmd, "--sagas", str(n), "--saga", saga],
            env=code.env(),
            cwd=code.app_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def committed(self) -> float:
        """Waits for the commit; returns its time (unix seconds)."""
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise RuntimeError(f"seeding failed (exit code {self.proc.wait()})")
        return float(json.loads(line)["commit_time"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
