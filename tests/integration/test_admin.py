"""The administration table of SEMANTICS.md: each operator action from each status, allowed or
refused (``SagaStateError``, and the stored row byte for byte unchanged), the history entry
with actor and reason, and how the saga goes on afterwards."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from itkit import (
    STATUS_CASES,
    Harness,
    Worker,
    chain,
    define_standard,
    entries,
    eventually,
    heal_probe,
    reach,
)

from saga_core import FixedRetry, SagaInputError, SagaNotFoundError, SagaStateError

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)

ACTIONS = ("retry_step", "skip_step", "compensate_step", "abort")

ALLOWED: dict[str, dict[str, str]] = {
    # action -> {status case -> status right after the action}
    "retry_step": {"SUSPENDED": "RUNNING", "FAILED": "RUNNING"},
    # FAILED is at c, the last step: skipping it completes the saga.
    "skip_step": {"SUSPENDED": "RUNNING", "FAILED": "COMPLETED"},
    # A fresh RUNNING saga has nothing completed: it ends COMPENSATED at once.
    "compensate_step": {
        "SUSPENDED": "COMPENSATING",
        "FAILED": "COMPENSATING",
        "RUNNING": "COMPENSATED",
    },
    "abort": {
        "RUNNING": "ABORTED",
        "RUNNING_LEASED": "ABORTED",
        "SUSPENDED": "ABORTED",
        "COMPENSATING": "ABORTED",
        "FAILED": "ABORTED",
    },
}

FINAL: dict[tuple[str, str], str] = {
    # Where the saga ends once workers run it after the action (failures healed).
    ("retry_step", "SUSPENDED"): "COMPLETED",
    ("retry_step", "FAILED"): "COMPLETED",
    ("skip_step", "SUSPENDED"): "COMPLETED",
    ("skip_step", "FAILED"): "COMPLETED",
    ("compensate_step", "SUSPENDED"): "COMPENSATED",
    ("compensate_step", "FAILED"): "COMPENSATED",
    ("compensate_step", "RUNNING"): "COMPENSATED",
}

ACTION_NAMES = {
    "retry_step": "RETRY",
    "skip_step": "SKIP",
    "compensate_step": "COMPENSATE",
    "abort": "ABORT",
}


async def act(w: Worker, action: str, sid: uuid.UUID, **kw: Any) -> Any:
    if action == "skip_step":
        kw.setdefault("mock_output", {"n": 42})
    return await getattr(w.admin, action)(sid, **kw)


@pytest.mark.parametrize("case", STATUS_CASES)
@pytest.mark.parametrize("action", ACTIONS)
async def test_admin_table(h: Harness, action: str, case: str) -> None:
    define_standard(h)
    w = await h.worker()
    reached = await reach(h, w, case)
    sid = reached.saga_id
    try:
        before = await h.row(sid)
        expected = ALLOWED[action].get(case)
        if expected is None:
            with pytest.raises(SagaStateError):
                await act(w, action, sid, reason="should be refused", actor="alice")
            assert await h.row(sid) == before, "a refused action changes nothing"
            return

        snap = await act(w, action, sid, reason=f"ticket {action}", actor="alice")
        after = await h.row(sid)
        now = await h.db_now()
        assert snap.status.value == after.status == expected
        assert after.lease_token != before.lease_token, "a new lease token fences the worker out"
        last = (after.step_history or [])[-1]
        assert last["phase"] == "admin"
        assert last["status"] == ACTION_NAMES[action]
        assert (last["actor"], last["reason"]) == ("alice", f"ticket {action}")
        assert last["from_status"] == before.status and last["to_status"] == expected
        assert (after.step_history or [])[: len(before.step_history or [])] == before.step_history

        if expected in ("RUNNING", "COMPENSATING"):
            # Resumed: due now for any worker.
            assert after.deadline_at is not None and after.deadline_at <= now
            assert after.lease_owner is None
        else:
            assert after.deadline_at is None and after.lease_owner is None
            assert after.finished_at is not None or expected == "FAILED"
        if action == "retry_step":
            assert before.retry_counter > 0
            assert after.retry_counter == 0

        # Then workers take it from there.
        await reached.let_go()
        heal_probe(h.probe)
        await w.drain()
        final = await h.row(sid)
        assert final.status == FINAL.get((action, case), expected)
        if case == "RUNNING_LEASED":
            # The held step returned after the abort: its late result was rejected.
            assert h.probe.returned["a"] == 1
            assert "a" not in final.context["step_outputs"]
            assert entries(final.step_history or [], phase="execute") == []
    finally:
        await reached.let_go()


async def test_retry_step_resets_the_counter_and_runs_the_step_again(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    sid = (await reach(h, w, "SUSPENDED")).saga_id
    assert (await h.row(sid)).retry_counter == 1
    # Still failing: after the reset this is the 1st failure of a fresh count (not the 2nd).
    await w.admin.retry_step(sid)
    await w.drain()
    row = await h.row(sid)
    assert (row.status, row.retry_counter) == ("SUSPENDED", 1)
    b_runs = entries(row.step_history or [], phase="execute", step_id="b")
    assert [e["attempt"] for e in b_runs] == [1, 2]
    assert [e["status"] for e in b_runs] == ["ERROR", "ERROR"]

    heal_probe(h.probe)
    snap = await w.admin.retry_step(sid, reason="upstream fixed")
    assert snap.retry_counter == 0 and snap.status.value == "RUNNING"
    await w.drain()
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert h.probe.effects == {"a": 1, "b": 3, "c": 1}


async def test_retry_a_failed_compensation(h: Harness) -> None:
    p = h.probe
    h.define("flow", chain(p, comp_retry={"a": FixedRetry(2, 0)}))
    w = await h.worker()
    p.fail["c"] = -1
    p.fail_comp["a"] = -1
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    row = await h.row(sid)
    assert (row.status, row.phase, row.current_step_index) == ("FAILED", "compensate", 0)
    assert row.retry_counter == 2
    heal_probe(p)
    snap = await w.admin.retry_step(sid)
    assert (snap.status.value, snap.retry_counter) == ("COMPENSATING", 0)
    await w.drain()
    assert (await h.row(sid)).status == "COMPENSATED"
    assert p.undone == ["b", "a"]


async def test_skip_step_validates_mock_output(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    sid = (await reach(h, w, "SUSPENDED")).saga_id
    before = await h.row(sid)
    for bad in (None, {}, {"n": "not a number"}, {"m": 1}, [1, 2], {"n": {1, 2}}, "x"):
        with pytest.raises(SagaInputError):
            await w.admin.skip_step(sid, mock_output=bad)
        assert await h.row(sid) == before, f"mock_output={bad!r} changed the saga"

    snap = await w.admin.skip_step(sid, mock_output={"n": "7"}, reason="done by hand")
    assert snap.status.value == "RUNNING" and snap.current_step_id == "c"
    row = await h.row(sid)
    assert row.context["step_outputs"]["b"] == {"n": 7}, "validated (and coerced) by Out"
    assert (row.step_history or [])[-1]["mock_output"] == {"n": 7}
    heal_probe(h.probe)
    await w.drain()
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    assert h.probe.effects == {"a": 1, "b": 1, "c": 1}, "the skipped step did not run again"


async def test_skip_step_needs_the_definition_to_validate(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    sid = (await reach(h, w, "SUSPENDED")).saga_id
    before = await h.row(sid)
    stranger = await h.worker(definitions={})
    with pytest.raises(SagaInputError, match="register"):
        await stranger.admin.skip_step(sid, mock_output={"n": 1})
    assert await h.row(sid) == before


async def test_skipped_step_is_not_compensated_by_a_later_rollback(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    p = h.probe
    sid = (await reach(h, w, "SUSPENDED")).saga_id
    await w.admin.skip_step(sid, mock_output={"n": 0})
    p.fail["b"] = 0
    p.fail["c"] = -1  # c fails with NoRetry: roll back
    await w.drain()
    row = await h.row(sid)
    assert row.status == "COMPENSATED"
    assert p.undone == ["a"], "b was skipped: nothing of it to undo"
    notes = entries(row.step_history or [], phase="compensate", step_id="b")
    assert [e["status"] for e in notes] == ["NOT_COMPENSATED"]
    assert "skipped" in notes[0]["reason"]
    assert [s["status"] for s in row.steps_state] == ["COMPENSATED", "NOT_COMPENSATED", "PENDING"]


async def test_skip_a_failed_compensation_goes_on_with_the_rollback(h: Harness) -> None:
    p = h.probe
    h.define("flow", chain(p, comp_retry={"b": FixedRetry(2, 0)}))
    w = await h.worker()
    p.fail["c"] = -1
    p.fail_comp["b"] = -1
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    before = await h.row(sid)
    assert (before.status, before.phase, before.current_step_index) == ("FAILED", "compensate", 1)
    with pytest.raises(SagaInputError, match="compensation"):
        await w.admin.skip_step(sid, mock_output={"n": 1})
    assert await h.row(sid) == before

    snap = await w.admin.skip_step(sid, reason="refunded by hand")
    assert (snap.status.value, snap.current_step_id) == ("COMPENSATING", "a")
    await w.drain()
    row = await h.row(sid)
    assert row.status == "COMPENSATED"
    assert p.undone == ["a"]
    assert [s["status"] for s in row.steps_state] == ["COMPENSATED", "NOT_COMPENSATED", "PENDING"]


async def test_compensate_step_with_nothing_completed(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    sid = (await reach(h, w, "RUNNING")).saga_id
    snap = await w.admin.compensate_step(sid, reason="cancel order")
    assert snap.status.value == "COMPENSATED"
    assert snap.deadline_at is None and snap.finished_at is not None
    assert await w.drain() == 0
    assert h.probe.effects == {} and h.probe.undone == []


async def test_compensate_step_refused_under_a_live_lease_allowed_once_it_expired(
    h: Harness,
) -> None:
    define_standard(h)
    p = h.probe
    dead = await h.worker("dead", lease=1.0)
    p.block("b", only_worker="dead")
    sid = await dead.orch.start(saga_name="flow", initial_data={}, aggregation_id="x")
    holder = dead.spawn(dead.orch.run_due())
    await p.wait_started("b")
    dead.crash()  # the worker dies inside step b, a is done
    holder.cancel()

    operator = await h.worker("operator")
    assert (await h.row(sid)).lease_owner == "dead"
    # (Refused while the lease is live: test_compensate_step_refused_while_a_worker_runs_the_step
    # and the admin table; checking it here would race the 1 s lease.)
    await h.wait_lease_expired(sid)
    snap = await operator.admin.compensate_step(sid, reason="worker is gone")
    assert (snap.status.value, snap.current_step_id) == ("COMPENSATING", "a")
    assert snap.lease_owner is None
    await operator.drain()
    row = await h.row(sid)
    assert row.status == "COMPENSATED"
    assert p.undone == ["a"]


async def test_compensate_step_refused_while_a_worker_runs_the_step(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    reached = await reach(h, w, "RUNNING_LEASED")
    before = await h.row(reached.saga_id)
    with pytest.raises(SagaStateError, match="live lease"):
        await w.admin.compensate_step(reached.saga_id)
    assert await h.row(reached.saga_id) == before
    await reached.let_go()
    assert (await h.row(reached.saga_id)).status == "COMPLETED"


async def test_abort_rejects_the_late_result_of_an_inline_step(h: Harness) -> None:
    """Abort while the step runs inline in another task; the step then returns: the saga
    stays ABORTED and the step's output is not recorded."""
    define_standard(h)
    w = await h.worker()
    p = h.probe
    gate = p.block("b")
    starter = w.spawn(
        w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    )
    await p.wait_started("b")
    (saga,) = await w.admin.list_sagas()
    snap = await w.admin.abort(saga.id, reason="customer cancelled", actor="bob")
    assert snap.status.value == "ABORTED"
    aborted = await h.row(saga.id)
    gate.set()
    assert await starter == saga.id, "start(inline=True) returns the id normally"
    assert p.returned["b"] == 1, "the step did return its output"
    row = await h.row(saga.id)
    assert row == aborted, "the late result changed nothing"
    assert "b" not in row.context["step_outputs"]
    assert p.effects["c"] == 0
    assert await w.drain() == 0


