"""Definition versions with real processes: a ``sagad`` that registers only v1 of a saga
advertises it, leaves a v2 saga untouched, and ``sagactl orphans`` reports that saga until a
``sagad`` registering v2 starts and runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import app_sagas
from sagad_kit import SagaDb, SagadFactory, base_env, wait_until

SAGACTL = str(Path(sys.executable).with_name("sagactl"))


def orphans(db: SagaDb) -> dict[str, Any]:
    res = subprocess.run(
        [SAGACTL, "orphans", "--ids", "-o", "json", "--database-url", db.url, "--table", db.table],
        capture_output=True,
        text=True,
        env=base_env(),
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    data: dict[str, Any] = json.loads(res.stdout)
    return data


async def test_v1_worker_leaves_v2_saga_alone_orphans_reports_it(
    sagad: SagadFactory, saga_db: SagaDb
) -> None:
    # Started under v2 by an application that has both versions; no worker runs yet.
    app = app_sagas.build(saga_db.url, table=saga_db.table, steps_v2=True)
    try:
        v2_id = await app.start(saga_name="steps", initial_data={}, aggregation_id="v2-1")
    finally:
        await app.engine.sql_engine.dispose()
    before = (await saga_db.fetch("SELECT step_execution_token, definition_version FROM {t}"))[0]
    assert before[1] == 2

    only_v1 = sagad.start(*saga_db.sagad_args(), env=saga_db.sagad_env(lease=30))
    await only_v1.wait_ready()
    # v1 sagas started after the v2 one: claims go oldest due first, so once these are done
    # the worker has passed over the v2 saga (its claims never match it).
    await saga_db.start("steps", 5)
    counts = await saga_db.wait_all({"COMPLETED"}, 5, timeout=30)
    assert counts == {"COMPLETED": 5, "RUNNING": 1}
    row = (
        await saga_db.fetch(
            "SELECT status, step_execution_token, lease_owner, step_history::text FROM {t} "
            "WHERE id = :i",
            i=v2_id,
        )
    )[0]
    assert (row[0], row[1], row[2], row[3]) == ("RUNNING", before[0], None, "[]"), "untouched"

    registered = await saga_db.fetch(
        "SELECT saga_versions FROM saga_workers WHERE pid = :p", p=only_v1.pid
    )
    assert registered[0][0] == {
        saga_db.table: {
            "ledger": [1],
            "ledger_rollback": [1],
            "rollback": [1],
            "steps": [1],
            "trivial": [1],
        }
    }

    data = orphans(saga_db)
    assert data["live_workers"] >= 1
    assert data["orphans"] == [
        {
            "saga_name": "steps",
            "definition_version": 2,
            "count": 1,
            "oldest_created_at": data["orphans"][0]["oldest_created_at"],
            "live_versions": [1],
            "ids": [str(v2_id)],
        }
    ]

    both = sagad.start(*saga_db.sagad_args(), env=saga_db.sagad_env(lease=30, ACCEPT_STEPS_V2="1"))
    await both.wait_ready()
    await saga_db.wait_all({"COMPLETED"}, 6, timeout=30)
    steps = await saga_db.fetch(
        "SELECT step_id FROM {t}_runs WHERE saga_id = :i AND phase = 'execute' ORDER BY started_at",
        i=v2_id,
    )
    assert [r[0] for r in steps] == ["a", "b", "c", "d"], "ran as version 2"

    async def no_orphans() -> bool:
        return orphans(saga_db)["orphans"] == []

    await wait_until(no_orphans, timeout=10, what="no orphans")
    assert await only_v1.stop() == 0
    assert await both.stop() == 0
