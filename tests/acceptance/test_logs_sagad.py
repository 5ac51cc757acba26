"""A real ``sagad``'s log has saga_core's records (standard ``logging``) routed through
loguru: in JSON with the saga's fields as keys and ``logger`` naming the saga_core module,
at the levels docs/sagad.md states; a failed attempt's traceback only at DEBUG."""

from __future__ import annotations

import json
from typing import Any

from sagad_kit import SagaDb, SagadFactory


def _records(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


async def test_saga_core_records_in_sagads_json_log(sagad: SagadFactory, saga_db: SagaDb) -> None:
    (sid,) = await saga_db.start("rollback", 1)  # step c fails for good; b and a compensated
    worker = sagad.start(
        *saga_db.sagad_args("--log-format", "json", "--log-level", "DEBUG"),
        env=saga_db.sagad_env(lease=5),
    )
    await worker.wait_ready()
    await saga_db.wait_all({"COMPENSATED"}, 1, timeout=30)
    assert await worker.stop() == 0
    about = [r for r in _records(worker.log) if r.get("saga_id") == str(sid)]
    assert about and all(r["logger"].startswith("saga_core.") for r in about), about
    assert all(r["saga_name"] == "rollback" and r["worker"] for r in about)

    exhausted = [r for r in about if "retries exhausted" in r["message"]]
    assert [(r["level"], r["step"]) for r in exhausted] == [("WARNING", "c")]
    assert exhausted[0]["message"].endswith("RuntimeError: planned failure")
    attempt = exhausted[0]["attempt"]
    (tb,) = [r for r in about if r["level"] == "DEBUG" and r["message"].startswith("traceback")]
    assert (tb["step"], tb["attempt"]) == ("c", attempt)
    assert "app_sagas.py" in tb["message"] and "in execute" in tb["message"]
    assert tb["message"].endswith("RuntimeError: planned failure")
    rollback = [r for r in about if r["message"].startswith("saga rolls back")]
    assert [(r["level"], r["status"]) for r in rollback] == [("WARNING", "COMPENSATING")]
    done = [r for r in about if r["message"] == "saga compensated (rolled back)"]
    assert [(r["level"], r["status"]) for r in done] == [("INFO", "COMPENSATED")]
    assert not [r for r in about if r["level"] in ("ERROR", "CRITICAL")]


async def test_no_tracebacks_in_sagads_log_at_info(sagad: SagadFactory, saga_db: SagaDb) -> None:
    (sid,) = await saga_db.start("rollback", 1)
    worker = sagad.start(*saga_db.sagad_args(), env=saga_db.sagad_env(lease=5))
    await worker.wait_ready()
    await saga_db.wait_all({"COMPENSATED"}, 1, timeout=30)
    assert await worker.stop() == 0
    lines = worker.log.splitlines()
    failed = [line for line in lines if "retries exhausted" in line]
    assert len(failed) == 1 and "| WARNING  |" in failed[0], failed
    assert f"saga_id={sid}" in failed[0] and "step=c" in failed[0]
    assert not any("Traceback" in line or "traceback of" in line for line in lines), lines
