"""The application the acceptance tests run under ``sagad --app app_sagas:make``.

Every step execution and compensation records its interval (saga, step, phase, attempt,
worker pid, start, end, outcome) in ``<table>_runs``, committed before and after the step's
work, so tests can count executions and check that none overlapped.

Environment read by :func:`make` (the factory sagad calls with the database URL):
``ACCEPT_TABLE`` (saga table, default ``accept_saga``), ``ACCEPT_LEASE`` (execution lease in
seconds, default 2), ``ACCEPT_RECORD_URL`` (where to record runs; default the saga database),
``ACCEPT_MAX_SLEEP`` (caps every step's sleep), ``ACCEPT_TRACE_FILE`` (when set: trace with an
OpenTelemetry SDK provider that appends every finished span to that file as a JSON line).

Sagas (all read optional ``sleep`` / ``sleep_<step>`` / ``comp_sleep`` seconds from their
initial data):

- ``trivial``: steps a, b doing nothing but recording.
- ``steps``: steps a, b, c.
- ``rollback``: steps a, b, then c fails once and for all: b and a are compensated.
- ``ledger``: steps a, p, c; p is transactional: it inserts a ``post`` row into
  ``<table>_ledger`` through ``current_step().session`` (its compensation a ``reverse`` row).
- ``ledger_rollback``: the same, then c fails: p and a are compensated.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from saga_core import (
    BaseStep,
    FixedRetry,
    InputContext,
    SagaBuilder,
    SagaDefinition,
    SagaOrchestrator,
    SagaStateMixin,
    current_step,
)

RUNS_DDL = """
CREATE TABLE IF NOT EXISTS {table}_runs (
    id {serial} PRIMARY KEY,
    saga_id {uuid} NOT NULL,
    step_id TEXT NOT NULL,
    phase TEXT NOT NULL,
    attempt INT NOT NULL,
    pid INT NOT NULL,
    started_at {ts} NOT NULL,
    ended_at {ts},
    outcome TEXT
)
"""


def runs_ddl(dialect: str, table: str) -> str:
    """The side table's DDL for PostgreSQL (or SQLite, for the single-worker test)."""
    if dialect == "postgresql":
        return RUNS_DDL.format(table=table, serial="BIGSERIAL", uuid="UUID", ts="TIMESTAMPTZ")
    return RUNS_DDL.format(table=table, serial="INTEGER", uuid="TEXT", ts="TEXT")


MAX_SLEEP = float(os.environ.get("ACCEPT_MAX_SLEEP", "inf"))
"""Caps every sleep: a second worker finishes quickly what a first one was slow at."""


class StepIn(BaseModel):
    sleep: float = 0.0
    comp_sleep: float = 0.0
    fail: bool = False


class StepOut(BaseModel):
    ok: bool = True


class Recorder:
    """Writes run rows with the database clock (clock_timestamp), each in its own commit."""

    def __init__(self, engine: AsyncEngine, table: str) -> None:
        self.engine = engine
        self.table = f"{table}_runs"
        self.pg = engine.dialect.name == "postgresql"
        self.now = "clock_timestamp()" if self.pg else "CURRENT_TIMESTAMP"

    def _params(self) -> dict[str, Any]:
        ctx = current_step()
        return {
            "s": ctx.saga_id if self.pg else str(ctx.saga_id),
            "st": ctx.step_id,
            "ph": ctx.phase,
            "a": ctx.attempt,
            "pid": os.getpid(),
        }

    async def instant(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    f"INSERT INTO {self.table} (saga_id, step_id, phase, attempt, pid, "
                    f"started_at, ended_at, outcome) VALUES (:s, :st, :ph, :a, :pid, "
                    f"{self.now}, {self.now}, 'ok')"
                ),
                self._params(),
            )

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with self.engine.begin() as conn:
            run_id = (
                await conn.execute(
                    text(
                        f"INSERT INTO {self.table} (saga_id, step_id, phase, attempt, pid, "
                        f"started_at) VALUES (:s, :st, :ph, :a, :pid, {self.now}) RETURNING id"
                    ),
                    self._params(),
                )
            ).scalar_one()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            await asyncio.shield(self._end(run_id, outcome))

    async def _end(self, run_id: int, outcome: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                text(f"UPDATE {self.table} SET ended_at = {self.now}, outcome = :o WHERE id = :id"),
                {"o": outcome, "id": run_id},
            )


class Work(BaseStep[StepIn, StepOut]):
    """Records its run; sleeps ``sleep``; fails when told to."""

    def __init__(self, recorder: Recorder) -> None:
        self.rec = recorder

    async def execute(self, inp: StepIn) -> StepOut:
        if inp.sleep <= 0 and not inp.fail:
            await self.rec.instant()
            return StepOut()
        async with self.rec.run():
            await asyncio.sleep(min(inp.sleep, MAX_SLEEP))
            if inp.fail:
                raise RuntimeError("planned failure")
        return StepOut()

    async def compensate(self, inp: StepIn, out: StepOut) -> None:
        async with self.rec.run():
            await asyncio.sleep(min(inp.comp_sleep, MAX_SLEEP))