async def test_abort_stops_a_held_step_at_its_next_lease_renewal(h: Harness) -> None:
    """With a short lease the worker notices the abort (its renewal is refused) and cancels
    the step instead of waiting for it."""
    define_standard(h)
    w = await h.worker(lease=1.0)
    p = h.probe
    cancelled: list[bool] = []

    async def hang(ctx: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    p.hooks["a"] = hang
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x")
    runner = w.spawn(w.orch.run_due())
    await p.wait_started("a")
    await w.admin.abort(sid)
    assert await eventually(lambda: _done(runner), what="the worker to give the saga up")
    assert cancelled == [True]
    row = await h.row(sid)
    assert row.status == "ABORTED" and entries(row.step_history or [], phase="execute") == []


async def _done(task: Any) -> bool:
    return bool(task.done())


async def test_admin_on_unknown_saga(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    for action in ACTIONS:
        with pytest.raises(SagaNotFoundError):
            await act(w, action, uuid.uuid4())
    with pytest.raises(SagaNotFoundError):
        await w.admin.get_saga(uuid.uuid4())


@pytest.mark.parametrize(
    ("field", "value"),
    [("reason", "bad\x00reason"), ("actor", "ops\x00"), ("reason", "x" * 2001), ("reason", 7)],
)
async def test_unstorable_reason_or_actor_is_refused_and_changes_nothing(
    h: Harness, field: str, value: Any
) -> None:
    define_standard(h)
    w = await h.worker()
    reached = await reach(h, w, "SUSPENDED")
    before = await h.row(reached.saga_id)
    with pytest.raises(SagaInputError, match=field):
        await w.admin.retry_step(reached.saga_id, **{field: value})
    after = await h.row(reached.saga_id)
    assert after.status == before.status == "SUSPENDED"
    assert after.lease_token == before.lease_token
    assert after.step_execution_token == before.step_execution_token
    assert after.step_history == before.step_history


async def test_get_and_list(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    ids = []
    for i in range(3):
        ids.append(
            await w.orch.start(
                saga_name="flow", initial_data={"n": i}, aggregation_id=f"o{i}", inline=True
            )
        )
    full = await w.admin.get_saga(str(ids[0])[:13])
    assert full.id == ids[0] and full.context["initial_data"] == {"n": 0}
    assert [e["step_id"] for e in full.step_history] == ["a", "b", "c"]
    listed = await w.admin.list_sagas(limit=2)
    assert [s.id for s in listed] == [ids[2], ids[1]], "newest first, limit honoured"
    assert [s.id for s in await w.admin.list_sagas(aggregation_id="o0")] == [ids[0]]
    assert await w.admin.list_sagas(status="FAILED") == []
    with pytest.raises(SagaInputError):
        await w.admin.list_sagas(status="BOGUS")
