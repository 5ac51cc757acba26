"""Fault injection: several real ``sagad`` processes run ~2,000 sagas whose steps fail at
random (seeded) while the test, at random moments:

- ``kill9``: SIGKILLs a random worker (and starts a replacement);
- ``terminate``: ``pg_terminate_backend`` of random sagad connections (pool or listener);
- ``sigterm``: SIGTERMs a random worker that is up (a graceful drain, interleaved with the
  rest) and starts a replacement;
- ``outage``: cuts the database off from every worker for a while (a TCP proxy between sagad
  and PostgreSQL drops all connections and refuses new ones), then restores it.

Steps record their runs straight to the database, outside the proxy. After the faults the
workers finish the rest: the test waits as long as sagas keep finishing (a minute without one
counts the rest as stuck; :func:`faultkit.wait_settled`), since how long that takes depends
on the machine. Then every saga is checked (:func:`faultkit.check_invariants`): terminal, or FAILED with a reason; COMPLETED
exactly when all its steps succeeded; COMPENSATED exactly when every completed step was
compensated, newest first; no two runs of one saga overlapped; a step re-executed only where a
takeover or an interruption explains it; history agrees with the runs.

Knobs (environment; ``scripts/soak.sh`` sets them for a long run): ``CHAOS_SAGAS`` (2000),
``CHAOS_SECONDS`` (0: inject faults until the sagas are done; else at least this long,
starting more sagas as they finish), ``CHAOS_WORKERS`` (4), ``CHAOS_SEED`` (20261125).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from faultkit import (
    FaultDb,
    Sagad,
    SagadFactory,
    TcpProxy,
    check_invariants,
    child_env,
    wait_settled,
    wait_until,
)
from sqlalchemy.engine import make_url

N_SAGAS = int(os.environ.get("CHAOS_SAGAS", "2000"))
SECONDS = float(os.environ.get("CHAOS_SECONDS", "0"))
N_WORKERS = int(os.environ.get("CHAOS_WORKERS", "4"))
SEED = int(os.environ.get("CHAOS_SEED", "20261125"))
LEASE = 2.0
MAX_FAULT_PHASE = max(60.0, SECONDS)
"""Safety net: stop injecting after this long even if sagas are still running."""


def plan_for(rng: random.Random) -> dict[str, Any]:
    r = rng.random()
    data: dict[str, Any] = {"sleep": rng.choice([0.0, 0.0, 0.01, 0.03, 0.1])}
    step = rng.choice("abc")
    if r < 0.15:
        data["plan"] = {step: rng.randint(1, 3)}  # fails, then recovers on a retry
    elif r < 0.30:
        data["plan"] = {step: "always"}  # fails for good: roll back
    return data


class Chaos:
    def __init__(self, sagad: SagadFactory, db: FaultDb, args: list[str], env: dict[str, str]):
        self.sagad = sagad
        self.db = db
        self.args = args
        self.env = env
        self.workers: list[Sagad] = []
        self.draining: list[Sagad] = []
        self.faults: Counter[str] = Counter()
        self.kill_times: dict[int, datetime] = {}
        self.unexpected: list[str] = []

    def spawn(self) -> Sagad:
        w = self.sagad.start(*self.args, env=self.env)
        self.workers.append(w)
        return w

    def all_ready(self) -> bool:
        """Every current worker (replacements included) is up; the dead are replaced."""
        self.replace_dead()
        return all(w.ready() for w in self.workers)

    async def wait_workers_ready(self, timeout: float = 60.0) -> None:
        """Let replacements started near the end come up, so that the final stops meet
        running workers. One that is not up in time must still stop cleanly (exit 0: a stop
        before ready), which the caller's ``stop()`` checks."""

        async def up() -> bool:
            return self.all_ready()

        with contextlib.suppress(AssertionError):
            await wait_until(up, timeout=timeout, what="every worker to be ready")

    def replace_dead(self) -> None:
        for w in list(self.workers):
            if not w.running():  # died on its own (it should not): noted, replaced
                self.workers.remove(w)
                self.faults["unexpected_exit"] += 1
                tail = "\n".join(w.log.splitlines()[-15:])
                self.unexpected.append(f"sagad {w.pid} exited {w.proc.returncode}:\n{tail}")
                self.spawn()

    async def kill9(self, rng: random.Random) -> None:
        w = rng.choice(self.workers)
        self.workers.remove(w)
        w.proc.kill()
        await w.wait_exit()
        self.kill_times[w.pid] = await self.db.db_now()
        self.faults["kill9"] += 1
        self.spawn()

    async def sigterm(self, rng: random.Random) -> None:
        # Only a worker that is up: a drain. (A stop during start-up is tested on its own in
        # tests/acceptance/test_stop_during_startup.py; stopping starting workers here would
        # only add start-ups, which a loaded machine may not keep up with.)
        ready = [w for w in self.workers if w.ready()]
        if not ready or sum(d.running() for d in self.draining) >= 2:
            await self.terminate(rng)
            return
        w = rng.choice(ready)
        self.workers.remove(w)
        w.signal(signal.SIGTERM)
        self.draining.append(w)
        self.faults["sigterm"] += 1
        self.spawn()

    def states(self) -> list[str]:
        """Each worker's state and last log lines (for a failure message)."""
        out = []
        for w in [*self.workers, *self.draining]:
            state = "running" if w.running() else f"exited {w.proc.returncode}"
            ready = "ready" if w.ready() else "not ready"
            out.append(f"--- sagad {w.pid}: {state}, {ready}")
            out.extend("  " + line for line in w.log.splitlines()[-5:])
        return out

    async def terminate(self, rng: random.Random) -> None:
        rows = await self.db.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() "
            "AND application_name IN ('chaos-sagad', 'sagad-listener') "
            "ORDER BY random() LIMIT :k",
            k=rng.randint(1, 3),
        )
        self.faults["terminate_backend"] += sum(1 for r in rows if r[0])

    async def outage(self, rng: random.Random, proxy: TcpProxy) -> None:
        await proxy.cut()
        self.faults["db_outage"] += 1
        # The outage's length is the fault itself (not synchronisation): sometimes shorter,
        # sometimes longer than a lease.
        await asyncio.sleep(rng.uniform(0.5, 2 * LEASE))
        await proxy.restore()


