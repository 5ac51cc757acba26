"""What the kit learns from the steps themselves: each registered step instance is wrapped so
that every call of its ``execute``/``compensate`` is counted, every boundary a crash can hit
is noted as it is reached, and a simulated worker crash can be set off at one of them.

The wrapper is an instance of a subclass of the step's own class, carrying the same class
name (history records ``step_class`` as in production); it calls the original instance, so
the step's own ``self`` is untouched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from saga_core.context import WaitForEvent, current_step
from saga_core.definition import BaseStep, SagaDefinition

__all__ = ["Boundary", "CrashPoint", "StepCalls", "instrument"]


class Boundary(StrEnum):
    """Where in a step's life a simulated crash strikes."""

    BEFORE = "before"
    """Before the step's ``execute`` starts (nothing of it has run)."""
    AFTER = "after"
    """``execute`` returned: its side effect is done, the checkpoint recording it is lost."""
    WAITING = "waiting"
    """The step began to wait for an event: the write that suspends the saga is lost."""
    COMPENSATING = "compensating"
    """``compensate`` returned: the undo is done, the checkpoint recording it is lost."""


_LABELS = {
    Boundary.BEFORE: "before {step} starts",
    Boundary.AFTER: "after {step}'s effect, before its checkpoint",
    Boundary.WAITING: "while {step} begins to wait for an event",
    Boundary.COMPENSATING: "during the compensation of {step}, before its checkpoint",
}


@dataclass(frozen=True)
class CrashPoint:
    """A simulated worker crash: the ``occurrence``-th time (counted from when the crash is
    armed) that a saga of the kit reaches ``boundary`` of step ``step_id``, the worker dies
    there (no further write, no release)."""

    boundary: Boundary
    step_id: str
    occurrence: int = 1

    def __str__(self) -> str:
        text = _LABELS[self.boundary].format(step=self.step_id)
        return text if self.occurrence == 1 else f"{text} (time {self.occurrence})"


class StepCalls:
    """Counts of ``execute``/``compensate`` calls per saga and step, the boundaries reached,
    and the armed crash (see :class:`CrashPoint`, :meth:`arm`)."""

    def __init__(self) -> None:
        self.executions: Counter[tuple[uuid.UUID, str]] = Counter()
        self.compensations: Counter[tuple[uuid.UUID, str]] = Counter()
        self.reached: list[CrashPoint] = []
        """Every boundary reached, in order (``occurrence`` counts per boundary and step)."""
        self._armed: CrashPoint | None = None
        self._armed_seen = 0
        self.on_crash: Callable[[CrashPoint], None] | None = None
        """Called (once) when the armed crash strikes; the step then never returns."""
        self._seen: Counter[tuple[Boundary, str]] = Counter()

    def of(self, saga_id: uuid.UUID) -> tuple[dict[str, int], dict[str, int]]:
        """(execute calls, compensate calls) per step id of one saga."""
        ex = {s: n for (sid, s), n in self.executions.items() if sid == saga_id}
        comp = {s: n for (sid, s), n in self.compensations.items() if sid == saga_id}
        return ex, comp

    def arm(self, point: CrashPoint | None) -> None:
        """Crash at ``point``, its ``occurrence`` counted from now (``None``: disarm)."""
        self._armed = point
        self._armed_seen = 0

    @property
    def armed(self) -> CrashPoint | None:
        return self._armed

    async def _boundary(self, boundary: Boundary, step_id: str) -> None:
        self._seen[(boundary, step_id)] += 1
        self.reached.append(CrashPoint(boundary, step_id, self._seen[(boundary, step_id)]))
        point = self._armed
        if point is None or (point.boundary, point.step_id) != (boundary, step_id):
            return
        self._armed_seen += 1
        if self._armed_seen < point.occurrence:
            return
        self._armed = None
        if self.on_crash is not None:
            self.on_crash(point)
        # The process is gone: this task never gets further (the kit cancels it).
        await asyncio.get_running_loop().create_future()

    async def execute(self, step_id: str, step: BaseStep[Any, Any], inp: Any) -> Any:
        await self._boundary(Boundary.BEFORE, step_id)
        self.executions[(current_step().saga_id, step_id)] += 1
        try:
            out = await step.execute(inp)
        except WaitForEvent:
            await self._boundary(Boundary.WAITING, step_id)
            raise
        await self._boundary(Boundary.AFTER, step_id)
        return out

    async def compensate(self, step_id: str, step: BaseStep[Any, Any], inp: Any, out: Any) -> None:
        self.compensations[(current_step().saga_id, step_id)] += 1
        await step.compensate(inp, out)
        await self._boundary(Boundary.COMPENSATING, step_id)


async def _execute(self: Any, inp: Any) -> Any:
    calls: StepCalls = self.__dict__["_kit_calls"]
    return await calls.execute(self.__dict__["_kit_step_id"], self.__dict__["_kit_step"], inp)


async def _compensate(self: Any, inp: Any, out: Any) -> None:
    calls: StepCalls = self.__dict__["_kit_calls"]
    step = self.__dict__["_kit_step"]
    await calls.compensate(self.__dict__["_kit_step_id"], step, inp, out)


_CLASSES: weakref.WeakKeyDictionary[type[Any], type[BaseStep[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _counted_class(cls: type[BaseStep[Any, Any]]) -> type[BaseStep[Any, Any]]:
    known = _CLASSES.get(cls)
    if known is not None:
        return known
    namespace: dict[str, Any] = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "execute": _execute,
    }
    if cls.has_compensation():
        namespace["compensate"] = _compensate
    counted: type[BaseStep[Any, Any]] = type(cls.__name__, (cls,), namespace)
    _CLASSES[cls] = counted
    return counted


def _counted(step: BaseStep[Any, Any], step_id: str, calls: StepCalls) -> BaseStep[Any, Any]:
    proxy = object.__new__(_counted_class(type(step)))
    proxy.__dict__.update(_kit_step=step, _kit_step_id=step_id, _kit_calls=calls)
    return proxy


def instrument(definition: SagaDefinition, calls: StepCalls) -> SagaDefinition:
    """``definition`` with every step wrapped to report to ``calls`` (same fingerprint)."""
    steps = tuple(
        dataclasses.replace(spec, step=_counted(spec.step, spec.step_id, calls))
        for spec in definition.steps
    )
    return dataclasses.replace(definition, steps=steps)
