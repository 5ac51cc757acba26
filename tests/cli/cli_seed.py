"""Seeding a saga table with real sagas in every status (run through a SagaOrchestrator)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from cli_app import build
from sqlalchemy import text

from saga_core import SagaAdmin

LABELS = (
    "completed",
    "compensated",
    "failed",
    "compensating",
    "suspended",
    "aborted",
    "running",
    "held",
)


@dataclass(frozen=True)
class Seeded:
    ids: dict[str, uuid.UUID]
    tokens: dict[str, uuid.UUID]

    def __getitem__(self, label: str) -> uuid.UUID:
        return self.ids[label]


async def start_every_status(orch: Any) -> dict[str, uuid.UUID]:
    """One saga in every status of ``LABELS`` but ``held``, on ``orch``'s table."""
    ids: dict[str, uuid.UUID] = {}

    async def start(label: str, name: str, inline: bool = True, **flags: bool) -> None:
        ids[label] = await orch.start(
            saga_name=name,
            initial_data={"order_id": label, **flags},
            aggregation_id=f"agg-{label}",
            inline=inline,
        )

    await start("completed", "order")
    await start("compensated", "order_fast", fail=True)
    await start("failed", "order_manual", fail=True)
    await start("compensating", "order_fast", fail=True, comp_fail=True)
    await start("suspended", "order", fail=True)
    await start("aborted", "order", fail=True)
    await SagaAdmin(engine=orch.engine, actor="seed").abort(ids["aborted"], reason="seeding")
    await start("running", "order", inline=False)
    return ids


async def seed(database_url: str, model: Any = None) -> Seeded:
    """Empty the table, then leave one saga in each status of ``LABELS`` (``running``: due
    now and unheld; ``held``: claimed by worker ``worker-held`` under a one-hour lease)."""
    orch = build(database_url, model=model)
    holder = build(database_url, model=model, worker_id="worker-held")
    try:
        eng = orch.engine
        await orch.create_tables()
        async with eng.sql_engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {eng.table_name}, saga_workers"))
        ids = await start_every_status(orch)
        ids["held"] = await orch.start(
            saga_name="order",
            initial_data={"order_id": "held"},
            aggregation_id="agg-held",
            inline=False,
        )
        claimed = await holder.engine.claim(1, saga_ids=[ids["held"]])
        assert len(claimed) == 1
        tokens = {}
        for label, sid in ids.items():
            tokens[label] = (await orch.get_snapshot(sid)).step_execution_token
        return Seeded(ids, tokens)
    finally:
        await orch.engine.sql_engine.dispose()
        await holder.engine.sql_engine.dispose()