async def test_chaos(
    sagad: SagadFactory, fault_db: FaultDb, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(SEED)
    real = make_url(fault_db.url)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
    await proxy.restore()
    via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    env = child_env(
        fault_db.table,
        lease=LEASE,
        CHAOS_RECORD_URL=fault_db.url,
        SAGA_POLL_INTERVAL="0.25",
        SAGA_DRAIN_TIMEOUT="30",
        SAGA_HEARTBEAT_INTERVAL="1",
        SAGA_STARTUP_TIMEOUT="60",
    )
    args = ["--app", "chaos_app:make", "--database-url", via_proxy, "--concurrency", "16"]
    chaos = Chaos(sagad, fault_db, args, env)
    try:
        for _ in range(N_WORKERS):
            chaos.spawn()
        for w in chaos.workers:
            await w.wait_ready(60)

        starters: list[asyncio.Task[Any]] = []

        def start_batch() -> None:
            batch = [("chaos", plan_for(rng)) for _ in range(N_SAGAS)]
            starters.append(asyncio.create_task(fault_db.start_many(batch)))

        start_batch()
        t0 = time.monotonic()
        outage_at = rng.uniform(2.0, 6.0)
        while True:
            elapsed = time.monotonic() - t0
            chaos.replace_dead()
            starter = starters[-1]
            if starter.done():
                starter.result()
                unfinished = await fault_db.unfinished()
                if elapsed >= SECONDS and unfinished == 0:
                    break
                if elapsed < SECONDS and unfinished < N_SAGAS // 10:
                    start_batch()
            if elapsed > MAX_FAULT_PHASE:
                break
            if not chaos.faults["db_outage"] and elapsed > outage_at:
                await chaos.outage(rng, proxy)
            else:
                action = rng.choices(["kill9", "terminate", "sigterm"], weights=[4, 4, 2])[0]
                await getattr(chaos, action)(rng)
            await asyncio.sleep(rng.uniform(0.1, 0.6))
        await asyncio.gather(*starters)

        # Faults over: the workers finish what is left.
        async def unfinished() -> int:
            chaos.replace_dead()
            return await fault_db.unfinished()

        await wait_settled(unfinished)  # those left are reported as stuck below
        for w in chaos.draining:
            assert await w.wait_exit(60) == 0, f"drained sagad {w.pid} exit code:\n{w.log}"
        report = await check_invariants(fault_db, chaos.kill_times)
        states = chaos.states()  # as they were when the sagas were checked
        await chaos.wait_workers_ready()
        for w in chaos.workers:
            assert await w.stop(60) == 0, w.log
    finally:
        await proxy.close()

    faults = ", ".join(f"{k}={v}" for k, v in sorted(chaos.faults.items()))
    statuses = ", ".join(f"{k}={v}" for k, v in sorted(report.statuses.items()))
    lost = len(starters) * N_SAGAS - report.sagas
    summary = (
        f"CHAOS seed={SEED} workers={N_WORKERS} sagas={report.sagas} ({statuses}); "
        f"faults: {faults}; lost={lost} stuck={report.stuck} "
        f"concurrent_executions={report.concurrent} quarantined={report.quarantined} "
        f"re-executions={report.reexecutions} (unexplained={report.unexplained_reexecutions}) "
        f"problems={len(report.problems)}"
    )
    with capsys.disabled():
        print("\n" + summary)
    assert not report.problems, "\n".join(
        [summary, *report.problems, *report.details, *chaos.unexpected, *states]
    )
    assert lost == 0 and report.stuck == 0 and report.concurrent == 0
    assert report.unexplained_reexecutions == 0
    assert chaos.faults["kill9"] and chaos.faults["sigterm"] and chaos.faults["db_outage"]
    assert chaos.faults["terminate_backend"]
    assert not chaos.faults["unexpected_exit"], "\n".join([summary, *chaos.unexpected])
