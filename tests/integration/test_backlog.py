"""``saga_backlog``: the figures behind sagad's backlog gauges (due now, the oldest due time,
FAILED, SUSPENDED), in one statement over active rows only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from itkit import Harness
from sqlalchemy import event, insert, text

from saga_core.store.sql import SqlSagaStore


def _row(status: str, deadline: datetime | None) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": uuid.uuid4(),
        "saga_name": "flow",
        "aggregation_id": f"agg-{uuid.uuid4().hex}",
        "status": status,
        "phase": "execute",
        "current_step_index": 0,
        "steps_state": [],
        "step_execution_token": uuid.uuid4(),
        "context": {},
        "step_history": [],
        "deadline_at": deadline,
        "retry_counter": 0,
        "takeover_count": 0,
        "recovery_count": 0,
        "definition_fingerprint": "",
        "created_at": now,
        "updated_at": now,
        "finished_at": now if status in ("COMPLETED", "COMPENSATED", "ABORTED") else None,
    }


async def test_backlog_counts_due_failed_and_suspended(h: Harness) -> None:
    store = h.store
    assert isinstance(store, SqlSagaStore)
    assert (await store.saga_backlog())[:4] == (0, None, 0, 0)
    now = await store.db_now()
    rows = [
        _row("RUNNING", now - timedelta(minutes=10)),  # due for 10 minutes: the oldest
        _row("COMPENSATING", now - timedelta(minutes=1)),  # due
        _row("SUSPENDED", now - timedelta(seconds=5)),  # a retry that came due
        _row("SUSPENDED", now + timedelta(hours=1)),  # a retry later: not due
        _row("SUSPENDED", None),  # waiting for an event, no timeout
        _row("RUNNING", now + timedelta(minutes=5)),  # leased, running
        _row("FAILED", None),
        _row("FAILED", None),
        _row("COMPLETED", None),
        _row("ABORTED", None),
    ]
    async with store.engine.begin() as conn:
        await conn.execute(insert(store.table), rows)
    due, oldest, failed, suspended, db_now = await store.saga_backlog()
    assert (due, failed, suspended) == (3, 2, 3)
    assert oldest is not None and abs((oldest - rows[0]["deadline_at"]).total_seconds()) < 1
    assert 599 <= (db_now - oldest).total_seconds() < 700


async def test_backlog_reads_only_active_rows_on_postgresql(h: Harness) -> None:
    if not h.is_pg:
        return  # the plan question is PostgreSQL's (SQLite: one process, small tables)
    store = h.store
    assert isinstance(store, SqlSagaStore)
    t = h.table_name
    async with store.engine.begin() as conn:
        await conn.execute(insert(store.table), [_row("FAILED", None)])
        await conn.execute(
            text(
                f"INSERT INTO {t} (id, saga_name, aggregation_id, status, phase, "
                "current_step_index, steps_state, step_execution_token, context, step_history, "
                "retry_counter, takeover_count, recovery_count, definition_fingerprint, "
                "created_at, updated_at, finished_at) "
                "SELECT gen_random_uuid(), 'flow', 'done-' || g, 'COMPLETED', 'execute', 0, "
                "'[]', gen_random_uuid(), '{}', '[]', 0, 0, 0, '', now(), now(), now() "
                "FROM generate_series(1, 20000) AS g"
            )
        )
        await conn.execute(text(f"ANALYZE {t}"))
    # The very statement saga_backlog sends, as PostgreSQL plans it.
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "FILTER" in statement:
            sent.append((statement, params))

    event.listen(store.engine.sync_engine, "before_cursor_execute", capture)
    try:
        assert (await store.saga_backlog())[2] == 1
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", capture)
    ((statement, params),) = sent
    async with store.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        plan = await raw.fetch("EXPLAIN " + statement, *params)
    text_plan = "\n".join(r[0] for r in plan)
    assert f"ux_{t}_active_aggregation" in text_plan, text_plan
    assert "Seq Scan" not in text_plan, text_plan
