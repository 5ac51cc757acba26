"""Attack: bad input through the public API. "Bad input gets a clear error and changes
nothing" (``SagaInputError``; ``SagaDefinitionError`` for ``register``):

- JSON nested deeper than Python's encoder (and the stores behind it) can go: ``start`` and
  ``notify`` raise ``RecursionError`` or SQLAlchemy's ``StatementError`` instead, depending on
  how deep the caller's own stack is;
- a saga name that cannot be stored (lone surrogate, NUL) is registered, and every ``start``
  then fails with a driver error;
- ``SagaAdmin.preview_delivery`` says an event ``notify`` refuses (not a JSON object, too
  large, not storable) would be accepted, and answers a malformed aggregation id with a
  database error.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from itkit import Harness, chain
from regresskit import REPLY, Ask, AskLog, describe

from saga_core import SagaBuilder, SagaDefinitionError, SagaInputError


def nest(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


DEPTHS = [300, 985, 2000]


async def _waiting(h: Harness) -> tuple[Any, uuid.UUID, uuid.UUID]:
    log = AskLog()
    b = SagaBuilder()
    b.add_step(step=Ask(log, name="ok"), step_id="ask", input_map=lambda c: {"replies": 0})
    h.define("flow", b.build())
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="o", inline=True)
    (run,) = log.of(sid)
    return w, sid, run.token


@pytest.mark.parametrize("depth", DEPTHS)
async def test_deeply_nested_start_data_is_a_clear_input_error(h: Harness, depth: int) -> None:
    h.define("flow", chain(h.probe, ["a"]))
    w = await h.worker()
    with pytest.raises(SagaInputError, match="nest"):
        await w.orch.start(saga_name="flow", initial_data={"x": nest(depth)}, aggregation_id="o")
    assert await h.count() == 0


@pytest.mark.parametrize("depth", DEPTHS)
async def test_a_deeply_nested_event_is_a_clear_input_error(h: Harness, depth: int) -> None:
    w, sid, token = await _waiting(h)
    before = await h.row(sid)
    for kwargs in (
        {"saga_id": sid, "token": token},
        {"aggregation_id": "o", "event_name": "ok"},
    ):
        with pytest.raises(SagaInputError, match="nest"):
            await w.orch.notify(event={"x": nest(depth)}, **kwargs)
    after = await h.row(sid)
    assert after.step_history == before.step_history and after.status == "SUSPENDED"


async def test_data_nested_a_little_is_fine(h: Harness) -> None:
    w, sid, token = await _waiting(h)
    assert await w.orch.notify(saga_id=sid, token=token, event={"x": nest(200)})
    await w.drain()  # the step runs again with the event (and waits again)
    row = await h.row(sid)
    assert row.context["latest_event"] == {"x": nest(200)}, describe(row)
    assert [e["status"] for e in row.step_history or []].count("WAITING") == 2, describe(row)


@pytest.mark.parametrize("name", ["bad\udcffname", "nul\x00name"])
async def test_register_refuses_a_saga_name_no_store_can_keep(h: Harness, name: str) -> None:
    w = await h.worker(definitions={})
    with pytest.raises(SagaDefinitionError):
        w.orch.register(name, chain(h.probe, ["a"]))


@pytest.mark.parametrize(
    ("event", "what"),
    [
        ([1, 2], "a list"),
        ("reply", "a string"),
        ({"x": "y" * 1_100_000}, "over max_payload_bytes"),
        ({"x": "\udcff"}, "a lone surrogate"),
        ({"x": {1, 2}}, "not JSON"),
    ],
)
async def test_preview_delivery_refuses_what_notify_refuses(
    h: Harness, event: Any, what: str
) -> None:
    w, sid, token = await _waiting(h)
    with pytest.raises(SagaInputError):
        await w.orch.notify(saga_id=sid, token=token, event=event)
    with pytest.raises(SagaInputError):
        preview = await w.admin.preview_delivery(saga_id=sid, token=token, event=event)
        raise AssertionError(f"preview of an event that is {what}: {preview}")
    assert await w.orch.notify(saga_id=sid, token=token, event=REPLY), describe(await h.row(sid))


@pytest.mark.parametrize("aggregation_id", [123, "o\udcff", "x" * 201, "nul\x00"])
async def test_preview_delivery_refuses_a_malformed_aggregation_id(
    h: Harness, aggregation_id: Any
) -> None:
    w, _sid, _token = await _waiting(h)
    with pytest.raises(SagaInputError):
        await w.orch.notify(aggregation_id=aggregation_id, event_name="ok", event=REPLY)
    with pytest.raises(SagaInputError):
        await w.admin.preview_delivery(aggregation_id=aggregation_id, event_name="ok")