class Post(BaseStep[StepIn, StepOut]):
    """Transactional: one ledger row per execution (``reverse`` per compensation), written
    through the step's session, so it commits with the step's checkpoint; sleeps inside the
    transaction. Runs are recorded like ``Work``'s (test instrumentation, committed apart)."""

    transactional = True

    def __init__(self, recorder: Recorder, table: str) -> None:
        self.rec = recorder
        self.sql = f"INSERT INTO {table}_ledger (saga_id, step_id, kind) VALUES (:s, :st, :k)"

    async def _post(self, kind: str, sleep: float) -> None:
        ctx = current_step()
        async with self.rec.run():
            await ctx.session.execute(
                text(self.sql),
                {
                    "s": ctx.saga_id if self.rec.pg else str(ctx.saga_id),
                    "st": ctx.step_id,
                    "k": kind,
                },
            )
            await asyncio.sleep(min(sleep, MAX_SLEEP))

    async def execute(self, inp: StepIn) -> StepOut:
        await self._post("post", inp.sleep)
        return StepOut()

    async def compensate(self, inp: StepIn, out: StepOut) -> None:
        await self._post("reverse", inp.comp_sleep)


def ledger_ddl(dialect: str, table: str) -> str:
    serial, uuid_type = ("BIGSERIAL", "UUID") if dialect == "postgresql" else ("INTEGER", "TEXT")
    return (
        f"CREATE TABLE IF NOT EXISTS {table}_ledger (id {serial} PRIMARY KEY, "
        f"saga_id {uuid_type} NOT NULL, step_id TEXT NOT NULL, kind TEXT NOT NULL)"
    )


def _ledger(work: Work, post: Post, failing: str | None = None) -> SagaDefinition:
    b = SagaBuilder()
    for sid in ["a", "p", "c"]:
        b.add_step(
            step=post if sid == "p" else work,
            input_map=_input_for(sid, fail=sid == failing),
            step_id=sid,
            retry_policy=None if sid == failing else FixedRetry(max_attempts=5, delay=0.2),
        )
    return b.build()


def _input_for(step_id: str, *, fail: bool = False) -> Callable[[InputContext], StepIn]:
    def input_map(ctx: InputContext) -> StepIn:
        data: dict[str, Any] = ctx.initial_data
        sleep = float(data.get(f"sleep_{step_id}", data.get("sleep", 0.0)))
        return StepIn(sleep=sleep, comp_sleep=float(data.get("comp_sleep", 0.0)), fail=fail)

    return input_map


def _definition(step: Work, step_ids: list[str], failing: str | None = None) -> SagaDefinition:
    b = SagaBuilder()
    for sid in step_ids:
        b.add_step(
            step=step,
            input_map=_input_for(sid, fail=sid == failing),
            step_id=sid,
            # A recorder write that hits a dropped connection is retried, not a rollback.
            retry_policy=None if sid == failing else FixedRetry(max_attempts=5, delay=0.2),
        )
    return b.build()


@cache
def model_for(table: str) -> type[SagaStateMixin]:
    """A saga model on ``table`` (one declarative base per table, so tests never clash)."""

    class Base(DeclarativeBase):
        pass

    return type(f"Saga_{table}", (SagaStateMixin, Base), {"__tablename__": table})


def build(
    url: str,
    *,
    table: str,
    lease: float = 2.0,
    record_url: str | None = None,
    engine_kwargs: dict[str, Any] | None = None,
    steps_v2: bool = False,
    tracer_provider: Any = None,
) -> SagaOrchestrator[Any]:
    engine = create_async_engine(url, **(engine_kwargs or {}))
    rec_engine = create_async_engine(record_url) if record_url else engine
    recorder = Recorder(rec_engine, table)
    step = Work(recorder)
    orch: SagaOrchestrator[Any] = SagaOrchestrator(
        model_class=model_for(table),
        session_maker=async_sessionmaker(engine),
        execution_lease=lease,
        tracer_provider=tracer_provider,
    )
    orch.register("trivial", _definition(step, ["a", "b"]))
    orch.register("steps", _definition(step, ["a", "b", "c"]))
    orch.register("rollback", _definition(step, ["a", "b", "c"], failing="c"))
    if steps_v2:  # a second version of "steps", with one more step
        orch.register("steps", _definition(step, ["a", "b", "c", "d"]), version=2)
    post = Post(recorder, table)
    orch.register("ledger", _ledger(step, post))
    orch.register("ledger_rollback", _ledger(step, post, failing="c"))
    return orch


def json_lines_provider(path: str) -> Any:
    """An SDK ``TracerProvider`` writing each finished span to ``path`` (one JSON object a
    line: name, ids in hex, parent span id, attributes, status), as an application would
    configure its exporter."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class JsonLines(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            with open(path, "a", encoding="utf-8") as f:
                for span in spans:
                    assert isinstance(span, ReadableSpan) and span.context is not None
                    record = {
                        "name": span.name,
                        "trace_id": f"{span.context.trace_id:032x}",
                        "span_id": f"{span.context.span_id:016x}",
                        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
                        "attributes": dict(span.attributes or {}),
                        "status": span.status.status_code.name,
                        "pid": os.getpid(),
                    }
                    f.write(json.dumps(record) + "\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLines()))
    return provider


def make(url: str) -> SagaOrchestrator[Any]:
    """The factory sagad imports: ``--app app_sagas:make``."""
    trace_file = os.environ.get("ACCEPT_TRACE_FILE")
    return build(
        url,
        table=os.environ.get("ACCEPT_TABLE", "accept_saga"),
        lease=float(os.environ.get("ACCEPT_LEASE", "2")),
        record_url=os.environ.get("ACCEPT_RECORD_URL") or None,
        steps_v2=bool(os.environ.get("ACCEPT_STEPS_V2")),
        tracer_provider=json_lines_provider(trace_file) if trace_file else None,
    )


not_an_orchestrator = 42
