"""The benchmark's sagas: three trivial steps (the issue's reference workload) and a
sleeping variant for the many-sagas-in-flight memory test."""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import BaseStep, InputContext, SagaBuilder, SagaDefinition, SagaOrchestrator


class Counter(BaseModel):
    n: int


class Increment(BaseStep[Counter, Counter]):
    async def execute(self, inp: Counter) -> Counter:
        return Counter(n=inp.n + 1)

    async def compensate(self, inp: Counter, out: Counter) -> None:
        return None


class Sleep(BaseStep[Counter, Counter]):
    async def execute(self, inp: Counter) -> Counter:
        await asyncio.sleep(float(os.environ.get("BENCH_SLEEP", "30")))
        return Counter(n=inp.n + 1)


def _first(ctx: InputContext) -> Counter:
    return Counter(n=int(ctx.initial_data.get("n", 0)))


def _same(c: Counter) -> Counter:
    return c


def three_steps() -> SagaDefinition:
    b = SagaBuilder()
    a = b.add_step(step=Increment(), input_map=_first, step_id="a")
    s = b.add_step(step=Increment(), input_map=_same, depends_on=a, step_id="b")
    b.add_step(step=Increment(), input_map=_same, depends_on=s, step_id="c")
    return b.build()


def sleeper() -> SagaDefinition:
    b = SagaBuilder()
    b.add_step(step=Sleep(), input_map=_first, step_id="sleep")
    return b.build()


def make_orchestrator(database_url: str) -> SagaOrchestrator:  # type: ignore[type-arg]
    pool = int(os.environ.get("BENCH_POOL", "4"))
    kwargs = {"pool_size": pool, "max_overflow": 0} if database_url.startswith("postgresql") else {}
    engine = create_async_engine(database_url, **kwargs)
    orch: SagaOrchestrator = SagaOrchestrator(session_maker=async_sessionmaker(engine))  # type: ignore[type-arg]
    orch.register("bench3", three_steps())
    orch.register("sleeper", sleeper())
    return orch
