"""Retention: every ``retention_interval`` seconds, delete finished sagas (COMPLETED,
COMPENSATED, ABORTED) that finished more than ``retention_days`` ago, in batches of
``retention_batch_size`` rows, each its own short transaction (``SagaAdmin.purge``)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from loguru import logger

from saga_core import SagaAdmin, SagaEngine

__all__ = ["purge_once", "run_retention"]

BATCH_PAUSE_S = 0.05
"""Pause between two batches, so a large backlog never monopolises the database."""


def _tables(engines: list[SagaEngine[Any]]) -> list[SagaEngine[Any]]:
    """One engine per (database, table): orchestrators sharing a table purge it once."""
    seen: dict[tuple[str, str], SagaEngine[Any]] = {}
    for eng in engines:
        key = (eng.sql_engine.url.render_as_string(hide_password=True), eng.table_name)
        seen.setdefault(key, eng)
    return list(seen.values())


async def purge_once(
    engines: list[SagaEngine[Any]], *, days: float, batch_size: int, pause: float = BATCH_PAUSE_S
) -> int:
    """One retention run over every table; how many sagas were deleted. A failing table is
    logged and skipped (the next run tries again)."""
    total = 0
    for eng in _tables(engines):
        try:
            n = await SagaAdmin(engine=eng, actor="sagad").purge(
                timedelta(days=days), batch_size=batch_size, pause=pause
            )
        except Exception as exc:
            logger.warning("retention: purging {} failed: {}", eng.table_name, exc)
            continue
        if n:
            logger.info(
                "retention: deleted {} saga(s) of {} finished more than {:g} day(s) ago",
                n,
                eng.table_name,
                days,
            )
        total += n
    return total


async def run_retention(
    engines: list[SagaEngine[Any]], *, days: float, interval: float, batch_size: int
) -> None:
    """Purge at once, then every ``interval`` seconds, until cancelled."""
    while True:
        await purge_once(engines, days=days, batch_size=batch_size)
        await asyncio.sleep(interval)
