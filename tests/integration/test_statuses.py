"""Every row of the status table in SEMANTICS.md, reached with real sagas: what the stored row
looks like there, and that no row is ever stranded (every RUNNING or COMPENSATING row has a due
time or a lease expiry; a SUSPENDED one a due time)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from itkit import LONG_WAIT, STATUS_CASES, Harness, define_standard, entries, reach

from saga_core import SagaStatus

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


@pytest.mark.parametrize("case", STATUS_CASES)
async def test_reach_status(h: Harness, case: str) -> None:
    define_standard(h)
    w = await h.worker()
    reached = await reach(h, w, case)
    try:
        row = await h.row(reached.saga_id)
        snap = await w.orch.get_snapshot(reached.saga_id)
        now = await h.db_now()
        history = row.step_history or []
        expected = "RUNNING" if case == "RUNNING_LEASED" else case
        assert row.status == snap.status.value == expected

        # Nothing stranded, nothing dangling.
        if snap.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.SUSPENDED):
            assert snap.deadline_at is not None, f"a {case} row must carry a due time or lease"
            assert row.finished_at is None
        else:
            assert snap.deadline_at is None and snap.lease_owner is None
        if snap.status.is_terminal:
            assert row.finished_at is not None
        else:
            assert row.finished_at is None

        if case == "RUNNING":
            assert snap.deadline_at is not None and snap.deadline_at <= now, "due now"
            assert snap.lease_owner is None and history == []
        elif case == "RUNNING_LEASED":
            assert snap.lease_owner == w.id
            assert snap.deadline_at is not None and snap.deadline_at > now, "a live lease"
            assert snap.current_step_id == "a"
        elif case == "SUSPENDED":
            assert snap.lease_owner is None and snap.current_step_id == "b"
            assert snap.retry_counter == 1
            assert snap.deadline_at is not None
            assert snap.deadline_at > now + timedelta(seconds=LONG_WAIT - 60)
            assert snap.last_error is not None and "injected failure of b" in snap.last_error
            assert entries(history, phase="execute", step_id="b")[-1]["status"] == "ERROR"
        elif case == "COMPENSATING":
            assert snap.phase == "compensate" and snap.current_step_id == "b"
            assert snap.lease_owner is None and snap.retry_counter == 1
            assert snap.deadline_at is not None
            assert snap.deadline_at > now + timedelta(seconds=LONG_WAIT - 60)
            assert snap.last_error is not None and "compensation of b" in snap.last_error
        elif case == "COMPLETED":
            assert set(row.context["step_outputs"]) == {"a", "b", "c"}
            assert [e["status"] for e in history] == ["SUCCESS"] * 3
            assert snap.last_error is None
        elif case == "COMPENSATED":
            assert h.probe.undone == ["b", "a"]
            assert snap.last_error is not None and "injected failure of c" in snap.last_error
        elif case == "FAILED":
            assert h.probe.undone == [], "rollback is off for flow_noroll"
            assert snap.current_step_id == "c"
            assert snap.last_error is not None and "injected failure of c" in snap.last_error
        elif case == "ABORTED":
            assert entries(history, phase="admin")[-1]["status"] == "ABORT"
    finally:
        await reached.let_go()
