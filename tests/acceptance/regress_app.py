"""The application of the issue-11 regression tests run under ``sagad --app regress_app:make``.

Every step execution records its interval in ``<table>_runs`` (:class:`app_sagas.Recorder`).

Sagas (``initial_data["sleep"]``: seconds every step takes):

- ``seq``: steps a, b, c.
- ``fork``: a parallel saga, a -> (b, c) -> d.
- ``skewwait``: a parallel saga: branch ``wait`` waits up to 10 minutes for an event named
  ``go``; sibling ``flaky`` fails its first attempt and is retried after 2 s (longer than
  ``in_place_retry_max``: the saga is released and claimed again for it); ``d`` joins them.

Environment read by :func:`make`: ``REGRESS_TABLE``, ``REGRESS_LEASE`` (seconds, default 2),
``REGRESS_MAX_RECOVERIES`` (default 5).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from app_sagas import Recorder, model_for
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import (
    BaseStep,
    FixedRetry,
    InputContext,
    NoRetry,
    SagaBuilder,
    SagaOrchestrator,
    current_step,
)

WAIT_S = 600.0
RETRY_S = 2.0


class In(BaseModel):
    sleep: float = 0.0
    go: int = 0


class Out(BaseModel):
    ok: bool = True


def _input(ctx: InputContext) -> In:
    data: dict[str, Any] = ctx.initial_data
    go = sum(1 for e in ctx.events if e.get("kind") == "go")
    return In(sleep=float(data.get("sleep", 0.0)), go=go)


class Sleepy(BaseStep[In, Out]):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    async def execute(self, inp: In) -> Out:
        async with self.rec.run():
            if inp.sleep > 0:
                await asyncio.sleep(inp.sleep)
        return Out()

    async def compensate(self, inp: In, out: Out) -> None:
        await self.rec.instant()


class WaitForGo(BaseStep[In, Out]):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    async def execute(self, inp: In) -> Out:
        await self.rec.instant()
        if inp.go:
            return Out()
        current_step().wait_for_event(WAIT_S, name="go")


class Flaky(BaseStep[In, Out]):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    async def execute(self, inp: In) -> Out:
        await self.rec.instant()
        if current_step().attempt == 1:
            raise RuntimeError("planned failure of the first attempt")
        return Out()

    async def compensate(self, inp: In, out: Out) -> None:
        await self.rec.instant()


def build(
    url: str,
    *,
    table: str,
    lease: float = 2.0,
    max_recoveries: int | None = 5,
    app_name: str = "regress-sagad",
) -> SagaOrchestrator[Any]:
    engine = create_async_engine(
        url,
        pool_size=3,
        max_overflow=2,
        connect_args={"server_settings": {"application_name": app_name}},
    )
    rec = Recorder(engine, table)
    orch: SagaOrchestrator[Any] = SagaOrchestrator(
        model_class=model_for(table),
        session_maker=async_sessionmaker(engine),
        execution_lease=lease,
        max_recoveries=max_recoveries,
    )
    seq = SagaBuilder()
    for sid in ("a", "b", "c"):
        seq.add_step(step=Sleepy(rec), step_id=sid, input_map=_input)
    orch.register("seq", seq.build())
    fork = SagaBuilder(parallel=True)
    for sid, after in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])):
        fork.add_step(step=Sleepy(rec), step_id=sid, input_map=_input, depends_on=after or None)
    orch.register("fork", fork.build())
    skew = SagaBuilder(parallel=True)
    skew.add_step(step=WaitForGo(rec), step_id="wait", input_map=_input, retry_policy=NoRetry())
    skew.add_step(
        step=Flaky(rec),
        step_id="flaky",
        input_map=_input,
        retry_policy=FixedRetry(max_attempts=2, delay=RETRY_S),
    )
    skew.add_step(step=Sleepy(rec), step_id="d", input_map=_input, depends_on=["wait", "flaky"])
    orch.register("skewwait", skew.build())
    return orch


def make(url: str) -> SagaOrchestrator[Any]:
    """The factory sagad imports: ``--app regress_app:make``."""
    raw = os.environ.get("REGRESS_MAX_RECOVERIES", "5").strip().lower()
    return build(
        url,
        table=os.environ.get("REGRESS_TABLE", "regress_saga"),
        lease=float(os.environ.get("REGRESS_LEASE", "2")),
        max_recoveries=None if raw == "none" else int(raw),
    )
