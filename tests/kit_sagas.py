"""Sagas for the tests of ``saga_core.testing``: an order (reserve, charge, ship) against fake
services whose idempotency can be switched off, an approval that waits for an event, and a
transactional step writing to the application's own table."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Integer, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool

from saga_core import (
    BaseStep,
    FixedRetry,
    InputContext,
    NoRetry,
    RetryPolicy,
    SagaBuilder,
    SagaDefinition,
    current_step,
)


class Order(BaseModel):
    order_id: str
    amount: int = 100
    address: str = "Main St 1"


class Ref(BaseModel):
    ref: str


@dataclass
class Services:
    """Fake downstream services. ``idempotent=False`` makes the bank forget idempotency keys
    (a second call charges again)."""

    idempotent: bool = True
    charge_failures: int = 0
    """The next charges that fail (503) before charging."""
    undeliverable: set[str] = field(default_factory=lambda: {"Atlantis"})
    stock_held: dict[str, str] = field(default_factory=dict)
    charges: dict[str, int] = field(default_factory=dict)
    refunds: list[str] = field(default_factory=list)
    shipments: list[str] = field(default_factory=list)
    _keys: dict[str, str] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    async def charge(self, key: str, amount: int) -> str:
        await asyncio.sleep(0.2)  # a network round trip (virtual)
        if self.charge_failures:
            self.charge_failures -= 1
            raise ConnectionError("bank answered 503")
        if self.idempotent and key in self._keys:
            return self._keys[key]
        charge_id = f"ch-{next(self._ids)}"
        self.charges[charge_id] = amount
        self._keys[key] = charge_id
        return charge_id

    async def refund(self, charge_id: str) -> None:
        if charge_id not in self.refunds:
            self.refunds.append(charge_id)


class Reserve(BaseStep[Order, Ref]):
    def __init__(self, services: Services) -> None:
        self.services = services

    async def execute(self, inp: Order) -> Ref:
        self.services.stock_held[inp.order_id] = "held"
        return Ref(ref=f"res-{inp.order_id}")

    async def compensate(self, inp: Order, out: Ref) -> None:
        self.services.stock_held.pop(inp.order_id, None)


class Charge(BaseStep[Order, Ref]):
    def __init__(self, services: Services) -> None:
        self.services = services

    async def execute(self, inp: Order) -> Ref:
        charge_id = await self.services.charge(current_step().idempotency_key, inp.amount)
        return Ref(ref=charge_id)

    async def compensate(self, inp: Order, out: Ref) -> None:
        await self.services.refund(out.ref)


class Ship(BaseStep[Order, Ref]):
    def __init__(self, services: Services) -> None:
        self.services = services

    async def execute(self, inp: Order) -> Ref:
        if inp.address in self.services.undeliverable:
            raise ValueError(f"no delivery to {inp.address}")
        self.services.shipments.append(inp.order_id)
        return Ref(ref=f"parcel-{inp.order_id}")


def order(ctx: InputContext) -> Order:
    return Order.model_validate(ctx.initial_data)


def order_saga(
    services: Services,
    *,
    charge_retry: RetryPolicy | None = None,
    ship_timeout: float | None = None,
    compensate_on_failure: bool = True,
) -> SagaDefinition:
    b = SagaBuilder(compensate_on_failure=compensate_on_failure)
    b.add_step(step=Reserve(services), input_map=order, step_id="reserve")
    b.add_step(
        step=Charge(services),
        input_map=order,
        step_id="charge",
        retry_policy=charge_retry or FixedRetry(3, timedelta(hours=1)),
    )
    b.add_step(step=Ship(services), input_map=order, step_id="ship", timeout=ship_timeout)
    return b.build()


# --- waiting for an event -----------------------------------------------------------------


class Approval(BaseModel):
    order_id: str
    decision: str | None = None


class Approved(BaseModel):
    by: str


class AwaitApproval(BaseStep[Approval, Approved]):
    def __init__(self, asked: list[str], *, timeout: timedelta | None = timedelta(days=2)) -> None:
        self.asked = asked
        self.timeout = timeout

    async def execute(self, inp: Approval) -> Approved:
        if inp.decision is None:
            self.asked.append(str(current_step().token))
            current_step().wait_for_event(self.timeout, name="approval")
        if inp.decision != "yes":
            raise PermissionError(f"approval refused: {inp.decision}")
        return Approved(by="manager")


def approval_input(ctx: InputContext) -> Approval:
    event = ctx.latest_event or {}
    return Approval(order_id=ctx.initial_data["order_id"], decision=event.get("decision"))


def approval_saga(services: Services, asked: list[str]) -> SagaDefinition:
    b = SagaBuilder()
    b.add_step(step=Reserve(services), input_map=order, step_id="reserve")
    b.add_step(
        step=AwaitApproval(asked),
        input_map=approval_input,
        step_id="approve",
        retry_policy=NoRetry(),
    )
    b.add_step(step=Ship(services), input_map=order, step_id="ship")
    return b.build()


# --- a transactional step ---------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    __tablename__ = "invoices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[str] = mapped_column(String(50))


class Count(BaseModel):
    invoices: int


class WriteInvoice(BaseStep[Order, Count]):
    """Inserts an invoice row (not idempotent by itself: every run inserts one); its only
    effect is that write, so it is transactional: it commits with its checkpoint."""

    transactional = True

    async def execute(self, inp: Order) -> Count:
        session = current_step().session
        session.add(Invoice(order_id=inp.order_id))
        await session.flush()
        count = await session.scalar(select(func.count()).select_from(Invoice))
        return Count(invoices=int(count or 0))


def invoice_saga(services: Services) -> SagaDefinition:
    b = SagaBuilder()
    b.add_step(step=Reserve(services), input_map=order, step_id="reserve")
    b.add_step(step=WriteInvoice(), input_map=order, step_id="invoice")
    return b.build()


async def invoice_database() -> async_sessionmaker[AsyncSession]:
    """A fresh in-memory SQLite database holding the ``invoices`` table."""
    engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    return async_sessionmaker(engine, expire_on_commit=False)


async def invoices(session_maker: async_sessionmaker[AsyncSession]) -> list[str]:
    async with session_maker() as session:
        return list((await session.scalars(select(Invoice.order_id))).all())
