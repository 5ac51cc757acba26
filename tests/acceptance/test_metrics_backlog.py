"""sagad's metrics an on-call needs: the backlog gauges (sagas due now, age of the oldest due
saga, FAILED and SUSPENDED sagas) read from the database, a build-info gauge, and no
``_created`` series."""

from __future__ import annotations

import asyncio
import re
import socket
import urllib.request

from sagad_kit import SagaDb, SagadFactory, wait_until
from sqlalchemy import text

from saga_core import __version__

INSERT = """
INSERT INTO {t} (id, saga_name, aggregation_id, status, phase, current_step_index,
  steps_state, step_execution_token, context, step_history, deadline_at, retry_counter,
  takeover_count, recovery_count, definition_fingerprint, created_at, updated_at)
VALUES (gen_random_uuid(), :name, gen_random_uuid()::text, :status, 'execute', 0, '[]',
  gen_random_uuid(), '{{}}', '[]', {deadline}, 0, 0, 0, '', now(), now())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _add(db: SagaDb, name: str, status: str, due_in: float | None) -> None:
    """A saga row as a worker or an operator would have left it (deadline ``due_in`` s from
    now; ``None``: no deadline)."""
    deadline = "NULL" if due_in is None else f"now() + interval '{due_in:g} seconds'"
    async with db.engine.begin() as conn:
        await conn.execute(
            text(INSERT.format(t=db.table, deadline=deadline)), {"name": name, "status": status}
        )


def _value(metrics: str, name: str, table: str) -> float | None:
    found = re.search(rf'^{name}\{{table="{table}"\}} (\S+)$', metrics, re.MULTILINE)
    return float(found.group(1)) if found else None


async def test_backlog_gauges_build_info_and_no_created_series(
    sagad: SagadFactory, saga_db: SagaDb
) -> None:
    t = saga_db.table
    # A saga no worker of this app runs stays due: the backlog an alert should catch.
    await _add(saga_db, "not_deployed_yet", "RUNNING", due_in=-120)
    await _add(saga_db, "trivial", "FAILED", due_in=None)
    await _add(saga_db, "trivial", "FAILED", due_in=None)
    await _add(saga_db, "trivial", "SUSPENDED", due_in=3600)
    port = _free_port()
    worker = sagad.start(
        *saga_db.sagad_args(), env={**saga_db.sagad_env(2), "SAGA_METRICS_PORT": str(port)}
    )
    await worker.wait_ready()

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    async def backlog_read() -> str | None:
        text = await asyncio.to_thread(scrape)
        return text if _value(text, "sagad_sagas_due", t) is not None else None

    metrics = await wait_until(backlog_read, timeout=20, what="the backlog gauges")
    assert _value(metrics, "sagad_sagas_due", t) == 1.0
    age = _value(metrics, "sagad_oldest_due_age_seconds", t)
    assert age is not None and 120 <= age < 200, age
    assert _value(metrics, "sagad_sagas_failed", t) == 2.0
    assert _value(metrics, "sagad_sagas_suspended", t) == 1.0
    assert re.search(
        rf'^sagad_build_info\{{python="[\d.]+",version="{re.escape(__version__)}"\}} 1\.0$',
        metrics,
        re.MULTILINE,
    ), metrics
    assert "_created" not in metrics
    assert "process_cpu_seconds_total" in metrics, "process metrics (need /proc/stat)"

    # The gauges follow the table: an operator settles the FAILED sagas.
    async with saga_db.engine.begin() as conn:
        await conn.execute(text(f"UPDATE {t} SET status = 'ABORTED' WHERE status = 'FAILED'"))

    async def failed_cleared() -> bool:
        return _value(await asyncio.to_thread(scrape), "sagad_sagas_failed", t) == 0.0

    await wait_until(failed_cleared, timeout=20, what="sagad_sagas_failed back to 0")
    assert await worker.stop() == 0
