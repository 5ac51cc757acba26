"""``sagactl purge`` (retention by hand) and how a delayed start shows in ``list``/``show``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from cli_app import build
from cli_helpers import CliFn
from cli_seed import Seeded
from sqlalchemy import text

from saga_core import SagaAdminSnapshot

GetSaga = Callable[..., SagaAdminSnapshot]


def backdate(pg_url: str, ids: list[uuid.UUID], days: float) -> None:
    async def work() -> None:
        orch = build(pg_url)
        try:
            async with orch.engine.sql_engine.begin() as conn:
                await conn.execute(
                    text(
                        "UPDATE saga_state SET finished_at = now() - make_interval(days => :d) "
                        "WHERE id = ANY(:ids)"
                    ),
                    {"d": int(days), "ids": ids},
                )
        finally:
            await orch.engine.sql_engine.dispose()

    asyncio.run(work())


def count(pg_url: str) -> int:
    async def work() -> int:
        orch = build(pg_url)
        try:
            async with orch.engine.sql_engine.connect() as conn:
                return int((await conn.execute(text("SELECT count(*) FROM saga_state"))).scalar())
        finally:
            await orch.engine.sql_engine.dispose()

    return asyncio.run(work())


def test_purge_dry_run_confirmation_and_json(cli: CliFn, seeded: Seeded, pg_url: str) -> None:
    old = [seeded["completed"], seeded["compensated"], seeded["aborted"], seeded["failed"]]
    backdate(pg_url, old, 40)
    total = count(pg_url)

    r = cli("purge", "--older-than", "30d", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "would delete 3 " in r.stdout and "nothing changed" in r.stdout
    data = cli("purge", "--older-than", "30d", "--dry-run", "-o", "json").json()
    assert data == {
        "action": "purge",
        "dry_run": True,
        "statuses": ["COMPLETED", "COMPENSATED", "ABORTED"],
        "older_than_s": 30 * 86400.0,
        "matched": 3,
    }
    assert count(pg_url) == total

    r = cli("purge", "--older-than", "30d", "-y")
    assert r.exit_code == 2 and "--reason is required" in r.stderr
    r = cli("purge", "--older-than", "30d", "-r", "retention")
    assert r.exit_code == 2 and "pass --yes" in r.stderr
    assert count(pg_url) == total

    r = cli("purge", "--older-than", "30d", "--status", "COMPLETED", "-r", "tidy", "-y")
    assert r.exit_code == 0, r.stderr
    assert "deleted 1 COMPLETED" in r.stdout
    data = cli(
        "purge",
        "--older-than",
        "30d",
        "-s",
        "compensated,aborted",
        "-r",
        "tidy",
        "-y",
        "-o",
        "json",
    ).json()
    assert data["deleted"] == 2 and data["reason"] == "tidy" and data["actor"]
    assert count(pg_url) == total - 3
    # Nothing left to delete: no confirmation needed, exit 0.
    r = cli("purge", "--older-than", "30d", "-r", "again")
    assert r.exit_code == 0 and "deleted 0" in r.stdout


def test_purge_usage_errors(cli: CliFn, seeded: Seeded, pg_url: str) -> None:
    total = count(pg_url)
    r = cli("purge", "--older-than", "soon", "-r", "x", "-y")
    assert r.exit_code == 2 and "--older-than" in r.stderr
    r = cli("purge", "--older-than", "1d", "--status", "FAILED", "-r", "x", "-y")
    assert r.exit_code == 2 and "only finished sagas" in r.stderr
    r = cli("purge", "-r", "x", "-y")
    assert r.exit_code == 2
    assert count(pg_url) == total


def test_a_delayed_start_in_list_and_show(cli: CliFn, seeded: Seeded, pg_url: str) -> None:
    async def start() -> uuid.UUID:
        orch = build(pg_url)
        try:
            return await orch.start(
                saga_name="order",
                initial_data={"order_id": "later"},
                aggregation_id="agg-later",
                run_at=timedelta(hours=2),
                idempotency_key="order-later",
            )
        finally:
            await orch.engine.sql_engine.dispose()

    sid = asyncio.run(start())
    r = cli("list", "--aggregation-id", "agg-later")
    assert r.exit_code == 0, r.stderr
    assert "RUNNING" in r.stdout and "starts in 1h59m" in r.stdout
    r = cli("show", str(sid))
    assert r.exit_code == 0, r.stderr
    assert "delayed start" in r.stdout and "in 1h59m" in r.stdout
    assert "idempotency key" in r.stdout and "order-later" in r.stdout
    data: dict[str, Any] = cli("show", str(sid), "-o", "json").json()
    assert data["status"] == "RUNNING" and data["lease_owner"] is None
    assert data["idempotency_key"] == "order-later"
    assert data["deadline_at"].endswith("Z")
