"""The demo scenarios: start a handful of sagas, run them to the end, and check that the
outcome is the one a saga promises (what succeeded is done exactly once; what failed is
undone).

Used by ``python -m examples`` and by ``tests/examples``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from examples import deploy_model, orders
from examples.app import ExampleApp
from saga_core import SagaAdmin, SagaAdminSnapshot, SagaStatus

__all__ = [
    "Check",
    "Scenario",
    "ScenarioResult",
    "StepLine",
    "check_outcome",
    "demo_scenarios",
    "run_scenarios",
    "summarize_history",
]

SETTLED = frozenset({*(s for s in SagaStatus if s.is_terminal), SagaStatus.FAILED})


@dataclass(frozen=True)
class Scenario:
    key: str
    """Business key, e.g. the order id (made unique per run for the aggregation id)."""
    title: str
    saga_name: str
    initial_data: dict[str, Any]
    expected: SagaStatus
    inline: bool = False
    """Drive it in the starting task (``start(inline=True)``) instead of by the worker loop."""


@dataclass
class ScenarioResult:
    scenario: Scenario
    saga_id: uuid.UUID
    aggregation_id: str
    saga: SagaAdminSnapshot

    @property
    def status(self) -> SagaStatus:
        return self.saga.status

    @property
    def ok(self) -> bool:
        return self.saga.status is self.scenario.expected


@dataclass(frozen=True)
class Check:
    """One invariant the fake services must satisfy after the run."""

    name: str
    ok: bool
    detail: str


@dataclass
class StepLine:
    """Consecutive history entries of one step in one phase: ``ChargePayment: ERROR, ERROR,
    SUCCESS``."""

    phase: str
    step_id: str
    outcomes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _order(
    order_id: str, sku: str, quantity: int, amount_cents: int, address: str
) -> dict[str, Any]:
    return orders.OrderRequest(
        order_id=order_id,
        customer_id="cust-7",
        sku=sku,
        quantity=quantity,
        amount_cents=amount_cents,
        address=address,
    ).model_dump()


def demo_scenarios(app: ExampleApp[Any]) -> list[Scenario]:
    """The demo's sagas; injects the faults they need into ``app``'s fake services."""
    # order-1002: the gateway answers 503, then charges but the response is lost; the third
    # attempt finds the charge by its idempotency key.
    app.orders.payments.faults["order-1002"] = ["unavailable", "lost_response"]
    return [
        Scenario(
            "order-1001",
            "happy path (started inline)",
            orders.SAGA_NAME,
            _order("order-1001", "KB-42", 2, 12_900, "221B Baker Street"),
            SagaStatus.COMPLETED,
            inline=True,
        ),
        Scenario(
            "order-1002",
            "flaky payment gateway: retried, charged once",
            orders.SAGA_NAME,
            _order("order-1002", "MOUSE-7", 1, 4_900, "742 Evergreen Terrace"),
            SagaStatus.COMPLETED,
        ),
        Scenario(
            "order-1003",
            "carrier refuses the address: refund, then release stock",
            orders.SAGA_NAME,
            _order("order-1003", "KB-42", 3, 19_350, "Atlantis"),
            SagaStatus.COMPENSATED,
        ),
        Scenario(
            "order-1004",
            "out of stock: nothing done, nothing to undo",
            orders.SAGA_NAME,
            _order("order-1004", "CABLE-1", 50, 2_500, "10 Downing Street"),
            SagaStatus.COMPENSATED,
        ),
        Scenario(
            "sentiment-small:3",
            "deployment becomes healthy after polling",
            deploy_model.SAGA_NAME,
            deploy_model.DeployRequest(
                model="sentiment-small", version="3", endpoint="sentiment"
            ).model_dump(),
            SagaStatus.COMPLETED,
        ),
        Scenario(
            "vision-xl:2",
            "health probe hangs: tear down, release GPUs",
            deploy_model.SAGA_NAME,
            deploy_model.DeployRequest(
                model="vision-xl", version="2", endpoint="vision"
            ).model_dump(),
            SagaStatus.COMPENSATED,
        ),
    ]


async def run_scenarios(
    app: ExampleApp[Any],
    scenarios: list[Scenario],
    *,
    deadline_s: float = 20.0,
    run_tag: str | None = None,
) -> list[ScenarioResult]:
    """Start every scenario's saga, then work like ``sagad`` (``run_due`` in a loop) until
    all are settled (finished or FAILED) or ``deadline_s`` passes.

    ``run_tag`` suffixes the aggregation ids (default: random) so a rerun against the same
    database never collides with an earlier run's sagas.
    """
    orch = app.orchestrator
    tag = run_tag if run_tag is not None else uuid.uuid4().hex[:6]
    started: list[tuple[Scenario, uuid.UUID, str]] = []
    for sc in scenarios:
        aggregation_id = f"{sc.key}@{tag}" if tag else sc.key
        saga_id = await orch.start(
            saga_name=sc.saga_name,
            initial_data=sc.initial_data,
            aggregation_id=aggregation_id,
            inline=sc.inline,
        )
        started.append((sc, saga_id, aggregation_id))

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        snaps = [await orch.get_snapshot(saga_id) for _, saga_id, _ in started]
        if all(s.status in SETTLED for s in snaps):
            break
        if await orch.run_due(limit=50) == 0:
            await asyncio.sleep(0.02)  # some saga waits for its retry time

    admin: SagaAdmin[Any] = SagaAdmin(engine=orch.engine, actor="examples")
    return [
        ScenarioResult(sc, saga_id, aggregation_id, await admin.get_saga(saga_id))
        for sc, saga_id, aggregation_id in started
    ]


def summarize_history(history: list[dict[str, Any]]) -> list[StepLine]:
    """Group consecutive history entries by phase and step, oldest first."""
    lines: list[StepLine] = []
    for entry in history:
        phase, step_id = str(entry.get("phase")), str(entry.get("step_id"))
        if not lines or (lines[-1].phase, lines[-1].step_id) != (phase, step_id):
            lines.append(StepLine(phase, step_id))
        lines[-1].outcomes.append(str(entry.get("status")))
        if entry.get("error") or entry.get("reason"):
            lines[-1].errors.append(str(entry.get("error") or entry.get("reason")))
    return lines


def _check(checks: list[Check], name: str, ok: bool, detail: str) -> None:
    checks.append(Check(name, ok, detail))


def check_outcome(app: ExampleApp[Any], results: list[ScenarioResult]) -> list[Check]:
    """Every saga ended as expected, and the fake services show exactly what a saga
    promises: completed work done once, failed work undone."""
    checks: list[Check] = []
    for r in results:
        _check(
            checks,
            f"{r.scenario.key} ended {r.scenario.expected.value}",
            r.ok,
            f"status {r.status.value}" + (f" ({r.saga.last_error})" if not r.ok else ""),
        )

    inv, pay, ship = app.orders.inventory, app.orders.payments, app.orders.shipping
    order_results = [r for r in results if r.scenario.saga_name == orders.SAGA_NAME]
    sold: Counter[str] = Counter()
    for r in order_results:
        order = orders.OrderRequest.model_validate(r.scenario.initial_data)
        charges = [c for c in pay.charges.values() if c.order_id == order.order_id]
        captured = pay.captured(order.order_id)
        shipped = [s for s in ship.shipments.values() if s.order_id == order.order_id]
        if r.status is SagaStatus.COMPLETED:
            sold[order.sku] += order.quantity
            _check(
                checks,
                f"{order.order_id}: charged exactly once",
                len(charges) == 1 and len(captured) == 1,
                f"{len(charges)} charge(s), {len(captured)} captured, "
                f"{pay_attempts(r)} ChargePayment attempt(s)",
            )
            _check(checks, f"{order.order_id}: shipped once", len(shipped) == 1, f"{len(shipped)}")
        else:
            _check(
                checks,
                f"{order.order_id}: nothing left charged",
                not captured,
                f"{len(charges)} charge(s), {len(charges) - len(captured)} refunded",
            )
            _check(checks, f"{order.order_id}: not shipped", not shipped, f"{len(shipped)}")
    for sku, initial in inv.initial.items():
        want = initial - sold[sku]
        _check(
            checks,
            f"stock of {sku} = {initial} - sold",
            inv.stock[sku] == want,
            f"{inv.stock[sku]} available, expected {want}",
        )
    held = sum(res.quantity for res in inv.reservations.values())
    _check(
        checks,
        "only completed orders hold stock",
        held == sum(sold.values()),
        f"{held} unit(s) reserved, {sum(sold.values())} sold",
    )

    gpus, platform, router = app.deploy.gpus, app.deploy.platform, app.deploy.router
    in_use = 0
    for r in (r for r in results if r.scenario.saga_name == deploy_model.SAGA_NAME):
        request = deploy_model.DeployRequest.model_validate(r.scenario.initial_data)
        outputs: dict[str, Any] = r.saga.context.get("step_outputs") or {}
        reservation = outputs.get("ReserveGpuQuota")
        deployed: dict[str, Any] = outputs.get("DeployContainer") or {}
        container = platform.containers.get(deployed.get("deployment_id", ""))
        if r.status is SagaStatus.COMPLETED:
            in_use += int(outputs["CheckModel"]["gpus"])
            _check(
                checks,
                f"{request.model}: serving at /{request.endpoint}",
                container is not None
                and container.state == "running"
                and router.routes.get(request.endpoint) == deployed.get("internal_url"),
                f"container {container.state if container else 'missing'}",
            )
        else:
            _check(
                checks,
                f"{request.model}: GPU quota released",
                reservation is None or reservation["reservation_id"] in gpus.released,
                f"reservation {reservation['reservation_id'] if reservation else 'none'}",
            )
            staged = outputs.get("StageWeights")
            _check(
                checks,
                f"{request.model}: staged weights evicted",
                staged is None or staged["cache_path"] not in app.deploy.cache.staged,
                f"weights {staged['cache_path'] if staged else 'never staged'}",
            )
            _check(
                checks,
                f"{request.model}: container torn down, not published",
                (container is None or container.state == "torn_down")
                and request.endpoint not in router.routes,
                f"container {container.state if container else 'none'}",
            )
    _check(
        checks,
        "GPUs in use = completed deployments' GPUs",
        gpus.in_use == in_use,
        f"{gpus.in_use} of {gpus.capacity} in use, expected {in_use}",
    )
    return checks


def pay_attempts(result: ScenarioResult) -> int:
    """How many times ChargePayment's ``execute`` ran for this saga."""
    return sum(
        1
        for e in result.saga.step_history
        if e.get("phase") == "execute" and e.get("step_id") == "ChargePayment"
    )
