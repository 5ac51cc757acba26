"""``SagaTestKit``: sagas in memory on virtual time — happy path, retries, timeouts, rollback,
events, ``run_at``, operator actions, seeded jitter, parallel sagas and simulated crashes."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from kit_sagas import (
    Charge,
    Order,
    Ref,
    Reserve,
    Services,
    Ship,
    approval_saga,
    order,
    order_saga,
)

from saga_core import BaseStep, ExponentialRetry, SagaBuilder, SagaStatus
from saga_core.errors import SagaError
from saga_core.rows import new_saga_values
from saga_core.testing import (
    START,
    Boundary,
    CrashPoint,
    SagaTestKit,
    virtual_time,
)

ORDER = Order(order_id="o-1").model_dump()


@virtual_time
async def test_happy_path() -> None:
    services = Services()
    kit = SagaTestKit()
    kit.register("order", order_saga(services))
    result = await kit.run_saga("order", ORDER)
    assert result.status is SagaStatus.COMPLETED
    assert result.outputs == {
        "reserve": {"ref": "res-o-1"},
        "charge": {"ref": "ch-1"},
        "ship": {"ref": "parcel-o-1"},
    }
    assert result.executions == {"reserve": 1, "charge": 1, "ship": 1}
    assert result.compensations == {}
    assert result.outcomes() == [
        ("execute", "reserve", "SUCCESS"),
        ("execute", "charge", "SUCCESS"),
        ("execute", "ship", "SUCCESS"),
    ]
    assert services.charges == {"ch-1": 100} and services.shipments == ["o-1"]
    assert result.takeovers == 0 and result.last_error is None


@virtual_time
async def test_a_one_hour_backoff_passes_on_the_virtual_clock() -> None:
    services = Services(charge_failures=2)
    kit = SagaTestKit()
    kit.register("order", order_saga(services))  # charge: FixedRetry(3, 1 hour)
    result = await kit.run_saga("order", ORDER)
    assert result.status is SagaStatus.COMPLETED
    assert result.outcomes(step_id="charge") == [
        ("execute", "charge", "ERROR"),
        ("execute", "charge", "ERROR"),
        ("execute", "charge", "SUCCESS"),
    ]
    assert [e.get("retry_in_s") for e in result.history if e["step_id"] == "charge"] == [
        3600.0,
        3600.0,
        None,
    ]
    # Two waits of an hour, three bank calls of 0.2 s: nothing else takes virtual time.
    assert kit.now() - START == timedelta(hours=2, seconds=0.6)
    assert result.executions["charge"] == 3


@virtual_time
async def test_a_step_timeout_is_virtual() -> None:
    services = Services()

    async def slow_bank(key: str, amount: int) -> str:
        import asyncio

        await asyncio.sleep(7200)  # two hours: far beyond the step's timeout
        return "never"

    services.charge = slow_bank  # type: ignore[method-assign]
    b = SagaBuilder()
    b.add_step(step=Reserve(services), input_map=order, step_id="reserve")
    b.add_step(step=Charge(services), input_map=order, step_id="charge", timeout=60)
    kit = SagaTestKit()
    kit.register("order", b.build())
    result = await kit.run_saga("order", ORDER)
    assert result.status is SagaStatus.COMPENSATED
    timeout = next(e for e in result.history if e["status"] == "TIMEOUT")
    assert timeout["duration_ms"] == 60_000.0
    assert result.compensations == {"reserve": 1}
    assert services.stock_held == {}


@virtual_time
async def test_rollback_undoes_the_completed_steps_newest_first() -> None:
    services = Services()
    kit = SagaTestKit()
    kit.register("order", order_saga(services))
    result = await kit.run_saga("order", Order(order_id="o-2", address="Atlantis").model_dump())
    assert result.status is SagaStatus.COMPENSATED
    assert result.outcomes() == [
        ("execute", "reserve", "SUCCESS"),
        ("execute", "charge", "SUCCESS"),
        ("execute", "ship", "ERROR"),
        ("compensate", "charge", "SUCCESS"),
        ("compensate", "reserve", "SUCCESS"),
    ]
    assert result.compensations == {"charge": 1, "reserve": 1}
    assert services.refunds == ["ch-1"] and services.stock_held == {}
    assert "no delivery to Atlantis" in (result.last_error or "")


@virtual_time
async def test_events_by_token_and_by_correlation() -> None:
    services, asked = Services(), list[str]()
    kit = SagaTestKit()
    kit.register("approval", approval_saga(services, asked))
    first = await kit.start("approval", ORDER, aggregation_id="o-1")
    second = await kit.start("approval", Order(order_id="o-2").model_dump(), aggregation_id="o-2")
    await kit.run_until_settled()
    for saga_id in (first, second):
        result = await kit.result(saga_id)
        assert result.status is SagaStatus.SUSPENDED, "stopped at the wait"
        assert result.snapshot.waits["approve"]["name"] == "approval"
    token = await kit.token(first)
    assert str(token) in asked
    assert (await kit.deliver(saga_id=first, token=token, event={"decision": "yes"})).accepted
    delivery = await kit.deliver(
        aggregation_id="o-2", event_name="approval", event={"decision": "yes"}
    )
    assert delivery.accepted and delivery.saga_id == second
    stale = await kit.deliver(saga_id=first, token=token, event={"decision": "no"})
    assert not stale.accepted and stale.reason == "stale token"
    await kit.run_until_settled()
    for saga_id in (first, second):
        result = await kit.result(saga_id)
        assert result.status is SagaStatus.COMPLETED
        assert result.events == [{"decision": "yes"}]
        assert result.executions["approve"] == 2  # asked, then ran again with the event


@virtual_time
async def test_an_event_wait_times_out_on_the_virtual_clock() -> None:
    services, asked = Services(), list[str]()
    kit = SagaTestKit()
    kit.register("approval", approval_saga(services, asked))
    saga_id = await kit.start("approval", ORDER)
    await kit.run_until_settled()
    assert (await kit.result(saga_id)).status is SagaStatus.SUSPENDED
    await kit.advance(timedelta(days=1))
    assert (await kit.result(saga_id)).status is SagaStatus.SUSPENDED, "a day: still waiting"
    await kit.advance(timedelta(days=1, seconds=1))
    result = await kit.result(saga_id)
    assert result.status is SagaStatus.COMPENSATED
    assert ("execute", "approve", "TIMEOUT") in result.outcomes()
    other = await kit.start("approval", Order(order_id="o-3").model_dump())
    await kit.run_until_settled(through_event_waits=True)
    assert (await kit.result(other)).status is SagaStatus.COMPENSATED


@virtual_time
async def test_run_at_is_fast_forwarded() -> None:
    kit = SagaTestKit()
    kit.register("order", order_saga(Services()))
    saga_id = await kit.start("order", ORDER, run_at=timedelta(days=3))
    assert (await kit.result(saga_id)).status is SagaStatus.RUNNING
    later = await kit.start(
        "order", Order(order_id="o-9").model_dump(), run_at=kit.now() + timedelta(days=5)
    )
    await kit.run_until_settled()
    first, second = await kit.result(saga_id), await kit.result(later)
    assert first.status is second.status is SagaStatus.COMPLETED
    assert first.history[0]["at"] == (START + timedelta(days=3)).isoformat()
    assert second.history[0]["at"] == (START + timedelta(days=5)).isoformat()


@virtual_time
async def test_operator_actions() -> None:
    services = Services(charge_failures=10)
    kit = SagaTestKit()
    kit.register(
        "order",
        order_saga(services, charge_retry=ExponentialRetry(2, 60), compensate_on_failure=False),
    )
    saga_id = await kit.start("order", ORDER)
    await kit.run_until_settled()
    assert (await kit.result(saga_id)).status is SagaStatus.FAILED
    services.charge_failures = 0
    await kit.admin.retry_step(saga_id, reason="the bank is back")
    await kit.run_until_settled()
    result = await kit.result(saga_id)
    assert result.status is SagaStatus.COMPLETED
    assert ("admin", "charge", "RETRY") in result.outcomes()

    services.charge_failures = 10
    skipped = await kit.start("order", Order(order_id="o-4").model_dump())
    await kit.run_until_settled()
    await kit.admin.skip_step(skipped, mock_output={"ref": "paid-by-hand"}, reason="paid")
    await kit.run_until_settled()
    result = await kit.result(skipped)
    assert result.status is SagaStatus.COMPLETED
    assert result.outputs["charge"] == {"ref": "paid-by-hand"}

    undone = await kit.start("order", Order(order_id="o-5").model_dump())
    await kit.run_until_settled()
    await kit.admin.compensate_step(undone, reason="customer cancelled")
    await kit.run_until_settled()
    assert (await kit.result(undone)).status is SagaStatus.COMPENSATED
    assert services.stock_held == {"o-1": "held", "o-4": "held"}

    aborted = await kit.start("order", Order(order_id="o-6").model_dump())
    await kit.admin.abort(aborted, reason="test")
    await kit.run_until_settled()
    result = await kit.result(aborted)
    assert result.status is SagaStatus.ABORTED and result.executions == {}


def _jittered(seed: int) -> list[float]:
    from saga_core.testing import run

    async def go() -> list[float]:
        kit = SagaTestKit(seed=seed)
        policy = ExponentialRetry(5, timedelta(minutes=10))  # full jitter
        kit.register("order", order_saga(Services(charge_failures=4), charge_retry=policy))
        result = await kit.run_saga("order", ORDER)
        assert result.status is SagaStatus.COMPLETED
        return [e["retry_in_s"] for e in result.history if "retry_in_s" in e]

    return run(go())


def test_retry_jitter_is_seeded() -> None:
    first, again, other = _jittered(7), _jittered(7), _jittered(8)
    assert len(first) == 4 and first == again
    assert other != first


@virtual_time
async def test_a_parallel_saga() -> None:
    services = Services()
    b = SagaBuilder(parallel=True)
    reserve = b.add_step(step=Reserve(services), input_map=order, step_id="reserve")
    b.add_step(
        step=Charge(services),
        input_map=lambda o: Order(order_id=o.ref),
        depends_on=reserve,
        step_id="charge",
        retry_policy=ExponentialRetry(3, timedelta(minutes=30), jitter=False),
    )
    b.add_step(
        step=Ship(services),
        input_map=lambda o: Order(order_id=o.ref),
        depends_on=reserve,
        step_id="ship",
    )
    services.charge_failures = 1
    kit = SagaTestKit()
    kit.register("parallel", b.build())
    result = await kit.run_saga("parallel", ORDER)
    assert result.status is SagaStatus.COMPLETED
    assert result.executions == {"reserve": 1, "charge": 2, "ship": 1}
    assert kit.now() - START == timedelta(minutes=30, seconds=0.4)


@pytest.mark.parametrize(
    ("boundary", "step_id", "runs"),
    [
        (Boundary.BEFORE, "charge", {"reserve": 1, "charge": 1, "ship": 1}),
        (Boundary.AFTER, "reserve", {"reserve": 2, "charge": 1, "ship": 1}),
        (Boundary.AFTER, "ship", {"reserve": 1, "charge": 1, "ship": 2}),
    ],
)
def test_a_crash_is_taken_over_after_the_lease(
    boundary: Boundary, step_id: str, runs: dict[str, int]
) -> None:
    @virtual_time
    async def go() -> None:
        services = Services()
        kit = SagaTestKit(execution_lease=timedelta(seconds=30))
        kit.register("order", order_saga(services))
        kit.crash_at(CrashPoint(boundary, step_id))
        result = await kit.run_saga("order", ORDER)
        assert result.status is SagaStatus.COMPLETED
        assert result.executions == runs
        assert result.takeovers == 1
        assert [(p, w) for p, w in kit.crashes] == [(CrashPoint(boundary, step_id), "kit-worker-1")]
        # The crashed step's outcome was recorded by the worker that took over.
        assert [e["worker"] for e in result.history if e["step_id"] == step_id] == ["kit-worker-2"]
        # The crashed worker wrote nothing more; the next one waited for its lease.
        assert kit.now() - START >= timedelta(seconds=30)

    go()


@virtual_time
async def test_a_crash_when_a_step_begins_to_wait_keeps_its_token() -> None:
    services, asked = Services(), list[str]()
    kit = SagaTestKit()
    kit.register("approval", approval_saga(services, asked))
    kit.crash_at(CrashPoint(Boundary.WAITING, "approve"))
    saga_id = await kit.start("approval", ORDER)
    await kit.run_until_settled()
    result = await kit.result(saga_id)
    assert result.status is SagaStatus.SUSPENDED and result.takeovers == 1
    assert len(asked) == 2 and asked[0] == asked[1], "the re-run hands out the same token"
    assert await kit.notify(saga_id=saga_id, token=uuid.UUID(asked[0]), event={"decision": "yes"})
    await kit.run_until_settled()
    assert (await kit.result(saga_id)).status is SagaStatus.COMPLETED


@virtual_time
async def test_an_unknown_saga_name_is_refused() -> None:
    kit = SagaTestKit()
    kit.register("order", order_saga(Services()))
    with pytest.raises(SagaError, match="unknown saga name"):
        await kit.start("orders", ORDER)


@virtual_time
async def test_a_saga_that_never_settles_is_reported() -> None:
    import asyncio

    class Hang(BaseStep[Order, Ref]):
        async def execute(self, inp: Order) -> Ref:
            await asyncio.Event().wait()  # never set
            raise AssertionError("unreachable")

    b = SagaBuilder()
    b.add_step(step=Hang(), input_map=order, step_id="hang")
    kit = SagaTestKit()
    kit.register("hang", b.build())
    saga_id = await kit.start("hang", ORDER)
    with pytest.raises(SagaError, match="not settled within 7 days"):
        await kit.run_until_settled(limit=timedelta(days=7))
    result = await kit.result(saga_id)
    assert result.status is SagaStatus.RUNNING
    assert result.outcomes() == [("execute", "hang", "INTERRUPTED")], "released, not failed"


@virtual_time
async def test_a_due_saga_no_definition_runs_is_reported() -> None:
    kit = SagaTestKit()
    kit.register("order", order_saga(Services()))
    values = new_saga_values(order_saga(Services()), "ghost", "g-1", {}, None)
    await kit.client.engine.store.saga_insert(values)
    with pytest.raises(SagaError, match="'ghost', version 1\\) is due but not registered"):
        await kit.run_until_settled()


def _five_orders_at_once() -> list[tuple[str, object]]:
    from saga_core.testing import run

    async def go() -> list[tuple[str, object]]:
        kit = SagaTestKit()
        kit.register("order", order_saga(Services()))
        ids = [await kit.start("order", Order(order_id=f"o-{i}").model_dump()) for i in range(5)]
        await kit.run_until_settled()
        return [(str(i), (await kit.result(s)).outputs["charge"]) for i, s in enumerate(ids)]

    return run(go())


def test_sagas_started_together_run_the_same_way_every_time() -> None:
    first = _five_orders_at_once()
    assert first == _five_orders_at_once()
    assert sorted(ref["ref"] for _, ref in first) == [f"ch-{n}" for n in range(1, 6)]
