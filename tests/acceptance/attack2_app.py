"""The application of ``test_attack2_kill9_batches``: ``sagad --app attack2_app:make``.

Saga ``hostile``: steps a, b, c, each returning data the checkpoint's JSON document must
carry faithfully (markup, quotes, non-ASCII, line separators, large and small numbers); a
saga started with ``{"big": true}`` also returns an integer beyond 64 bits, which orjson
refuses: every batch holding one goes down the parallel-array path. Each step first sleeps
``sleep`` seconds (initial data). Environment:
``ACCEPT_TABLE``, ``ACCEPT_LEASE`` (as ``app_sagas``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from app_sagas import model_for
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import BaseStep, InputContext, SagaBuilder, SagaOrchestrator, current_step


class In(BaseModel):
    i: int
    big: bool = False
    sleep: float = 0.0


class Out(BaseModel):
    data: dict[str, Any]


def expected(step_id: str, i: int, big: bool) -> dict[str, Any]:
    """What step ``step_id`` of saga number ``i`` returns (as stored: JSON data)."""
    data: dict[str, Any] = {
        "step": step_id,
        "i": i,
        "markup": f"<script>alert('{i}')</script> & \"{step_id}\" \\ /",
        "text": "漢字 \u00e9 \U0001f600 \u2028\u2029 \t\n",
        "numbers": [i * 0.1, -(2**63), 2**64 - 1, 1e-07, 123456789.125],
        "nested": {"k": [{"x": [i, {"y": None}]}]},
        "looks_like_sql": "'); DROP TABLE x; --",
        "null_text": "null \\u0000",
    }
    if big:
        data["big"] = 2**70 + i
    return data


class Hostile(BaseStep[In, Out]):
    async def execute(self, inp: In) -> Out:
        if inp.sleep:
            await asyncio.sleep(inp.sleep)  # the step's own work
        return Out(data=expected(current_step().step_id, inp.i, inp.big))


def _input(ctx: InputContext) -> In:
    data = ctx.initial_data
    return In(i=int(data["i"]), big=bool(data.get("big")), sleep=float(data.get("sleep", 0)))


def build(url: str, *, table: str, lease: float = 2.0) -> SagaOrchestrator[Any]:
    engine = create_async_engine(url, pool_size=4, max_overflow=2)
    orch: SagaOrchestrator[Any] = SagaOrchestrator(
        model_class=model_for(table),
        session_maker=async_sessionmaker(engine),
        execution_lease=lease,
    )
    b = SagaBuilder()
    for sid in ("a", "b", "c"):
        b.add_step(step=Hostile(), step_id=sid, input_map=_input)
    orch.register("hostile", b.build())
    return orch


def make(url: str) -> SagaOrchestrator[Any]:
    """The factory sagad imports: ``--app attack2_app:make``."""
    return build(
        url,
        table=os.environ.get("ACCEPT_TABLE", "accept_saga"),
        lease=float(os.environ.get("ACCEPT_LEASE", "2")),
    )
