"""The crash matrix: every boundary of a saga gets its simulated worker crash and takeover;
idempotent steps end as the crash-free run does, a non-idempotent one is caught."""

from __future__ import annotations

import uuid

import pytest
from kit_sagas import Order, Services, approval_saga, order_saga

from saga_core import SagaStatus
from saga_core.testing import Boundary, CrashPoint, SagaTestKit, crash_matrix, virtual_time

ORDER = Order(order_id="o-1").model_dump()
ATLANTIS = Order(order_id="o-2", address="Atlantis").model_dump()


def labels(points: list[CrashPoint]) -> list[tuple[str, str]]:
    return [(p.boundary.value, p.step_id) for p in points]


@virtual_time
async def test_idempotent_steps_end_as_the_crash_free_run() -> None:
    matrix = await crash_matrix(lambda: order_saga(Services()), ORDER, saga_name="order")
    matrix.assert_all_match_crash_free()
    assert matrix.crash_free.status is SagaStatus.COMPLETED
    assert labels([c.crash for c in matrix.cases if c.crash]) == [
        ("before", "reserve"),
        ("after", "reserve"),
        ("before", "charge"),
        ("after", "charge"),
        ("before", "ship"),
        ("after", "ship"),
    ]
    for case in matrix.cases:
        assert case.struck and case.result.takeovers == 1
        assert case.status is SagaStatus.COMPLETED
    after_charge = matrix.cases[3]
    assert after_charge.result.executions == {"reserve": 1, "charge": 2, "ship": 1}
    assert after_charge.outputs["charge"] == {"ref": "ch-1"}, "the bank recognised the key"


@virtual_time
async def test_a_rollback_is_crashed_in_its_compensations_too() -> None:
    matrix = await crash_matrix(lambda: order_saga(Services()), ATLANTIS, saga_name="order")
    matrix.assert_all_match_crash_free()
    assert matrix.crash_free.status is SagaStatus.COMPENSATED
    compensating = [
        c for c in matrix.cases if c.crash and c.crash.boundary is Boundary.COMPENSATING
    ]
    assert labels([c.crash for c in compensating if c.crash]) == [
        ("compensating", "charge"),
        ("compensating", "reserve"),
    ]
    assert compensating[0].result.compensations == {"charge": 2, "reserve": 1}


@virtual_time
async def test_a_non_idempotent_step_is_caught() -> None:
    matrix = await crash_matrix(
        lambda: order_saga(Services(idempotent=False)), ORDER, saga_name="order"
    )
    assert [c.label for c in matrix.failures] == [
        "crash after charge's effect, before its checkpoint"
    ]
    (failed,) = matrix.failures
    assert failed.differences == ("output of charge: {'ref': 'ch-2'}, crash-free {'ref': 'ch-1'}",)
    assert failed.result.executions["charge"] == 2
    with pytest.raises(AssertionError) as caught:
        matrix.assert_all_match_crash_free()
    text = str(caught.value)
    assert "crash after charge's effect, before its checkpoint" in text
    assert "execute reserve=1 charge=2(+1) ship=1" in text
    assert "differs: output of charge" in text


@virtual_time
async def test_a_saga_that_waits_for_an_event() -> None:
    asked: list[str] = []

    async def approve(kit: SagaTestKit, saga_id: uuid.UUID) -> None:
        await kit.run_until_settled()
        assert (await kit.result(saga_id)).status is SagaStatus.SUSPENDED
        token = await kit.token(saga_id)
        assert await kit.notify(saga_id=saga_id, token=token, event={"decision": "yes"})
        await kit.run_until_settled()

    matrix = await crash_matrix(
        lambda: approval_saga(Services(), asked), ORDER, saga_name="approval", scenario=approve
    )
    matrix.assert_all_match_crash_free()
    assert matrix.crash_free.status is SagaStatus.COMPLETED
    assert ("waiting", "approve") in labels([c.crash for c in matrix.cases if c.crash])
    # The step runs twice crash-free (asks, then sees the answer): "after" is its second run.
    assert ("after", "approve") in labels([c.crash for c in matrix.cases if c.crash])


@virtual_time
async def test_chosen_points_and_a_point_never_reached() -> None:
    never = CrashPoint(Boundary.COMPENSATING, "reserve")
    matrix = await crash_matrix(
        lambda: order_saga(Services()),
        ORDER,
        points=[CrashPoint(Boundary.AFTER, "charge"), never],
    )
    assert [c.crash for c in matrix.cases] == [CrashPoint(Boundary.AFTER, "charge"), never]
    assert matrix.cases[0].struck and not matrix.cases[1].struck
    assert "never reached" in matrix.report()
    matrix.assert_all_match_crash_free()
