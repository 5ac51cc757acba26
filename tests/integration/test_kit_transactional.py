"""Transactional steps in ``saga_core.testing``: the step's session (here an in-memory SQLite
database for the application's tables) commits together with its checkpoint on the in-memory
store, so a crash before the checkpoint rolls the step's writes back with it."""

from __future__ import annotations

import pytest
from kit_sagas import Order, Services, invoice_database, invoice_saga, invoices

from saga_core import SagaDefinitionError, SagaStatus
from saga_core.testing import Boundary, CrashPoint, SagaTestKit, crash_matrix, virtual_time

ORDER = Order(order_id="o-1").model_dump()


def test_a_transactional_step_needs_a_database_for_its_session() -> None:
    kit = SagaTestKit()
    with pytest.raises(SagaDefinitionError, match="'invoice' is transactional"):
        kit.register("invoice", invoice_saga(Services()))


@virtual_time
async def test_its_writes_commit_with_its_checkpoint() -> None:
    db = await invoice_database()
    kit = SagaTestKit(session_maker=db)
    kit.register("invoice", invoice_saga(Services()))
    result = await kit.run_saga("invoice", ORDER)
    assert result.status is SagaStatus.COMPLETED
    assert result.outputs["invoice"] == {"invoices": 1}
    assert await invoices(db) == ["o-1"]


@virtual_time
async def test_a_crash_before_its_checkpoint_rolls_its_writes_back() -> None:
    db = await invoice_database()
    kit = SagaTestKit(session_maker=db)
    kit.register("invoice", invoice_saga(Services()))
    kit.crash_at(CrashPoint(Boundary.AFTER, "invoice"))
    result = await kit.run_saga("invoice", ORDER)
    assert result.status is SagaStatus.COMPLETED and result.takeovers == 1
    assert result.executions["invoice"] == 2, "it ran again after the crash"
    assert await invoices(db) == ["o-1"], "but its first write vanished with the crash"
    assert result.outputs["invoice"] == {"invoices": 1}


@virtual_time
async def test_the_crash_matrix_of_a_transactional_saga() -> None:
    matrix = await crash_matrix(
        lambda: invoice_saga(Services()), ORDER, session_maker=invoice_database
    )
    matrix.assert_all_match_crash_free()
    assert ("after", "invoice") in [
        (c.crash.boundary.value, c.crash.step_id) for c in matrix.cases if c.crash
    ]
