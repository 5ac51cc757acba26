"""Set up the benchmark's tables and pre-start sagas, with whatever ``saga_core`` is installed.

Run as a script by the interpreter of the code under test (the current tree, or the venv of a
``--baseline`` revision), so the schema and the rows are that revision's own::

    python seed.py reset --url URL
    python seed.py start --url URL --app saga_bench_app --sagas N [--saga bench3]

``start`` inserts the sagas in ONE transaction (what ``start`` writes, without its per-call
overhead; they all become due at its commit and the workers are woken), prints one JSON line
``{"commit_time": <unix seconds>, "sagas": N}`` and then keeps its connection open until its
standard input is closed, so the harness can count the connection's PostgreSQL CPU (the
inserts) together with the workers'.

It uses only what every revision since the benchmark exists has: ``saga_core.upgrade_schema``,
``saga_core.SagaState``, ``saga_core.rows.new_saga_values`` and the benchmark app's
``three_steps``/``sleeper`` definitions.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
import uuid
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from saga_core import SagaState, upgrade_schema

CHUNK = 5000


async def reset_tables(engine: AsyncEngine) -> None:
    """Create (or upgrade) the saga tables and empty them."""
    await upgrade_schema(engine)
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("TRUNCATE saga_state, saga_workers"))
        else:
            await conn.execute(text("DELETE FROM saga_state"))
            await conn.execute(text("DELETE FROM saga_workers"))


def saga_rows(app: Any, n: int, saga: str) -> list[dict[str, Any]]:
    try:
        from saga_core.rows import new_saga_values
    except ImportError as exc:  # pragma: no cover - only with a much older revision
        raise SystemExit(
            f"this revision of saga_core has no saga_core.rows.new_saga_values ({exc}); "
            "the benchmark cannot pre-start sagas in bulk with it"
        ) from exc
    definition = app.three_steps() if saga == "bench3" else app.sleeper()
    return [
        new_saga_values(definition, saga, f"bench-{uuid.uuid4()}", {"n": i}, None) for i in range(n)
    ]


async def insert_sagas(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    table = SagaState.__table__
    for i in range(0, len(rows), CHUNK):
        await conn.execute(
            insert(table).values(deadline_at=text("CURRENT_TIMESTAMP")), rows[i : i + CHUNK]
        )
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_notify('saga_wakeup', 'saga_state')"))


async def bulk_start(engine: AsyncEngine, app: Any, n: int, saga: str = "bench3") -> float:
    """Insert ``n`` due sagas in one transaction; returns the time of its commit."""
    rows = saga_rows(app, n, saga)
    async with engine.begin() as conn:
        await insert_sagas(conn, rows)
    return time.time()


async def _start_and_hold(url: str, app: Any, n: int, saga: str) -> None:
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    rows = saga_rows(app, n, saga)
    async with engine.connect() as conn:
        async with conn.begin():
            await insert_sagas(conn, rows)
        print(json.dumps({"commit_time": time.time(), "sagas": n}), flush=True)
        # Hold the connection (its backend's CPU is read by the harness) until told to go.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await engine.dispose()


async def _reset(url: str) -> None:
    engine = create_async_engine(url)
    await reset_tables(engine)
    await engine.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["reset", "start"])
    p.add_argument("--url", required=True)
    p.add_argument("--app", default="benchmarks.app", help="module with the saga definitions")
    p.add_argument("--sagas", type=int, default=0)
    p.add_argument("--saga", default="bench3", choices=["bench3", "sleeper"])
    args = p.parse_args()
    if args.command == "reset":
        asyncio.run(_reset(args.url))
    else:
        asyncio.run(
            _start_and_hold(args.url, importlib.import_module(args.app), args.sagas, args.saga)
        )


if __name__ == "__main__":
    main()
