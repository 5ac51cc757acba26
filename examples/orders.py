"""The order saga: reserve stock, charge the customer, ship the parcel.

If shipping fails for good, the saga refunds the payment and releases the stock (newest
completed step first). The services are in-memory fakes with the failure modes real ones
have: a payment gateway that answers 503 or drops the response after charging, and a
carrier that refuses some addresses.

Every side effect is keyed by ``current_step().idempotency_key``: steps run at least once
(a crash between the side effect and its checkpoint runs the step again), so the services
must recognise a repeat and answer it without doing the work twice.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel, Field

from examples.db import session_maker
from saga_core import (
    BaseStep,
    ExponentialRetry,
    FixedRetry,
    InputContext,
    SagaBuilder,
    SagaDefinition,
    SagaOrchestrator,
    SagaState,
    current_step,
)

__all__ = [
    "SAGA_NAME",
    "AddressRejected",
    "ChargePayment",
    "GatewayTimeout",
    "GatewayUnavailable",
    "Inventory",
    "OrderRequest",
    "OrderServices",
    "OutOfStock",
    "PaymentGateway",
    "ReserveStock",
    "ShipOrder",
    "ShippingService",
    "build_order_saga",
    "make_orchestrator",
]

SAGA_NAME = "orders"

# A fake service call takes a little while, like a network round trip.
LATENCY_S = 0.005


# --- the data -------------------------------------------------------------------------------


class OrderRequest(BaseModel):
    """The saga's initial data: what the shop's checkout hands over."""

    order_id: str
    customer_id: str
    sku: str
    quantity: int = Field(gt=0)
    amount_cents: int = Field(gt=0)
    address: str


class StockRequest(BaseModel):
    order_id: str
    sku: str
    quantity: int


class Reservation(BaseModel):
    reservation_id: str
    sku: str
    quantity: int


class ChargeRequest(BaseModel):
    order_id: str
    customer_id: str
    amount_cents: int


class Charge(BaseModel):
    charge_id: str
    amount_cents: int


class ShipmentRequest(BaseModel):
    order_id: str
    sku: str
    quantity: int
    address: str


class Shipment(BaseModel):
    shipment_id: str
    carrier: str


# --- in-memory fake services ------------------------------------------------------------------


class OutOfStock(Exception):
    """Not enough units of a SKU to reserve."""


class GatewayUnavailable(Exception):
    """The payment gateway answered 503: nothing was charged (transient)."""


class GatewayTimeout(Exception):
    """The connection dropped after the charge was sent: it may have gone through."""


class AddressRejected(Exception):
    """The carrier does not deliver to that address (permanent)."""


class Inventory:
    """Stock levels per SKU, with reservations held until released."""

    def __init__(self, stock: dict[str, int]) -> None:
        self.initial = dict(stock)
        self.stock = dict(stock)
        self.reservations: dict[str, Reservation] = {}
        self.released: list[str] = []
        self._by_key: dict[str, Reservation] = {}
        self._ids = itertools.count(1)

    async def reserve(self, *, idempotency_key: str, sku: str, quantity: int) -> Reservation:
        await asyncio.sleep(LATENCY_S)
        if idempotency_key in self._by_key:  # a repeat: answer with the first reservation
            return self._by_key[idempotency_key]
        have = self.stock.get(sku, 0)
        if have < quantity:
            raise OutOfStock(f"only {have} x {sku} in stock, {quantity} requested")
        self.stock[sku] = have - quantity
        reservation = Reservation(
            reservation_id=f"res-{next(self._ids)}", sku=sku, quantity=quantity
        )
        self.reservations[reservation.reservation_id] = reservation
        self._by_key[idempotency_key] = reservation
        return reservation

    async def release(self, reservation_id: str) -> None:
        await asyncio.sleep(LATENCY_S)
        reservation = self.reservations.pop(reservation_id, None)
        if reservation is None:  # released before: releasing again is a no-op
            return
        self.stock[reservation.sku] += reservation.quantity
        self.released.append(reservation_id)


@dataclass
class ChargeRecord:
    charge_id: str
    order_id: str
    amount_cents: int
    refunded: bool = False


class PaymentGateway:
    """Charges and refunds, deduplicated by idempotency key like Stripe's API.

    ``faults`` injects failures per order id, consumed one per call: ``"unavailable"`` (a
    503 before anything happens) or ``"lost_response"`` (the charge is made, then the
    connection drops, so the caller cannot tell whether it went through).
    """

    def __init__(self, faults: dict[str, Iterable[str]] | None = None) -> None:
        self.faults: dict[str, list[str]] = {k: list(v) for k, v in (faults or {}).items()}
        self.charges: dict[str, ChargeRecord] = {}
        self.calls = 0
        self._by_key: dict[str, str] = {}
        self._ids = itertools.count(1)

    async def charge(
        self, *, idempotency_key: str, order_id: str, customer_id: str, amount_cents: int
    ) -> ChargeRecord:
        self.calls += 1
        await asyncio.sleep(LATENCY_S)
        pending = self.faults.get(order_id) or []
        fault = pending.pop(0) if pending else None
        if fault == "unavailable":
            raise GatewayUnavailable("payment gateway answered 503 Service Unavailable")
        charge_id = self._by_key.get(idempotency_key)
        if charge_id is None:
            charge_id = f"ch-{next(self._ids)}"
            self.charges[charge_id] = ChargeRecord(charge_id, order_id, amount_cents)
            self._by_key[idempotency_key] = charge_id
        if fault == "lost_response":
            raise GatewayTimeout("connection reset while waiting for the gateway's answer")
        return self.charges[charge_id]

    async def refund(self, charge_id: str) -> None:
        await asyncio.sleep(LATENCY_S)
        self.charges[charge_id].refunded = True  # refunding twice is harmless

    def captured(self, order_id: str) -> list[ChargeRecord]:
        """Charges of ``order_id`` that were not refunded."""
        return [c for c in self.charges.values() if c.order_id == order_id and not c.refunded]


class ShippingService:
    """A carrier that refuses some destinations."""

    def __init__(self, undeliverable: Iterable[str] = ()) -> None:
        self.undeliverable = set(undeliverable)
        self.shipments: dict[str, ShipmentRequest] = {}
        self.attempts = 0
        self._by_key: dict[str, str] = {}

    async def create_shipment(self, *, idempotency_key: str, request: ShipmentRequest) -> str:
        self.attempts += 1
        await asyncio.sleep(LATENCY_S)
        if request.address in self.undeliverable:
            raise AddressRejected(f"carrier does not deliver to {request.address!r}")
        if idempotency_key not in self._by_key:
            shipment_id = f"shp-{len(self.shipments) + 1}"
            self.shipments[shipment_id] = request
            self._by_key[idempotency_key] = shipment_id
        return self._by_key[idempotency_key]


@dataclass
class OrderServices:
    """The clients the order steps hold (created once, shared by every saga)."""

    inventory: Inventory
    payments: PaymentGateway
    shipping: ShippingService

    @classmethod
    def demo(cls) -> OrderServices:
        return cls(
            inventory=Inventory({"KB-42": 10, "MOUSE-7": 5, "CABLE-1": 3}),
            payments=PaymentGateway(),
            shipping=ShippingService(undeliverable={"Atlantis"}),
        )


# --- the steps ------------------------------------------------------------------------------


class ReserveStock(BaseStep[StockRequest, Reservation]):
    """Hold the units for the order; compensation puts them back on the shelf."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    async def execute(self, inp: StockRequest) -> Reservation:
        return await self.inventory.reserve(
            idempotency_key=current_step().idempotency_key, sku=inp.sku, quantity=inp.quantity
        )

    async def compensate(self, inp: StockRequest, out: Reservation) -> None:
        """Put the reserved units back on the shelf."""
        await self.inventory.release(out.reservation_id)


