"""The application the fault tests run under ``sagad --app chaos_app:make``.

Every step execution and compensation records its interval in ``<table>_runs`` (the
acceptance tests' :class:`app_sagas.Recorder`), on its own engine straight to the database
(application_name ``chaos-recorder``) so that the faults aimed at the saga machinery (its
connections are named ``chaos-sagad``; a TCP proxy may sit in front of them) do not hit it.

Sagas:

- ``chaos``: steps a, b, c. ``initial_data["plan"]`` maps a step id to how it fails:
  ``n`` (an int) fails its first n attempts (it is retried up to 4 attempts, so n <= 3
  recovers), ``"always"`` fails for good: the completed steps are compensated, newest first.
  ``initial_data["sleep"]`` is how long every step takes.
- ``fork``: a parallel saga, a -> (b, c) -> d: b and c run side by side; ``plan`` as for
  ``chaos``.
- ``poison``: step a records and succeeds; step b records, then SIGKILLs its own process
  (a step that brings its worker down every time).
- ``evfork``: a parallel saga whose branches wait for external events (see
  :mod:`chaos_events`): a -> (t, n, w) -> d.

Environment read by :func:`make`: ``CHAOS_TABLE``, ``CHAOS_LEASE`` (seconds, default 2),
``CHAOS_MAX_RECOVERIES`` (default 5; ``none``: unlimited), ``CHAOS_RECORD_URL``,
``CHAOS_POOL`` (the saga engine's ``pool_size,max_overflow``, default ``3,2``; the recorder's
pool has ``pool_size`` connections).
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import chaos_events
from app_sagas import Recorder, model_for
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import (
    BaseStep,
    FixedRetry,
    InputContext,
    SagaBuilder,
    SagaOrchestrator,
    current_step,
)

SAGAD_APP_NAME = "chaos-sagad"
RECORDER_APP_NAME = "chaos-recorder"
DELIVERER_APP_NAME = "chaos-deliverer"


class ChaosIn(BaseModel):
    sleep: float = 0.0
    fail: int | str = 0


class ChaosOut(BaseModel):
    ok: bool = True


class ChaosStep(BaseStep[ChaosIn, ChaosOut]):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    async def execute(self, inp: ChaosIn) -> ChaosOut:
        async with self.rec.run():
            if inp.sleep > 0:
                await asyncio.sleep(inp.sleep)
            attempt = current_step().attempt
            if inp.fail == "always" or (isinstance(inp.fail, int) and attempt <= inp.fail):
                raise RuntimeError(f"planned failure (attempt {attempt})")
        return ChaosOut()

    async def compensate(self, inp: ChaosIn, out: ChaosOut) -> None:
        async with self.rec.run():
            if inp.sleep > 0:
                await asyncio.sleep(inp.sleep)


class PoisonStep(BaseStep[ChaosIn, ChaosOut]):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    async def execute(self, inp: ChaosIn) -> ChaosOut:
        await self.rec.instant()
        if current_step().step_id == "b":
            os.kill(os.getpid(), signal.SIGKILL)
        return ChaosOut()


def _input(step_id: str) -> Any:
    def input_map(ctx: InputContext) -> ChaosIn:
        data: dict[str, Any] = ctx.initial_data
        plan: dict[str, Any] = data.get("plan") or {}
        return ChaosIn(sleep=float(data.get("sleep", 0.0)), fail=plan.get(step_id, 0))

    return input_map


def build(
    url: str,
    *,
    table: str,
    lease: float = 2.0,
    max_recoveries: int | None = 5,
    record_url: str | None = None,
    app_name: str = SAGAD_APP_NAME,
    pool: tuple[int, int] = (3, 2),
) -> SagaOrchestrator[Any]:
    # Small pools: many of these processes share one server (max_connections) with others.
    engine = create_async_engine(
        url,
        pool_size=pool[0],
        max_overflow=pool[1],
        pool_timeout=120,
        connect_args={"server_settings": {"application_name": app_name}},
    )
    rec_engine = create_async_engine(
        record_url or url,
        pool_size=pool[0],
        max_overflow=0,
        pool_timeout=120,
        connect_args={"server_settings": {"application_name": RECORDER_APP_NAME}},
    )
    rec = Recorder(rec_engine, table)
    orch: SagaOrchestrator[Any] = SagaOrchestrator(
        model_class=model_for(table),
        session_maker=async_sessionmaker(engine),
        execution_lease=lease,
        max_recoveries=max_recoveries,
    )
    chaos = SagaBuilder()
    for sid in ("a", "b", "c"):
        chaos.add_step(
            step=ChaosStep(rec),
            step_id=sid,
            input_map=_input(sid),
            retry_policy=FixedRetry(max_attempts=4, delay=0.05),
            compensation_retry_policy=FixedRetry(max_attempts=10, delay=0.05),
        )
    orch.register("chaos", chaos.build())
    fork = SagaBuilder(parallel=True)
    for sid, after in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])):
        fork.add_step(
            step=ChaosStep(rec),
            step_id=sid,
            input_map=_input(sid),  # annotated InputContext: reads the plan, waits for `after`
            depends_on=after or None,
            retry_policy=FixedRetry(max_attempts=4, delay=0.05),
            compensation_retry_policy=FixedRetry(max_attempts=10, delay=0.05),
        )
    orch.register("fork", fork.build())
    poison = SagaBuilder()
    for sid in ("a", "b"):
        poison.add_step(step=PoisonStep(rec), step_id=sid, input_map=_input(sid))
    orch.register("poison", poison.build())
    # evfork's steps deliver events from inside the worker too, on an engine of their own
    # (never a target of the faults: connections named chaos-deliverer).
    deliverer: SagaOrchestrator[Any] = SagaOrchestrator(
        model_class=orch.engine.model_class,
        session_maker=async_sessionmaker(
            create_async_engine(
                url,
                pool_size=1,
                max_overflow=1,
                pool_timeout=120,
                connect_args={"server_settings": {"application_name": DELIVERER_APP_NAME}},
            )
        ),
        execution_lease=lease,
    )
    orch.register("evfork", chaos_events.evfork(rec, table, deliverer))
    return orch


def make(url: str) -> SagaOrchestrator[Any]:
    """The factory sagad imports: ``--app chaos_app:make``."""
    raw = os.environ.get("CHAOS_MAX_RECOVERIES", "5").strip().lower()
    size, overflow = (int(x) for x in os.environ.get("CHAOS_POOL", "3,2").split(","))
    return build(
        url,
        table=os.environ.get("CHAOS_TABLE", "chaos_saga"),
        lease=float(os.environ.get("CHAOS_LEASE", "2")),
        max_recoveries=None if raw == "none" else int(raw),
        record_url=os.environ.get("CHAOS_RECORD_URL") or None,
        pool=(size, overflow),
    )
