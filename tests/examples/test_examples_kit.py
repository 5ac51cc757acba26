"""The examples' sagas under ``saga_core.testing``: in memory, on virtual time, with a worker
crash at every boundary — no database, and every retry delay and timeout fast-forwarded."""

from __future__ import annotations

from typing import Any

from examples import deploy_model, orders
from saga_core import SagaStatus
from saga_core.testing import SagaTestKit, crash_matrix, virtual_time


def order(order_id: str, *, address: str = "221B Baker Street") -> dict[str, Any]:
    return orders.OrderRequest(
        order_id=order_id,
        customer_id="cust-7",
        sku="KB-42",
        quantity=2,
        amount_cents=12_900,
        address=address,
    ).model_dump()


def deployment(model: str, version: str) -> dict[str, Any]:
    return deploy_model.DeployRequest(model=model, version=version, endpoint=model).model_dump()


# --- orders ---------------------------------------------------------------------------------


@virtual_time
async def test_an_order_completes_and_charges_once() -> None:
    services = orders.OrderServices.demo()
    kit = SagaTestKit()
    kit.register(orders.SAGA_NAME, orders.build_order_saga(services))
    result = await kit.run_saga(orders.SAGA_NAME, order("order-1"))
    assert result.status is SagaStatus.COMPLETED
    assert result.executions == {"ReserveStock": 1, "ChargePayment": 1, "ShipOrder": 1}
    assert [c.amount_cents for c in services.payments.captured("order-1")] == [12_900]
    assert services.inventory.stock["KB-42"] == 8
    assert result.outputs["ShipOrder"] == {"shipment_id": "shp-1", "carrier": "ACME Parcel"}


@virtual_time
async def test_a_flaky_gateway_is_retried_and_charges_once() -> None:
    services = orders.OrderServices.demo()
    services.payments.faults["order-2"] = ["unavailable", "lost_response"]
    kit = SagaTestKit(seed=1)
    kit.register(orders.SAGA_NAME, orders.build_order_saga(services))
    result = await kit.run_saga(orders.SAGA_NAME, order("order-2"))
    assert result.status is SagaStatus.COMPLETED
    assert result.outcomes(step_id="ChargePayment") == [
        ("execute", "ChargePayment", "ERROR"),
        ("execute", "ChargePayment", "ERROR"),
        ("execute", "ChargePayment", "SUCCESS"),
    ]
    assert result.executions["ChargePayment"] == 3
    assert len(services.payments.captured("order-2")) == 1, "charged exactly once"


@virtual_time
async def test_an_undeliverable_order_is_refunded_and_restocked() -> None:
    services = orders.OrderServices.demo()
    kit = SagaTestKit()
    kit.register(orders.SAGA_NAME, orders.build_order_saga(services))
    result = await kit.run_saga(orders.SAGA_NAME, order("order-3", address="Atlantis"))
    assert result.status is SagaStatus.COMPENSATED
    assert result.outcomes() == [
        ("execute", "ReserveStock", "SUCCESS"),
        ("execute", "ChargePayment", "SUCCESS"),
        ("execute", "ShipOrder", "ERROR"),
        ("execute", "ShipOrder", "ERROR"),
        ("compensate", "ChargePayment", "SUCCESS"),
        ("compensate", "ReserveStock", "SUCCESS"),
    ]
    assert services.payments.captured("order-3") == []
    assert services.inventory.stock == services.inventory.initial


@virtual_time
async def test_orders_survive_a_crash_at_every_boundary() -> None:
    def build() -> Any:
        return orders.build_order_saga(orders.OrderServices.demo())

    for data, status in (
        (order("order-4"), SagaStatus.COMPLETED),
        (order("order-5", address="Atlantis"), SagaStatus.COMPENSATED),
    ):
        matrix = await crash_matrix(build, data, saga_name=orders.SAGA_NAME)
        matrix.assert_all_match_crash_free()
        assert matrix.crash_free.status is status
        assert all(case.struck and case.result.takeovers == 1 for case in matrix.cases)
    # The rollback's matrix crashes in both compensations too.
    assert {c.crash.boundary.value for c in matrix.cases if c.crash} == {
        "before",
        "after",
        "compensating",
    }


# --- deploy_model (parallel) ------------------------------------------------------------------


@virtual_time
async def test_a_model_is_deployed_after_polling_its_health() -> None:
    services = deploy_model.DeployServices.demo()
    kit = SagaTestKit()
    kit.register(deploy_model.SAGA_NAME, deploy_model.build_deploy_saga(services))
    result = await kit.run_saga(deploy_model.SAGA_NAME, deployment("sentiment-small", "3"))
    assert result.status is SagaStatus.COMPLETED
    assert result.executions["WaitForHealth"] == 3, "two probes while booting, then healthy"
    assert result.outputs["PublishEndpoint"] == {
        "public_url": "https://api.example.com/v1/sentiment-small"
    }
    assert services.gpus.in_use == 1


@virtual_time
async def test_a_wedged_container_is_torn_down_and_its_gpus_released() -> None:
    services = deploy_model.DeployServices.demo()
    kit = SagaTestKit()
    kit.register(deploy_model.SAGA_NAME, deploy_model.build_deploy_saga(services))
    result = await kit.run_saga(deploy_model.SAGA_NAME, deployment("vision-xl", "2"))
    assert result.status is SagaStatus.COMPENSATED
    health = result.outcomes(step_id="WaitForHealth")
    assert health == [("execute", "WaitForHealth", "TIMEOUT")] * deploy_model.HEALTH_POLLS
    assert services.gpus.in_use == 0 and services.cache.staged == {}
    assert [c.state for c in services.platform.containers.values()] == ["torn_down"]


@virtual_time
async def test_deployments_survive_a_crash_at_every_boundary() -> None:
    def build() -> Any:
        return deploy_model.build_deploy_saga(deploy_model.DeployServices.demo())

    for data, status in (
        (deployment("sentiment-small", "3"), SagaStatus.COMPLETED),
        (deployment("vision-xl", "2"), SagaStatus.COMPENSATED),
    ):
        matrix = await crash_matrix(build, data, saga_name=deploy_model.SAGA_NAME)
        matrix.assert_all_match_crash_free()
        assert matrix.crash_free.status is status
        assert matrix.cases and all(case.struck for case in matrix.cases)
