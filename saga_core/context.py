"""``current_step()``: what a running step knows about itself."""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from saga_core.errors import SagaError

__all__ = ["StepContext", "current_step"]


@dataclass(frozen=True)
class StepContext:
    """Facts about the execution in progress, from ``current_step()``."""

    saga_id: uuid.UUID
    saga_name: str
    aggregation_id: str
    step_id: str
    phase: Literal["execute", "compensate"]
    attempt: int
    """The first execution is 1."""
    token: uuid.UUID
    """The saga's current fencing token (also its callback token for ``notify``)."""
    trace_id: str | None
    idempotency_key: str
    """Stable across retries of this step (or of its compensation) of this saga: pass it to
    downstream services to deduplicate."""
    worker: str


_CURRENT: ContextVar[StepContext | None] = ContextVar("saga_current_step", default=None)


def current_step() -> StepContext:
    """The context of the step being executed or compensated.

    Raises:
        SagaError: when called outside ``execute``/``compensate``.
    """
    ctx = _CURRENT.get()
    if ctx is None:
        raise SagaError("current_step() is only available inside a step's execute or compensate")
    return ctx
