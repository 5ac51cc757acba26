"""sagad's retention: with ``retention_days`` set, a running sagad deletes finished sagas
older than that, every ``retention_interval``, and leaves newer ones alone."""

from __future__ import annotations

from sagad_kit import SagaDb, SagadFactory, wait_until
from sqlalchemy import text


async def test_sagad_purges_old_finished_sagas(sagad: SagadFactory, saga_db: SagaDb) -> None:
    env = {
        **saga_db.sagad_env(2),
        "SAGA_RETENTION_DAYS": "1",
        "SAGA_RETENTION_INTERVAL": "0.2",
        "SAGA_RETENTION_BATCH_SIZE": "2",
    }
    worker = sagad.start(*saga_db.sagad_args(), env=env)
    await worker.wait_ready()
    ids = await saga_db.start("trivial", 5)
    await saga_db.wait_all({"COMPLETED"}, 5, timeout=30)
    old = ids[:3]
    async with saga_db.engine.begin() as conn:
        await conn.execute(
            text(
                f"UPDATE {saga_db.table} SET finished_at = now() - interval '2 days' "
                "WHERE id = ANY(:ids)"
            ),
            {"ids": old},
        )

    async def purged() -> bool:
        rows = await saga_db.fetch("SELECT id FROM {t}")
        return {r[0] for r in rows} == set(ids[3:])

    await wait_until(purged, timeout=20, what="the old sagas to be purged")
    assert "retention: deleted" in worker.log
    assert await worker.stop() == 0
