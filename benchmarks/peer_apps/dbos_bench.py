"""DBOS Transact (3.x): three trivial steps as one durable workflow, run from a queue.

    python dbos_bench.py work --url URL --sagas N --mode sync|async
    python dbos_bench.py seed --url URL --sagas N --mode sync|async

The worker launches DBOS with its default settings (a queue registered with the defaults:
no concurrency limit, polled every second; each step's output checkpointed in the system
database before the next step runs) and waits. The seeder enqueues N workflows on that
queue in one transaction (``DBOSClient.enqueue_in_transaction``), as the saga benchmark
inserts its sagas in one transaction. ``sync`` runs plain functions (DBOS's thread pool),
``async`` coroutines (its event loop).
"""

from __future__ import annotations

import argparse
import time

from common import Tally, report, say, wait_for_eof

APP = "saga-bench"
VERSION = "saga-bench-1"
QUEUE = "saga_bench"


def work(url: str, n: int, mode: str) -> None:
    from dbos import DBOS

    tally = Tally(n)
    DBOS(
        config={
            "name": APP,
            "system_database_url": url,
            "application_version": VERSION,
            "log_level": "WARNING",
        }
    )

    @DBOS.step(name="reserve")
    def reserve(x: int) -> int:
        tally.step_begins()
        return x + 1

    @DBOS.step(name="charge")
    def charge(x: int) -> int:
        return x + 1

    @DBOS.step(name="ship")
    def ship(x: int) -> int:
        return x + 1

    @DBOS.workflow(name="bench_sync")
    def bench_sync(x: int) -> int:
        out = ship(charge(reserve(x)))
        tally.saga_done()
        return out

    @DBOS.step(name="reserve_async")
    async def reserve_async(x: int) -> int:
        tally.step_begins()
        return x + 1

    @DBOS.step(name="charge_async")
    async def charge_async(x: int) -> int:
        return x + 1

    @DBOS.step(name="ship_async")
    async def ship_async(x: int) -> int:
        return x + 1

    @DBOS.workflow(name="bench_async")
    async def bench_async(x: int) -> int:
        out = await ship_async(await charge_async(await reserve_async(x)))
        tally.saga_done()
        return out

    DBOS.launch()
    DBOS.register_queue(QUEUE)
    say(ready=True, mode=mode)
    tally.finished.wait()
    report(tally)
    wait_for_eof()
    DBOS.destroy()


def seed(url: str, n: int, mode: str) -> None:
    import sqlalchemy as sa
    from dbos import DBOSClient, EnqueueOptions

    client = DBOSClient(system_database_url=url, application_name=APP)
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    options: EnqueueOptions = {
        "workflow_name": f"bench_{mode}",
        "queue_name": QUEUE,
        "app_version": VERSION,
    }
    with engine.connect() as conn:
        with conn.begin():
            for i in range(n):
                client.enqueue_in_transaction(conn, options, i)
        say(commit_time=time.time(), sagas=n)
        wait_for_eof()
    engine.dispose()
    client.destroy()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["work", "seed"])
    p.add_argument("--url", required=True, help="postgresql://... of a scratch database")
    p.add_argument("--sagas", type=int, required=True)
    p.add_argument("--mode", choices=["sync", "async"], default="sync")
    args = p.parse_args()
    (work if args.command == "work" else seed)(args.url, args.sagas, args.mode)


if __name__ == "__main__":
    main()
