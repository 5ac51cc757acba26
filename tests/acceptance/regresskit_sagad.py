"""A saga table for :mod:`regress_app` (and its ``_runs`` side table), seen through the test's
own orchestrator, for the issue-11 regression tests that run real ``sagad`` processes."""

from __future__ import annotations

import uuid
from typing import Any

import regress_app
from app_sagas import runs_ddl
from sagad_kit import TEST_APP_NAME
from sqlalchemy import text

from saga_core.store import SagaRow


class RegressDb:
    def __init__(self, url: str, *, lease: float) -> None:
        self.url = url
        self.lease = lease
        self.table = f"r_{uuid.uuid4().hex[:10]}"
        self.orch = regress_app.build(url, table=self.table, lease=lease, app_name=TEST_APP_NAME)
        self.engine = self.orch.engine.sql_engine

    def sagad_args(self, *extra: str) -> list[str]:
        return ["--app", "regress_app:make", "--database-url", self.url, *extra]

    def sagad_env(self, **extra: str) -> dict[str, str]:
        return {
            "REGRESS_TABLE": self.table,
            "REGRESS_LEASE": str(self.lease),
            "SAGA_POLL_INTERVAL": "0.2",
            **extra,
        }

    async def setup(self) -> None:
        await self.orch.create_tables()
        async with self.engine.begin() as conn:
            await conn.execute(text(runs_ddl("postgresql", self.table)))

    async def close(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {self.table}_runs"))
            await conn.execute(text(f"DROP TABLE IF EXISTS {self.table}"))
        await self.engine.dispose()

    async def fetch(self, sql: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(sql.format(t=self.table)), params)).all())

    async def row(self, saga_id: uuid.UUID) -> SagaRow:
        row = await self.orch.engine.store.saga_get(saga_id, with_history=True)
        assert row is not None, saga_id
        return row

    async def runs(self, saga_id: uuid.UUID) -> list[Any]:
        return await self.fetch(
            "SELECT step_id, attempt, pid, started_at, ended_at, outcome FROM {t}_runs "
            "WHERE saga_id = :s ORDER BY started_at, id",
            s=saga_id,
        )

    async def db_now(self) -> Any:
        return (await self.fetch("SELECT clock_timestamp()"))[0][0]


def brief(row: SagaRow) -> str:
    parts = []
    for e in row.step_history or []:
        text_ = f"{e['phase']}/{e.get('step_id')}/{e['status']}"
        why = e.get("reason") or e.get("error")
        worker = e.get("worker")
        parts.append(
            text_ + (f"({str(why)[:80]})" if why else "") + (f"@{worker}" if worker else "")
        )
    return f"{row.status} takeovers={row.takeover_count} history=[{', '.join(parts)}]"
