"""The ``evfork`` saga of the fault tests: parallel branches that wait for external events.

Shape: ``a -> (t, n, w) -> d``.

- ``t`` waits for ``rounds`` events (1 or 2), each by its token: every round it hands out
  ``current_step().token`` (a row in ``<table>_asks``, committed), then waits without a name.
- ``n`` waits for one event named ``approval``: it hands out its token too, so the event may
  come by token or by ``aggregation_id`` + ``approval``.
- ``w`` is a plain branch beside them (it sleeps, and may fail: its retry delay is longer
  than a worker keeps a saga for an in-place retry, so the saga is released and claimed
  again while the others wait: the case of a sibling's retry re-claiming the saga).
- ``d`` joins them; it may fail for good, so the saga rolls back.

Whoever answers (the test's deliverers, polling ``<table>_asks``) may answer before the step
waits: after handing out its token the step lingers ``ask_delay`` seconds before waiting, and
with ``self_deliver`` it also starts a task that delivers at once from inside the worker
(recorded in ``<table>_deliveries``). Nothing waits with a timeout: an event lost or a wait
stranded leaves the saga SUSPENDED without a due time for the test to find.

Side effects are idempotent by key: every execution that gets past its waits, and every
compensation, upserts one row of ``<table>_effects`` keyed by ``current_step()
.idempotency_key`` (``tries`` counts the times it was applied again). Each event a step saw
is in its output, so the test can check what the steps saw against the history.

``initial_data``: ``plan`` (step id -> ``n`` failures of its first attempts, after applying
its effect, or ``"always"``: fails for good before its effect), ``rounds``, ``ask_delay``,
``answer_after`` (step id -> seconds: the test's deliverers answer that step only that
much later, when the saga may have suspended: the answer is then consumed at once; such a
step does not deliver from inside the worker),
``self_deliver`` (by ``"token"`` or ``"name"``, or absent), ``fail_ask`` (t's first attempt
fails right after handing out its token: the early event must wait for the next attempt),
``sleep_w``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app_sagas import Recorder
from pydantic import BaseModel
from sqlalchemy import text

from saga_core import (
    BaseStep,
    FixedRetry,
    InputContext,
    SagaBuilder,
    SagaDefinition,
    SagaOrchestrator,
    WaitForEvent,
    current_step,
)

EVENT_NAME = "approval"
WAIT_STEPS = {"t": None, "n": EVENT_NAME}
"""The branches that wait for events, and the name each waits for (None: by token only)."""
W_RETRY_DELAY = 1.3
"""w's retry delay: longer than the default in-place retry limit (1 s), so the saga is
released while w waits for its retry and claimed again for it."""

EVENTS_DDL = (
    """CREATE TABLE IF NOT EXISTS {t}_asks (
    id BIGSERIAL PRIMARY KEY, saga_id UUID NOT NULL, aggregation_id TEXT NOT NULL,
    step_id TEXT NOT NULL, round INT NOT NULL, attempt INT NOT NULL, token UUID NOT NULL,
    name TEXT, key TEXT NOT NULL, pid INT NOT NULL, answer_after FLOAT NOT NULL DEFAULT 0,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(), taken BOOLEAN NOT NULL DEFAULT false)""",
    "CREATE INDEX IF NOT EXISTS {t}_asks_untaken ON {t}_asks (id) WHERE NOT taken",
    """CREATE TABLE IF NOT EXISTS {t}_effects (
    key TEXT PRIMARY KEY, saga_id UUID NOT NULL, step_id TEXT NOT NULL, phase TEXT NOT NULL,
    tries INT NOT NULL DEFAULT 1, pid INT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())""",
    """CREATE TABLE IF NOT EXISTS {t}_deliveries (
    id BIGSERIAL PRIMARY KEY, saga_id UUID NOT NULL, step_id TEXT NOT NULL, round INT NOT NULL,
    token UUID, form TEXT NOT NULL, sender TEXT NOT NULL, eid TEXT NOT NULL,
    accepted BOOLEAN, queued BOOLEAN, event_id TEXT, reason TEXT, error TEXT)""",
)


def event_tables(table: str) -> list[str]:
    return [f"{table}_asks", f"{table}_effects", f"{table}_deliveries"]


class EvIn(BaseModel):
    sleep: float = 0.0
    fail: int | str = 0
    rounds: int = 0
    seen: list[dict[str, Any]] = []
    ask_delay: float = 0.0
    answer_after: float = 0.0
    self_deliver: str | None = None
    fail_ask: bool = False


class EvOut(BaseModel):
    rounds: list[int] = []
    eids: list[str] = []
    key: str = ""


class EvStep(BaseStep[EvIn, EvOut]):
    def __init__(self, rec: Recorder, table: str, deliverer: SagaOrchestrator[Any]) -> None:
        self.rec = rec
        self.table = table
        self.deliverer = deliverer
        self.tasks: set[asyncio.Task[None]] = set()

    async def execute(self, inp: EvIn) -> EvOut:
        ctx = current_step()
        async with self._run():
            if inp.sleep > 0:
                await asyncio.sleep(inp.sleep)
            if len(inp.seen) < inp.rounds:
                await self._ask(len(inp.seen) + 1, inp)
            if inp.fail == "always":
                raise RuntimeError("planned failure, for good")
            await self._effect()
            if isinstance(inp.fail, int) and ctx.attempt <= inp.fail:
                raise RuntimeError(f"planned failure (attempt {ctx.attempt})")
        return EvOut(
            rounds=[int(e["round"]) for e in inp.seen],
            eids=[str(e["eid"]) for e in inp.seen],
            key=ctx.idempotency_key,
        )

    async def compensate(self, inp: EvIn, out: EvOut) -> None:
        async with self._run():
            await self._effect()

    async def _ask(self, rnd: int, inp: EvIn) -> None:
        """Hand out the token (committed), maybe deliver at once from here, then wait."""
        ctx = current_step()
        name = WAIT_STEPS.get(ctx.step_id)
        async with self.rec.engine.begin() as conn:
            await conn.execute(
                text(
                    f"INSERT INTO {self.table}_asks (saga_id, aggregation_id, step_id, round, "
                    "attempt, token, name, key, pid, answer_after) VALUES (:s, :agg, :st, :r, "
                    ":a, :tok, :n, :k, :pid, :after)"
                ),
                {
                    "s": ctx.saga_id,
                    "agg": ctx.aggregation_id,
                    "st": ctx.step_id,
                    "r": rnd,
                    "a": ctx.attempt,
                    "tok": ctx.token,
                    "n": name,
                    "k": ctx.idempotency_key,
                    "pid": os.getpid(),
                    "after": inp.answer_after,
                },
            )
        if inp.self_deliver is not None and inp.answer_after <= 0:
            form = inp.self_deliver if name is not None else "token"
            task = asyncio.create_task(self._deliver(ctx.saga_id, ctx.aggregation_id, rnd, form))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if inp.fail_ask and ctx.attempt == 1:
            raise RuntimeError("planned failure right after handing out the token")
        if inp.ask_delay > 0:
            await asyncio.sleep(inp.ask_delay)  # the answer may come meanwhile: early
        ctx.wait_for_event(name=name)

    async def _deliver(self, saga_id: uuid.UUID, aggregation_id: str, rnd: int, form: str) -> None:
        """Deliver from inside the worker, racing the step's wait (recorded, never raised)."""
        ctx = current_step()  # the step's context, copied into this task
        eid = uuid.uuid4().hex
        event = {"step": ctx.step_id, "round": rnd, "eid": eid, "by": f"worker-{os.getpid()}"}
        row: dict[str, Any] = {
            "s": saga_id,
            "st": ctx.step_id,
            "r": rnd,
            "tok": ctx.token,
            "f": form,
            "by": event["by"],
            "eid": eid,
            "acc": None,
            "q": None,
            "ev": None,
            "why": None,
            "err": None,
        }
        try:
            if form == "token":
                got = await self.deliverer.deliver(saga_id=saga_id, token=ctx.token, event=event)
            else:
                got = await self.deliverer.deliver(
                    aggregation_id=aggregation_id, event_name=EVENT_NAME, event=event
                )
            row.update(acc=got.accepted, q=got.queued, ev=got.event_id, why=got.reason)
        except Exception as exc:  # recorded for the test to see
            row["err"] = f"{type(exc).__name__}: {exc}"[:500]
        async with self.rec.engine.begin() as conn:
            await conn.execute(
                text(
                    f"INSERT INTO {self.table}_deliveries (saga_id, step_id, round, token, form, "
                    "sender, eid, accepted, queued, event_id, reason, error) VALUES (:s, :st, "
                    ":r, :tok, :f, :by, :eid, :acc, :q, :ev, :why, :err)"
                ),
                row,
            )

    async def _effect(self) -> None:
        ctx = current_step()
        async with self.rec.engine.begin() as conn:
            await conn.execute(
                text(
                    f"INSERT INTO {self.table}_effects (key, saga_id, step_id, phase, pid) "
                    "VALUES (:k, :s, :st, :ph, :pid) ON CONFLICT (key) DO UPDATE "
                    f"SET tries = {self.table}_effects.tries + 1"
                ),
                {
                    "k": ctx.idempotency_key,
                    "s": ctx.saga_id,
                    "st": ctx.step_id,
                    "ph": ctx.phase,
                    "pid": os.getpid(),
                },
            )

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[None]:
        """The run's interval in ``<table>_runs`` (outcome ``wait`` when it began to wait)."""
        runs = self.rec.table
        ctx = current_step()
        async with self.rec.engine.begin() as conn:
            run_id = (
                await conn.execute(
                    text(
                        f"INSERT INTO {runs} (saga_id, step_id, phase, attempt, pid, started_at) "
                        "VALUES (:s, :st, :ph, :a, :pid, clock_timestamp()) RETURNING id"
                    ),
                    {
                        "s": ctx.saga_id,
                        "st": ctx.step_id,
                        "ph": ctx.phase,
                        "a": ctx.attempt,
                        "pid": os.getpid(),
                    },
                )
            ).scalar_one()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        except WaitForEvent:
            outcome = "wait"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            await asyncio.shield(self._end(runs, run_id, outcome))

    async def _end(self, runs: str, run_id: int, outcome: str) -> None:
        async with self.rec.engine.begin() as conn:
            await conn.execute(
                text(
                    f"UPDATE {runs} SET ended_at = clock_timestamp(), outcome = :o WHERE id = :id"
                ),
                {"o": outcome, "id": run_id},
            )


