"""The open loop's starter: a process of its own (started niced by the harness, so it does
not compete with the worker for a core) that calls ``SagaOrchestrator.start`` on a schedule
computed before it begins.

    python -m benchmarks.starter --url URL --rate R --seconds S

It builds the orchestrator, opens its pool's connections and computes every start's due
time (``i / R`` seconds after the go), prints ``{"ready": true}``, waits for one line on its
standard input (the go), then starts the sagas, at most ``--in-flight`` calls at once. At the
end it prints one JSON line: starts made, the achieved rate, how late the starts were
against the schedule (a starter that falls behind says so instead of hiding it) and its own
CPU per start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


async def run(url: str, rate: float, seconds: float, in_flight: int, pool: int) -> dict[str, Any]:
    os.environ["BENCH_POOL"] = str(pool)
    try:  # the worker's copy of the app (the same definition fingerprint)
        from saga_bench_app import make_orchestrator  # type: ignore[import-not-found]
    except ImportError:
        from benchmarks.app import make_orchestrator

    orch = make_orchestrator(url)
    engine = orch.engine.sql_engine

    async def touch() -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
            await asyncio.sleep(0.05)  # hold it so the others open their own

    await asyncio.gather(*(touch() for _ in range(pool)))
    total = int(rate * seconds)
    schedule = [i / rate for i in range(total)]
    print(json.dumps({"ready": True, "sagas": total}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    slots = asyncio.Semaphore(in_flight)
    lag: list[float] = []
    calls: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        t = time.perf_counter()
        try:
            await orch.start(
                saga_name="bench3", initial_data={"n": i}, aggregation_id=f"ol-{uuid.uuid4()}"
            )
        finally:
            calls.append(time.perf_counter() - t)
            slots.release()

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for i, due in enumerate(schedule):
        delay = t0 + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        lag.append(time.perf_counter() - t0 - due)
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    await engine.dispose()
    return {
        "sagas": total,
        "achieved_rate": round(total / elapsed, 1),
        "lag_p50_ms": round(_pct(lag, 50) * 1000, 2),
        "lag_p99_ms": round(_pct(lag, 99) * 1000, 2),
        "start_call_p50_ms": round(_pct(calls, 50) * 1000, 2),
        "start_call_p99_ms": round(_pct(calls, 99) * 1000, 2),
        "cpu_ms_per_start": round((time.process_time() - cpu0) / max(total, 1) * 1000, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--in-flight", type=int, default=64)
    p.add_argument("--pool", type=int, default=8)
    a = p.parse_args()
    print(json.dumps(asyncio.run(run(a.url, a.rate, a.seconds, a.in_flight, a.pool))), flush=True)


if __name__ == "__main__":
    main()
