"""The delivery rule (``saga_core.events.refusal_reason``): which deliveries a saga accepts,
and the reason recorded for the others."""

from __future__ import annotations

import uuid

import pytest

from saga_core import SagaInputError, WaitForEvent
from saga_core.context import check_event_name
from saga_core.events import refusal_reason

TOKEN = uuid.uuid4()
NAMED = {"waiting": {"step_id": "s", "since": "t", "timeout_s": None, "event_name": "approval"}}
UNNAMED = {"waiting": {"step_id": "s", "since": "t", "timeout_s": None}}


def by_token(
    status: str, token: uuid.UUID = TOKEN, context: dict[str, object] | None = None
) -> str | None:
    return refusal_reason(status, context or {}, TOKEN, token=token)


def by_name(status: str, context: dict[str, object], name: str = "approval") -> str | None:
    return refusal_reason(status, context, TOKEN, aggregation_id="o-1", event_name=name)


def test_by_token() -> None:
    assert by_token("SUSPENDED") is None
    assert by_token("SUSPENDED", context=NAMED) is None, "a named wait takes its token too"
    assert by_token("SUSPENDED", uuid.uuid4()) == "stale token"
    for status in ("RUNNING", "COMPENSATING", "FAILED", "COMPLETED", "COMPENSATED", "ABORTED"):
        assert by_token(status) == f"saga is {status}"


def test_by_name() -> None:
    assert by_name("SUSPENDED", NAMED) is None
    assert by_name("SUSPENDED", NAMED, "Approval") == "waiting for 'approval', not 'Approval'"
    assert by_name("SUSPENDED", UNNAMED) == (
        "saga is waiting for an unnamed event (deliver it with saga_id and token)"
    )
    assert by_name("SUSPENDED", {}) == (
        "saga is SUSPENDED to retry a failed step, not waiting for an event"
    )
    assert by_name("RUNNING", NAMED) == "saga is RUNNING, not waiting for an event"
    assert by_name("COMPLETED", {}) == (
        "no active saga for aggregation_id 'o-1' (newest is COMPLETED)"
    )


@pytest.mark.parametrize("bad", ["", "x" * 201, "a\x00b", None, 7])
def test_event_names_are_checked(bad: object) -> None:
    with pytest.raises(SagaInputError, match="event_name must be"):
        check_event_name(bad, "event_name")
    if bad is not None:  # None is no name
        with pytest.raises(SagaInputError, match="name of an event wait"):
            WaitForEvent(name=bad)  # type: ignore[arg-type]


def test_a_wait_keeps_its_name() -> None:
    assert WaitForEvent(name="x" * 200).name == "x" * 200
    assert WaitForEvent().name is None
