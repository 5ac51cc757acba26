"""The application ``test_attack_sqlite_cache_sagad.py`` runs under a real ``sagad`` on
SQLite (``--app attacksq_app:make``; table from ``ATTACKSQ_TABLE``, marker directory from
``ATTACKSQ_DIR``).

Parallel sagas ``a -> (n, x) -> d``: ``n`` waits for an event named ``go`` when the initial
data says ``wait``; ``d`` fails for good when it says ``fail_d`` (rollback); ``a``'s
compensation fails (no retries: the saga stops FAILED) until the marker file
``<ATTACKSQ_DIR>/<saga id>`` exists. Errors and outputs carry awkward text (markup, line
separators, lone surrogates, NUL)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
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

NAMES = ("fork_ok", "fork_abort", "fork_retry", "fork_skip")
ODD = "<b>&amp;</b>\u2028é\"'\\"


class In(BaseModel):
    wait: bool = False
    fail: bool = False
    seen: list[dict[str, Any]] = []


class Out(BaseModel):
    note: str = ODD
    seen: list[dict[str, Any]] = []


class Step(BaseStep[In, Out]):
    def __init__(self, marker_dir: Path) -> None:
        self.marker_dir = marker_dir

    async def execute(self, inp: In) -> Out:
        ctx = current_step()
        if inp.wait and not inp.seen:
            ctx.wait_for_event(name="go")
        if inp.fail:
            raise RuntimeError(f"planned failure {ODD} \ud800 \x00 <script>")
        return Out(seen=inp.seen)

    async def compensate(self, inp: In, out: Out) -> None:
        ctx = current_step()
        if ctx.step_id == "a" and not (self.marker_dir / str(ctx.saga_id)).exists():
            raise RuntimeError(f"compensation refused {ODD} \udcff")


def _input(step_id: str) -> Any:
    def input_map(ctx: InputContext) -> In:
        data: dict[str, Any] = ctx.initial_data
        return In(
            wait=step_id == "n" and bool(data.get("wait")),
            fail=step_id == "d" and bool(data.get("fail_d")),
            seen=list(ctx.events) if step_id == "n" else [],
        )

    return input_map


def definition(step: Step) -> SagaDefinition:
    b = SagaBuilder(parallel=True)
    for sid, after in (("a", []), ("n", ["a"]), ("x", ["a"]), ("d", ["n", "x"])):
        b.add_step(
            step=step,
            step_id=sid,
            input_map=_input(sid),
            depends_on=after or None,
            retry_policy=None if sid == "d" else FixedRetry(max_attempts=3, delay=0.05),
            compensation_retry_policy=FixedRetry(max_attempts=1, delay=0.0),
        )
    return b.build()


def build(url: str, table: str, marker_dir: Path, lease: float = 2.0) -> SagaOrchestrator[Any]:
    class Base(DeclarativeBase):
        pass

    model = type(f"Saga_{table}", (SagaStateMixin, Base), {"__tablename__": table})
    engine = create_async_engine(url)
    orch: SagaOrchestrator[Any] = SagaOrchestrator(
        model_class=model, session_maker=async_sessionmaker(engine), execution_lease=lease
    )
    step = Step(marker_dir)
    for name in NAMES:
        orch.register(name, definition(step))
    return orch


def make(url: str) -> SagaOrchestrator[Any]:
    return build(url, os.environ["ATTACKSQ_TABLE"], Path(os.environ["ATTACKSQ_DIR"]))
