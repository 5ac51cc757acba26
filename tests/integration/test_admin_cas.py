"""``SagaAdmin`` for consoles: every action as a compare-and-set on the saga the operator saw
(``expected_status`` / ``expected_updated_at``), ``preview_delivery`` (what ``notify`` would
do, nothing written), ``orphan_sagas`` and ``SagaAdminSnapshot.waiting_event``."""

from __future__ import annotations

import uuid
from datetime import UTC, timedelta
from typing import Any

import pytest
from itkit import Harness, Num, Out, Work, Worker, define_standard, entries, from_context, reach

from saga_core import (
    BaseStep,
    SagaBuilder,
    SagaConflictError,
    SagaInputError,
    SagaNotFoundError,
    SagaStateError,
    current_step,
)

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)

ACTIONS = ("retry_step", "skip_step", "compensate_step", "abort")


async def act(w: Worker, action: str, sid: uuid.UUID, **kw: Any) -> Any:
    if action == "skip_step":
        kw.setdefault("mock_output", {"n": 42})
    return await getattr(w.admin, action)(sid, reason="ops", **kw)


@pytest.mark.parametrize("action", ACTIONS)
async def test_action_applies_when_the_saga_is_as_seen(h: Harness, action: str) -> None:
    define_standard(h)
    w = await h.worker()
    sid = (await reach(h, w, "SUSPENDED")).saga_id
    seen = await w.admin.get_saga(sid)
    after = await act(
        w, action, sid, expected_status=seen.status, expected_updated_at=seen.updated_at
    )
    assert after.status.value != "SUSPENDED"
    assert after.step_history[-1]["from_status"] == "SUSPENDED"
    # A status given as text, and a naive datetime taken as UTC, mean the same.
    sid2 = (await reach(h, w, "SUSPENDED", aggregation_id="order-2")).saga_id
    seen2 = await w.admin.get_saga(sid2)
    naive = seen2.updated_at.astimezone(UTC).replace(tzinfo=None)
    after2 = await act(w, action, sid2, expected_status="suspended", expected_updated_at=naive)
    assert after2.status.value != "SUSPENDED"


@pytest.mark.parametrize("action", ACTIONS)
async def test_a_concurrent_operator_wins_and_nothing_else_changes(h: Harness, action: str) -> None:
    """Operator A looks at a SUSPENDED saga; operator B (another process: its own engine
    and pool) retries it; A's action on what A saw is refused and changes nothing."""
    define_standard(h)
    a = await h.worker()
    b = await h.worker()
    sid = (await reach(h, a, "SUSPENDED")).saga_id
    seen = await a.admin.get_saga(sid)
    await b.admin.retry_step(sid, reason="operator B", actor="bob")
    before = await h.row(sid)
    with pytest.raises(SagaConflictError) as err:
        await act(a, action, sid, expected_status=seen.status, expected_updated_at=seen.updated_at)
    assert isinstance(err.value, SagaStateError)
    assert err.value.status == "RUNNING" == before.status
    assert err.value.updated_at == before.updated_at.astimezone(UTC)
    text = str(err.value)
    assert f"saga {sid} changed since you looked: now RUNNING" in text
    assert "you saw SUSPENDED" in text
    assert await h.row(sid) == before, "nothing written"
    admin = [e["status"] for e in entries(before.step_history or [], phase="admin")]
    assert admin == ["RETRY"]


