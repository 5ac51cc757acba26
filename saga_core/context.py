"""``current_step()``: what a running step knows about itself."""

from __future__ import annotations

import contextvars
import math
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Literal, NoReturn

from saga_core.errors import SagaError
from saga_core.payload import check_text
from saga_core.retry import MAX_DELAY

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["StepContext", "WaitForEvent", "current_step"]


class WaitForEvent(Exception):
    """Raised from a step's ``execute`` (or by ``current_step().wait_for_event()``) to wait
    for an external event: the saga becomes SUSPENDED until ``notify`` with its token (the
    step then runs again and sees the event) or until ``timeout`` passes, which counts as a
    failed attempt (``TIMEOUT``) under the step's retry policy. ``timeout=None`` waits
    forever. A ``name`` also lets the event be delivered by correlation, without the token:
    ``notify(aggregation_id=..., event_name=name)``. Waiting is not an attempt; in
    ``compensate`` it is an ordinary error."""

    def __init__(
        self, timeout: timedelta | float | None = None, *, name: str | None = None
    ) -> None:
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, timedelta | int | float):
                raise SagaError(f"timeout must be a timedelta or seconds, got {timeout!r}")
            if not isinstance(timeout, timedelta):
                if not math.isfinite(timeout) or timeout > MAX_DELAY.total_seconds():
                    raise SagaError(
                        f"timeout must be a finite number of seconds up to {MAX_DELAY.days} "
                        f"days (None: no timeout), got {timeout!r}"
                    )
                timeout = timedelta(seconds=timeout)
            if timeout <= timedelta(0):
                raise SagaError(f"timeout must be positive, got {timeout}")
            if timeout > MAX_DELAY:
                raise SagaError(
                    f"timeout must be at most {MAX_DELAY.days} days (None: no timeout), "
                    f"got {timeout}"
                )
        if name is not None:
            check_event_name(name, "the name of an event wait")
        self.timeout: timedelta | None = timeout
        self.name: str | None = name
        super().__init__(
            "waiting for an event"
            + ("" if name is None else f" {name!r}")
            + ("" if timeout is None else f" for at most {timeout.total_seconds():g}s")
        )


def check_event_name(name: object, what: str) -> str:
    """An event name: a non-empty string of at most 200 characters, storable.

    Raises:
        SagaInputError: otherwise (``what`` says which argument it was).
    """
    return check_text(name, what)


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
    """This step's token: hand it to whoever answers with an event (``notify``). It stays
    the same across retries of the step and worker takeovers, until a wait of the step
    consumes an event or times out, or an operator acts on the saga."""
    trace_id: str | None
    idempotency_key: str
    """Stable across retries of this step (or of its compensation) of this saga: pass it to
    downstream services to deduplicate."""
    worker: str
    _session: AsyncSession | None = field(default=None, repr=False, compare=False)

    @property
    def session_if_transactional(self) -> AsyncSession | None:
        """The step's transaction session, or ``None`` for a step that is not transactional."""
        return self._session

    @property
    def session(self) -> AsyncSession:
        """The open transaction of a transactional step (``transactional = True`` on its
        class): write the step's rows through it; it commits together with the step's
        checkpoint. Never commit or roll it back yourself.

        Raises:
            SagaError: the step is not transactional.
        """
        if self._session is None:
            raise SagaError(
                f"current_step().session is only available in a transactional step; step "
                f"{self.step_id!r} is not one: set `transactional = True` on its class (only "
                "for a step whose sole effect is writes to the saga table's database)"
            )
        return self._session

    def wait_for_event(
        self, timeout: timedelta | float | None = None, *, name: str | None = None
    ) -> NoReturn:
        """Stop this execution and wait for an event: raises :class:`WaitForEvent` (let it
        propagate out of ``execute``). ``notify(saga_id=..., token=ctx.token, event=...)``
        resumes the saga, and so does ``notify(aggregation_id=..., event_name=name, ...)``
        when the wait has a ``name``; after ``timeout`` (seconds or a timedelta) it is a
        failed attempt."""
        raise WaitForEvent(timeout, name=name)


_CURRENT: ContextVar[StepContext | None] = ContextVar("saga_current_step", default=None)


def active_step() -> StepContext | None:
    """The context of the step being run in this task, or ``None`` outside steps."""
    return _CURRENT.get()


def run_with_step(ctx: StepContext) -> contextvars.Context:
    """A copy of the current context in which ``current_step()`` returns ``ctx`` (the step's
    task runs in it)."""
    cv = contextvars.copy_context()
    cv.run(_CURRENT.set, ctx)
    return cv


def current_step() -> StepContext:
    """The context of the step being executed or compensated.

    Raises:
        SagaError: when called outside ``execute``/``compensate``.
    """
    ctx = _CURRENT.get()
    if ctx is None:
        raise SagaError("current_step() is only available inside a step's execute or compensate")
    return ctx
