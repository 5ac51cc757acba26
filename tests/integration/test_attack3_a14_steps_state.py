"""Attack 14 on the incremental step-state serialisation (6296a45): a checkpoint re-serialises
only the step states that changed since the run's last checkpoint, keeping the other entries
as they were. Operator actions change the row outside the run (abort while a step runs,
retry and skip of a suspended step, compensate), the run resumes or is fenced out; the stored
``steps_state`` must agree with the history (attempt counts) and with a full
re-serialisation of the stored state, on both backends. Held."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from itkit import Harness, define_standard, entries, reach
from regresskit import describe
from test_parallel import (
    test_a_branch_waiting_for_an_event_holds_only_itself as waiting_branch,
)
from test_parallel import (
    test_a_failed_branch_cancels_its_siblings_and_rolls_back_newest_first as failed_branch,
)
from test_parallel import (
    test_in_place_retry_of_one_branch_leaves_the_others_alone as retry_in_place,
)
from test_parallel import (
    test_skip_of_a_failed_branch_continues_with_the_mock_output as skipped_branch,
)

from saga_core import history as hist
from saga_core.rows import machine_state, steps_json
from saga_core.store.base import SagaFilter


async def consistent(h: Harness, sid: uuid.UUID) -> dict[str, dict[str, Any]]:
    row = await h.row(sid)
    stored = row.steps_state
    assert steps_json(stored, machine_state(row)) == stored, describe(row)
    for entry in stored:
        step = str(entry["step_id"])
        # A branch cancelled mid-attempt, or a step that started to wait, has not used up an
        # attempt (it runs again).
        tried = [
            e
            for e in entries(row.step_history, phase=hist.EXECUTE, step_id=step)
            if e["status"] not in ("CANCELLED", "WAITING")
        ]
        undone = [
            e
            for e in entries(row.step_history, phase=hist.COMPENSATE, step_id=step)
            if e["status"] != "CANCELLED"
        ]
        assert entry.get("attempts", 0) == len(tried), (step, entry, describe(row))
        assert entry.get("compensation_attempts", 0) == len(undone), (step, entry)
    return {str(e["step_id"]): e for e in stored}


async def test_attack3_a14_abort_while_a_step_runs_keeps_steps_state_true(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    gate = h.probe.block("b")
    sid = await w.orch.start(
        saga_name="flow", initial_data={"n": 1}, aggregation_id="o", inline=False
    )
    holder = w.spawn(w.orch.run_due())
    await h.probe.wait_started("b")
    await consistent(h, sid)
    await w.admin.abort(sid, reason="operator races the run")
    gate.set()
    await holder
    await w.drain()
    steps = await consistent(h, sid)
    row = await h.row(sid)
    assert row.status == "ABORTED", describe(row)
    assert steps["a"]["status"] == "SUCCEEDED"
    assert steps["b"]["status"] != "SUCCEEDED", describe(row)


async def test_attack3_a14_retry_skip_compensate_keep_steps_state_true(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    r = await reach(h, w, "SUSPENDED")  # b fails, held for an hour
    await consistent(h, r.saga_id)
    await w.admin.retry_step(r.saga_id, reason="again")
    await w.drain()
    await consistent(h, r.saga_id)
    h.probe.fail.clear()
    await w.admin.skip_step(r.saga_id, mock_output={"n": 5}, reason="skip it")
    await w.drain()
    steps = await consistent(h, r.saga_id)
    row = await h.row(r.saga_id)
    assert row.status == "COMPLETED", describe(row)
    assert steps["a"]["status"] == steps["c"]["status"] == "SUCCEEDED", describe(row)
    assert steps["b"]["status"] != "PENDING", describe(row)

    r2 = await reach(h, w, "FAILED", aggregation_id="o2")
    await consistent(h, r2.saga_id)
    h.probe.fail.clear()
    await w.admin.compensate_step(r2.saga_id, reason="roll back")
    await w.drain()
    await consistent(h, r2.saga_id)


async def all_consistent(h: Harness) -> int:
    rows = await h.store.saga_list(SagaFilter(), limit=1000)
    for row in rows:
        await consistent(h, row.id)
    return len(rows)


PARALLEL_CASES = {
    "failed_branch": failed_branch,
    "retry_in_place": retry_in_place,
    "waiting_branch": waiting_branch,
    "skipped_branch": skipped_branch,
}


@pytest.mark.parametrize("case", sorted(PARALLEL_CASES))
async def test_attack3_a14_parallel_branches_and_event_waits_keep_steps_state_true(
    h: Harness, case: str
) -> None:
    """Parallel sagas whose branches fail, retry in place, wait for an event and are skipped,
    run as test_parallel runs them; every stored steps_state then agrees with its history."""
    await PARALLEL_CASES[case](h)
    assert await all_consistent(h) >= 1