def _input(step_id: str) -> Any:
    def input_map(ctx: InputContext) -> EvIn:
        data: dict[str, Any] = ctx.initial_data
        plan: dict[str, Any] = data.get("plan") or {}
        rounds = int(data.get("rounds", 1)) if step_id == "t" else 1
        return EvIn(
            sleep=float(data.get("sleep_w", 0.0)) if step_id == "w" else 0.0,
            fail=plan.get(step_id, 0),
            rounds=rounds if step_id in WAIT_STEPS else 0,
            seen=[e for e in ctx.events if e.get("step") == step_id],
            ask_delay=float(data.get("ask_delay", 0.0)),
            answer_after=float((data.get("answer_after") or {}).get(step_id, 0.0)),
            self_deliver=data.get("self_deliver"),
            fail_ask=bool(data.get("fail_ask")) and step_id == "t",
        )

    return input_map


def evfork(rec: Recorder, table: str, deliverer: SagaOrchestrator[Any]) -> SagaDefinition:
    step = EvStep(rec, table, deliverer)
    b = SagaBuilder(parallel=True)
    for sid, after in (("a", []), ("t", ["a"]), ("n", ["a"]), ("w", ["a"]), ("d", ["t", "n", "w"])):
        b.add_step(
            step=step,
            step_id=sid,
            input_map=_input(sid),  # annotated InputContext: waits for `after`, reads events
            depends_on=after or None,
            retry_policy=FixedRetry(
                max_attempts=3 if sid == "w" else 4, delay=W_RETRY_DELAY if sid == "w" else 0.05
            ),
            compensation_retry_policy=FixedRetry(max_attempts=10, delay=0.05),
        )
    return b.build()
