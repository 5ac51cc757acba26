"""Helpers of the issue-11 regression tests (``test_regress_*.py``): a step that asks the
other side for a reply and waits for it, driving a saga to its end with a real worker, and
the checks every such test makes (no saga stranded, each accepted event consumed once).

Only the public API and the harness's row reads are used: these tests must hold for any
implementation of the run layer.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from itkit import SAFETY_TIMEOUT, Harness, Worker
from pydantic import BaseModel

from saga_core import BaseStep, InputContext, StepContext, current_step
from saga_core.store import SagaFilter, SagaRow

TERMINAL = {"COMPLETED", "COMPENSATED", "ABORTED", "FAILED"}

REPLY = {"kind": "reply", "ok": True}


class Seen(BaseModel):
    replies: int = 0
    """How many ``reply`` events the saga holds (in ``InputContext.events``)."""


class Done(BaseModel):
    replies: int


def replies(ctx: InputContext) -> Seen:
    """Input map of an asking step: the replies the saga has received so far."""
    return Seen(replies=sum(1 for e in ctx.events if e.get("kind") == "reply"))


Responder = Callable[[StepContext], Awaitable[None]]


@dataclass
class Run:
    saga_id: uuid.UUID
    attempt: int
    token: uuid.UUID
    replies: int


@dataclass
class AskLog:
    runs: list[Run] = field(default_factory=list)
    started: dict[uuid.UUID, asyncio.Event] = field(default_factory=dict)
    waiting: dict[uuid.UUID, asyncio.Event] = field(default_factory=dict)
    """Set when an execution raises its wait (the step is about to be suspended)."""

    def waiting_event(self, saga_id: uuid.UUID) -> asyncio.Event:
        return self.waiting.setdefault(saga_id, asyncio.Event())

    def of(self, saga_id: uuid.UUID) -> list[Run]:
        return [r for r in self.runs if r.saga_id == saga_id]

    def started_event(self, saga_id: uuid.UUID | None = None) -> asyncio.Event:
        return self.started.setdefault(saga_id or uuid.UUID(int=0), asyncio.Event())


class Ask(BaseStep[Seen, Done]):
    """Returns once the saga holds a reply; otherwise calls ``respond`` (the other side,
    handed ``current_step()``: it may answer at once) and waits for an event, named
    ``name`` (deliverable by correlation) or unnamed (by token only), without a timeout."""

    def __init__(
        self,
        log: AskLog,
        *,
        name: str | None = None,
        respond: Responder | None = None,
        timeout: float | None = None,
        fail_first: bool = False,
    ) -> None:
        self.log = log
        self.name = name
        self.respond = respond
        self.timeout = timeout
        self.fail_first = fail_first

    async def execute(self, inp: Seen) -> Done:
        ctx = current_step()
        self.log.runs.append(Run(ctx.saga_id, ctx.attempt, ctx.token, inp.replies))
        self.log.started_event(ctx.saga_id).set()
        self.log.started_event().set()
        if inp.replies:
            return Done(replies=inp.replies)
        if self.respond is not None:
            await self.respond(ctx)
        if self.fail_first and ctx.attempt == 1:
            raise RuntimeError("the first attempt fails after handing out its token")
        self.log.waiting_event(ctx.saga_id).set()
        ctx.wait_for_event(self.timeout, name=self.name)


def history(row: SagaRow) -> list[dict[str, Any]]:
    return row.step_history or []


def statuses(row: SagaRow, *, phase: str | None = None) -> list[tuple[str, str | None, str]]:
    return [
        (e["phase"], e.get("step_id"), e["status"])
        for e in history(row)
        if phase is None or e["phase"] == phase
    ]


def _brief(e: dict[str, Any]) -> str:
    text = f"{e['phase']}/{e.get('step_id')}/{e['status']}"
    why = e.get("reason") or e.get("error")
    return f"{text}({str(why)[:120]})" if why else text


def describe(row: SagaRow) -> str:
    """One line: status, due time, owner and the history in brief (with reasons)."""
    return (
        f"saga {row.id}: {row.status} deadline={row.deadline_at} owner={row.lease_owner} "
        f"history=[{', '.join(_brief(e) for e in history(row))}]"
    )


async def settle(
    h: Harness, w: Worker, saga_id: uuid.UUID, *, timeout: float = SAFETY_TIMEOUT
) -> SagaRow:
    """Run ``w``'s ``run_due`` until the saga is terminal (every event it needs was delivered
    before this is called); fails naming the last state, e.g. a saga stranded SUSPENDED with
    no due time."""
    deadline = time.monotonic() + timeout
    while True:
        await w.orch.run_due()
        row = await h.row(saga_id)
        if row.status in TERMINAL:
            return row
        if time.monotonic() > deadline:
            stranded = row.status == "SUSPENDED" and row.deadline_at is None
            raise AssertionError(
                ("stranded: " if stranded else "not finished: ")
                + f"{describe(row)} after {timeout:g}s although every event it needs was "
                "delivered"
            )
        await asyncio.sleep(0.05)


async def assert_nothing_stranded(h: Harness) -> None:
    """No saga of the table is SUSPENDED with no due time while it holds no wait (the
    callers delivered every event their sagas wait for)."""
    ids = [r.id for r in await h.store.saga_list(SagaFilter(), limit=1_000_000)]
    for sid in ids:
        row = await h.row(sid)
        assert not (row.status == "SUSPENDED" and row.deadline_at is None), describe(row)


def event_entries(row: SagaRow, status: str) -> list[dict[str, Any]]:
    return [e for e in history(row) if e["phase"] == "event" and e["status"] == status]


def assert_consumed_once(row: SagaRow, *, queued: bool | None) -> None:
    """Exactly one event was accepted and consumed: one ``RECEIVED`` and, when it was kept
    in the inbox (``queued``), one ``CONSUMED`` with the same ``event_id``; no refusal and no
    ``UNUSED``. ``queued=None``: either way (a race decides)."""
    received = event_entries(row, "RECEIVED")
    assert len(received) == 1, describe(row)
    assert not event_entries(row, "REFUSED"), describe(row)
    assert not event_entries(row, "UNUSED"), describe(row)
    consumed = event_entries(row, "CONSUMED")
    was_queued = bool(received[0].get("queued"))
    if queued is not None:
        assert was_queued is queued, received[0]
    if was_queued:
        assert len(consumed) == 1, describe(row)
        assert consumed[0]["event_id"] == received[0]["event_id"]
    else:
        assert not consumed, describe(row)
    assert [e for e in row.context.get("events", []) if e.get("kind") == "reply"] == [REPLY]


def json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