class ChargePayment(BaseStep[ChargeRequest, Charge]):
    """Charge the customer; compensation refunds the charge."""

    def __init__(self, gateway: PaymentGateway) -> None:
        self.gateway = gateway

    async def execute(self, inp: ChargeRequest) -> Charge:
        # The key is the same for every retry of this step of this saga: a retry after a
        # lost response finds the first charge instead of charging the customer twice.
        record = await self.gateway.charge(
            idempotency_key=current_step().idempotency_key,
            order_id=inp.order_id,
            customer_id=inp.customer_id,
            amount_cents=inp.amount_cents,
        )
        return Charge(charge_id=record.charge_id, amount_cents=record.amount_cents)

    async def compensate(self, inp: ChargeRequest, out: Charge) -> None:
        """Refund the charge."""
        await self.gateway.refund(out.charge_id)


class ShipOrder(BaseStep[ShipmentRequest, Shipment]):
    """Book the parcel with the carrier.

    No ``compensate``: it is the last step, so once it succeeds the saga is complete and
    nothing later can fail and ask for it to be undone.
    """

    def __init__(self, shipping: ShippingService) -> None:
        self.shipping = shipping

    async def execute(self, inp: ShipmentRequest) -> Shipment:
        shipment_id = await self.shipping.create_shipment(
            idempotency_key=current_step().idempotency_key, request=inp
        )
        return Shipment(shipment_id=shipment_id, carrier="ACME Parcel")