async def test_status_alone_or_time_alone(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    sid = (await reach(h, w, "SUSPENDED")).saga_id
    seen = await w.admin.get_saga(sid)
    with pytest.raises(SagaConflictError, match="now SUSPENDED"):
        await w.admin.abort(sid, expected_status="FAILED")
    with pytest.raises(SagaConflictError, match="changed since you looked"):
        await w.admin.abort(sid, expected_updated_at=seen.updated_at - timedelta(microseconds=1))
    assert await w.admin.get_saga(sid) == seen
    done = await w.admin.abort(sid, expected_status="SUSPENDED")
    assert done.status.value == "ABORTED"


async def test_conflict_comes_before_the_state_machine(h: Harness) -> None:
    """A saga that finished meanwhile is reported as changed, not as an illegal action."""
    define_standard(h)
    w = await h.worker()
    sid = (await reach(h, w, "COMPLETED")).saga_id
    with pytest.raises(SagaConflictError, match="now COMPLETED"):
        await w.admin.retry_step(sid, expected_status="FAILED")
    with pytest.raises(SagaStateError) as plain:
        await w.admin.retry_step(sid, expected_status="COMPLETED")
    assert not isinstance(plain.value, SagaConflictError)


async def test_bad_expectations_are_input_errors(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    sid = (await reach(h, w, "SUSPENDED")).saga_id
    before = await h.row(sid)
    for kw in (
        {"expected_status": "WAITING"},
        {"expected_status": ["SUSPENDED"]},
        {"expected_updated_at": "2024-01-01T00:00:00Z"},
    ):
        with pytest.raises(SagaInputError):
            await w.admin.abort(sid, **kw)
    assert await h.row(sid) == before


# --------------------------------------------------------------------- preview_delivery


class Approval(BaseStep[Num, Out]):
    async def execute(self, inp: Num) -> Out:
        if inp.n == 1:
            return Out(n=1)
        current_step().wait_for_event(name="approval")


def define_approval(h: Harness) -> None:
    b = SagaBuilder()
    b.add_step(step=Work(h.probe), step_id="a", input_map=from_context)
    b.add_step(
        step=Approval(),
        step_id="approve",
        input_map=lambda ctx: Num(n=1 if (ctx.latest_event or {}).get("ok") else 0),
    )
    h.define("flow", b.build())


async def test_preview_delivery_decides_like_notify_without_writing(h: Harness) -> None:
    define_approval(h)
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="o-1", inline=True)
    snap = await w.admin.get_saga(sid)
    assert snap.status.value == "SUSPENDED"
    assert snap.waiting_event is not None and snap.waiting_event["event_name"] == "approval"
    before = await h.row(sid)

    ok = await w.admin.preview_delivery(aggregation_id="o-1", event_name="approval")
    assert (ok.accepted, ok.saga_id, ok.status.value, ok.reason) == (True, sid, "SUSPENDED", None)
    wrong = await w.admin.preview_delivery(aggregation_id="o-1", event_name="shipping")
    assert not wrong.accepted and wrong.reason == "waiting for 'approval', not 'shipping'"
    tok = await w.admin.preview_delivery(saga_id=sid, token=snap.step_execution_token)
    assert tok.accepted
    stale = await w.admin.preview_delivery(saga_id=str(sid)[:8], token=str(uuid.uuid4()))
    assert (stale.accepted, stale.reason) == (False, "stale token")
    assert await h.row(sid) == before, "a preview writes nothing, not even a refusal"

    # notify agrees with the preview, then the saga no longer waits.
    assert await w.orch.notify(aggregation_id="o-1", event_name="approval", event={"ok": True})
    await w.drain()
    done = await w.admin.get_saga(sid)
    assert done.status.value == "COMPLETED" and done.waiting_event is None
    late = await w.admin.preview_delivery(aggregation_id="o-1", event_name="approval")
    assert late.reason == "no active saga for aggregation_id 'o-1' (newest is COMPLETED)"


async def test_preview_delivery_bad_input(h: Harness) -> None:
    define_approval(h)
    w = await h.worker()
    with pytest.raises(SagaNotFoundError):
        await w.admin.preview_delivery(aggregation_id="nobody", event_name="approval")
    for kw in (
        {},
        {"saga_id": uuid.uuid4()},
        {"aggregation_id": "o-1"},
        {"saga_id": uuid.uuid4(), "token": uuid.uuid4(), "event_name": "x"},
        {"aggregation_id": "o-1", "event_name": ""},
        {"saga_id": uuid.uuid4(), "token": "not-a-uuid"},
    ):
        with pytest.raises(SagaInputError):
            await w.admin.preview_delivery(**kw)


# --------------------------------------------------------------------- orphan_sagas


async def test_orphan_sagas_lists_a_group_oldest_first(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    ids = [(await reach(h, w, "SUSPENDED", aggregation_id=f"order-{i}")).saga_id for i in range(3)]
    (group,) = await w.admin.orphans()  # no worker registered: every active saga
    assert (group.saga_name, group.count) == ("flow", 3)
    assert [s.id for s in await w.admin.orphan_sagas(group)] == ids
    assert [s.id for s in await w.admin.orphan_sagas(group, limit=2)] == ids[:2]
