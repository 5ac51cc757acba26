"""A small saga application for the sagactl tests, usable as ``--app cli_app:build``
(a factory taking the database URL) with ``tests/cli`` on the import path.

Saga names and how they end, driven by ``initial_data`` flags:

- ``order``: reserve → charge → ship; charge retries after one hour (``fail``: SUSPENDED).
- ``order_fast``: the same steps, no retry: a failed charge rolls back (COMPENSATED); with
  ``comp_fail`` the reserve compensation fails and waits an hour (COMPENSATING).
- ``order_manual``: no rollback on failure: a failed charge ends FAILED.
- ``approval``: one step that waits for an event named ``approval`` (SUSPENDED) until one
  with ``"approved": true`` arrives.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from saga_core import (
    BaseStep,
    FixedRetry,
    InputContext,
    NoRetry,
    SagaBuilder,
    SagaDefinition,
    SagaOrchestrator,
    SagaStateMixin,
    current_step,
)


class OrderIn(BaseModel):
    order_id: str
    fail: bool = False
    comp_fail: bool = False


class ReserveOut(BaseModel):
    reservation: str


class ChargeOut(BaseModel):
    charge_id: str
    amount: int


class ShipOut(BaseModel):
    tracking: str


class Reserve(BaseStep[OrderIn, ReserveOut]):
    async def execute(self, inp: OrderIn) -> ReserveOut:
        return ReserveOut(reservation=f"r-{inp.order_id}")

    async def compensate(self, inp: OrderIn, out: ReserveOut) -> None:
        if inp.comp_fail:
            raise RuntimeError("warehouse API down")


class Charge(BaseStep[OrderIn, ChargeOut]):
    async def execute(self, inp: OrderIn) -> ChargeOut:
        if inp.fail:
            raise RuntimeError("card declined by issuer")
        return ChargeOut(charge_id=f"c-{inp.order_id}", amount=100)

    async def compensate(self, inp: OrderIn, out: ChargeOut) -> None:
        return None


class Ship(BaseStep[OrderIn, ShipOut]):
    async def execute(self, inp: OrderIn) -> ShipOut:
        return ShipOut(tracking=f"t-{inp.order_id}")


class ApproveIn(BaseModel):
    approved: bool = False


class ApproveOut(BaseModel):
    approved: bool


class Approve(BaseStep[ApproveIn, ApproveOut]):
    async def execute(self, inp: ApproveIn) -> ApproveOut:
        if not inp.approved:
            current_step().wait_for_event(name="approval")
        return ApproveOut(approved=True)


def approve_input(ctx: InputContext) -> dict[str, Any]:
    return {"approved": bool((ctx.latest_event or {}).get("approved"))}


def order_input(ctx: InputContext) -> dict[str, Any]:
    return dict(ctx.initial_data)


def definition(*, charge_retry: Any, rollback: bool) -> SagaDefinition:
    b = SagaBuilder(compensate_on_failure=rollback)
    b.add_step(
        step=Reserve(),
        input_map=order_input,
        step_id="reserve",
        compensation_retry_policy=FixedRetry(2, timedelta(hours=1)),
    )
    b.add_step(step=Charge(), input_map=order_input, step_id="charge", retry_policy=charge_retry)
    b.add_step(step=Ship(), input_map=order_input, step_id="ship")
    return b.build()


def from_reservation(out: ReserveOut) -> OrderIn:
    order_id = out.reservation.removeprefix("r-")
    return OrderIn(order_id=order_id, fail=order_id.startswith("fail"))


def shipping_input(charge: ChargeOut, pack: ShipOut) -> OrderIn:
    return OrderIn(order_id=charge.charge_id.removeprefix("c-"))


def parallel_definition() -> SagaDefinition:
    """reserve -> (charge, pack) -> ship: charge and pack run side by side; an order id
    starting with ``fail`` makes charge fail and retry in an hour."""
    b = SagaBuilder(parallel=True)
    reserve = b.add_step(step=Reserve(), input_map=order_input, step_id="reserve")
    charge = b.add_step(
        step=Charge(),
        input_map=from_reservation,
        step_id="charge",
        depends_on=reserve,
        retry_policy=FixedRetry(3, timedelta(hours=1)),
    )
    pack = b.add_step(step=Ship(), input_map=from_reservation, step_id="pack", depends_on=reserve)
    b.add_step(step=Ship(), input_map=shipping_input, step_id="ship", depends_on=[charge, pack])
    return b.build()


class _OrdersBase(DeclarativeBase):
    pass


class OrderSaga(SagaStateMixin, _OrdersBase):
    """A second saga table, for ``--table``."""

    __tablename__ = "cli_orders"


def build(
    database_url: str, model: Any = None, worker_id: str | None = None
) -> SagaOrchestrator[Any]:
    engine = create_async_engine(database_url)
    kwargs: dict[str, Any] = {} if model is None else {"model_class": model}
    orch: SagaOrchestrator[Any] = SagaOrchestrator(
        session_maker=async_sessionmaker(engine),
        execution_lease=timedelta(hours=1),
        worker_id=worker_id,
        **kwargs,
    )
    orch.register(
        "order", definition(charge_retry=FixedRetry(3, timedelta(hours=1)), rollback=True)
    )
    orch.register("order_fast", definition(charge_retry=NoRetry(), rollback=True))
    orch.register("order_manual", definition(charge_retry=NoRetry(), rollback=False))
    orch.register("order_parallel", parallel_definition())
    approval = SagaBuilder()
    approval.add_step(step=Approve(), input_map=approve_input, step_id="approve")
    orch.register("approval", approval.build())
    return orch


def build_orders(database_url: str) -> SagaOrchestrator[Any]:
    """The same sagas on the ``cli_orders`` table."""
    return build(database_url, model=OrderSaga)
