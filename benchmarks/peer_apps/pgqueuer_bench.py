"""pgqueuer (1.x): three trivial steps as three chained jobs, each job enqueuing the next.

    python pgqueuer_bench.py work --url URL --sagas N
    python pgqueuer_bench.py seed --url URL --sagas N

The worker installs pgqueuer's tables (durable, the default), then runs one QueueManager
with its default settings (``run()``: batch size 10, continuous mode, LISTEN/NOTIFY). Job
``reserve`` enqueues ``charge`` (a committed insert: the durable checkpoint before the next
step), which enqueues ``ship``. The seeder enqueues N ``reserve`` jobs in one statement.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import timedelta

from common import Tally, report, say, wait_for_eof


async def work(url: str, n: int) -> None:
    import asyncpg
    from pgqueuer import Job, Queries, QueueManager

    tally = Tally(n)
    setup = await asyncpg.connect(url)
    queries = Queries.from_asyncpg_connection(setup)
    if not await queries.schema_is_installed():
        await queries.install()
    persistence = await setup.fetch(
        "SELECT relname, relpersistence FROM pg_class WHERE relname LIKE 'pgqueuer%' AND relkind = 'r'"
    )
    await setup.close()

    conn = await asyncpg.connect(url)
    qm = QueueManager(Queries.from_asyncpg_connection(conn))

    @qm.entrypoint("reserve")
    async def reserve(job: Job) -> None:
        tally.step_begins()
        await qm.queries.enqueue("charge", str(int(job.payload or b"0") + 1).encode())

    @qm.entrypoint("charge")
    async def charge(job: Job) -> None:
        await qm.queries.enqueue("ship", str(int(job.payload or b"0") + 1).encode())

    @qm.entrypoint("ship")
    async def ship(job: Job) -> None:
        tally.saga_done()
        if tally.finished.is_set():
            qm.shutdown.set()

    async def announce() -> None:
        # Ready once a NOTIFY round trip works: jobs enqueued from now on wake the worker.
        while True:
            try:
                await qm.listener_healthy(timeout=timedelta(seconds=0.5))
                break
            except Exception:
                await asyncio.sleep(0.05)
        kinds = {r["relpersistence"].decode() for r in persistence}  # p: logged (durable)
        say(ready=True, tables="logged" if kinds == {"p"} else f"persistence {sorted(kinds)}")

    ready = asyncio.create_task(announce())
    await qm.run()
    await ready
    report(tally)
    await asyncio.get_running_loop().run_in_executor(None, wait_for_eof)


async def seed(url: str, n: int) -> None:
    import asyncpg
    from pgqueuer import Queries

    conn = await asyncpg.connect(url)
    queries = Queries.from_asyncpg_connection(conn)
    await queries.enqueue(["reserve"] * n, [str(i).encode() for i in range(n)], [0] * n)
    say(commit_time=time.time(), sagas=n)
    await asyncio.get_running_loop().run_in_executor(None, wait_for_eof)
    await conn.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["work", "seed"])
    p.add_argument("--url", required=True, help="postgresql://... of a scratch database")
    p.add_argument("--sagas", type=int, required=True)
    args = p.parse_args()
    asyncio.run((work if args.command == "work" else seed)(args.url, args.sagas))


if __name__ == "__main__":
    main()