# --- the definition -------------------------------------------------------------------------


def stock_request(ctx: InputContext) -> StockRequest:
    order = OrderRequest.model_validate(ctx.initial_data)
    return StockRequest(order_id=order.order_id, sku=order.sku, quantity=order.quantity)


def charge_request(ctx: InputContext) -> ChargeRequest:
    order = OrderRequest.model_validate(ctx.initial_data)
    return ChargeRequest(
        order_id=order.order_id, customer_id=order.customer_id, amount_cents=order.amount_cents
    )


def shipment_request(ctx: InputContext) -> ShipmentRequest:
    order = OrderRequest.model_validate(ctx.initial_data)
    return ShipmentRequest(
        order_id=order.order_id, sku=order.sku, quantity=order.quantity, address=order.address
    )


def build_order_saga(services: OrderServices) -> SagaDefinition:
    """ReserveStock -> ChargePayment -> ShipOrder, with demo-sized retry delays."""
    saga = SagaBuilder()
    saga.add_step(
        step=ReserveStock(services.inventory),
        input_map=stock_request,
        timeout=timedelta(seconds=2),
    )
    saga.add_step(
        step=ChargePayment(services.payments),
        input_map=charge_request,
        timeout=timedelta(seconds=5),
        # Up to 4 executions; waits of about 50 ms, 100 ms, 200 ms (full jitter). Real
        # services would use seconds to minutes.
        retry_policy=ExponentialRetry(max_attempts=4, base_delay=0.05, max_delay=1.0),
        compensation_retry_policy=FixedRetry(max_attempts=5, delay=0.1),
    )
    saga.add_step(
        step=ShipOrder(services.shipping),
        input_map=shipment_request,
        timeout=timedelta(seconds=5),
        retry_policy=FixedRetry(max_attempts=2, delay=0.05),
    )
    return saga.build()


def make_orchestrator(database_url: str) -> SagaOrchestrator[SagaState]:
    """An orchestrator running only the order saga (``sagad --app
    examples.orders:make_orchestrator``). Its services are fresh in-memory fakes."""
    orchestrator: SagaOrchestrator[SagaState] = SagaOrchestrator(
        session_maker=session_maker(database_url)
    )
    orchestrator.register(SAGA_NAME, build_order_saga(OrderServices.demo()))
    return orchestrator
