"""The crash matrix: does a saga end the same whatever moment its worker dies?

For one saga definition and input, :func:`crash_matrix` runs the saga once without a crash,
then once for every boundary that run reached, with a simulated worker crash there: before a
step starts, after its side effect but before its checkpoint, while it begins to wait for an
event, and during a compensation (after the undo, before its checkpoint). The crashed
worker writes nothing more (no checkpoint, no release); another worker takes the saga over
once its lease has expired, on the virtual clock, as a second ``sagad`` would. Each case
runs in a fresh kit with fresh steps (``build`` is called per case), so that the services your
steps talk to start from the same state every time.

Steps run at least once: after such a crash the step runs again. A saga whose steps are
idempotent enough ends as the crash-free run did (same status, same outputs);
:meth:`CrashMatrix.assert_all_match_crash_free` says which case did not. A transactional
step's effect is rolled back with the crash (its session never commits), so it is not
repeated.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from saga_core.definition import SagaDefinition
from saga_core.machine import SagaStatus
from saga_core.testing.calls import CrashPoint
from saga_core.testing.kit import SagaTestKit
from saga_core.testing.result import SagaResult

__all__ = ["CrashCase", "CrashMatrix", "crash_matrix"]

Build = Callable[[], SagaDefinition | Awaitable[SagaDefinition]]
Scenario = Callable[[SagaTestKit, uuid.UUID], Awaitable[None]]
Database = Callable[[], Awaitable[async_sessionmaker[AsyncSession]]]


async def run_to_the_end(kit: SagaTestKit, saga_id: uuid.UUID) -> None:
    """The default scenario: run the saga until it settles."""
    await kit.run_until_settled()


def _normalised(value: Any, saga_id: uuid.UUID) -> Any:
    """``value`` with the saga's id (it differs from case to case) written ``<saga_id>``."""
    if isinstance(value, str):
        return value.replace(str(saga_id), "<saga_id>").replace(saga_id.hex, "<saga_id>")
    if isinstance(value, dict):
        return {k: _normalised(v, saga_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalised(v, saga_id) for v in value]
    return value


@dataclass(frozen=True)
class CrashCase:
    """One run of the matrix: where the worker crashed (``None``: nowhere) and how the saga
    ended."""

    crash: CrashPoint | None
    result: SagaResult
    outputs: dict[str, Any]
    """The step outputs, the saga's id written ``<saga_id>`` (it differs per case)."""
    differences: tuple[str, ...] = ()
    """How it ended otherwise than the crash-free run (empty: the same)."""
    struck: bool = False
    """The crash happened (a run that went otherwise may never reach its boundary)."""

    @property
    def label(self) -> str:
        return "crash-free" if self.crash is None else f"crash {self.crash}"

    @property
    def status(self) -> SagaStatus:
        return self.result.status

    @property
    def matches(self) -> bool:
        return not self.differences


def _differences(case: CrashCase, free: CrashCase) -> tuple[str, ...]:
    out = []
    if case.status is not free.status:
        out.append(f"status {case.status.value}, crash-free {free.status.value}")
    for step_id in sorted(set(case.outputs) | set(free.outputs)):
        got, want = case.outputs.get(step_id), free.outputs.get(step_id)
        if got != want:
            out.append(f"output of {step_id}: {got!r}, crash-free {want!r}")
    return tuple(out)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), default=str)


def _runs(counts: dict[str, int], free: dict[str, int]) -> str:
    parts = []
    # In the order the steps first ran (crash-free), as the saga runs them.
    for step_id in [*free, *(s for s in counts if s not in free)]:
        n, m = counts.get(step_id, 0), free.get(step_id, 0)
        parts.append(
            f"{step_id}={n}" + ("" if n == m else f"(+{n - m})" if n > m else f"({n - m})")
        )
    return " ".join(parts) or "-"


@dataclass(frozen=True)
class CrashMatrix:
    """Every case of a crash matrix, the crash-free run first."""

    saga_name: str
    crash_free: CrashCase
    cases: tuple[CrashCase, ...]

    @property
    def failures(self) -> list[CrashCase]:
        """The cases that ended otherwise than the crash-free run."""
        return [c for c in self.cases if not c.matches]

    def report(self) -> str:
        """Per case: the final status, takeovers, ``execute`` and ``compensate`` calls per
        step (``+n``: more than crash-free), the step outputs, and how it differs from the
        crash-free run."""
        free = self.crash_free
        lines = [
            f"crash matrix of {self.saga_name!r}: crash-free run {free.status.value}; "
            f"{len(self.cases)} crash cases, {len(self.failures)} ending otherwise"
        ]
        for case in (free, *self.cases):
            r = case.result
            verdict = "" if case.crash is None else " - same" if case.matches else " - DIFFERS"
            if case.crash is not None and not case.struck:
                verdict += " (the crash point was never reached)"
            same = case.crash is not None and case.outputs == free.outputs
            lines += [
                f"  {case.label}: {r.status.value}, takeovers {r.takeovers}{verdict}",
                f"      execute {_runs(r.executions, free.result.executions)}; "
                f"compensate {_runs(r.compensations, free.result.compensations)}",
                "      outputs " + ("as crash-free" if same else _json(case.outputs)),
                *(f"      differs: {d}" for d in case.differences),
            ]
        return "\n".join(lines)

    def assert_all_match_crash_free(self) -> None:
        """Raise AssertionError (with the report) unless every case ended with the status
        and the step outputs of the crash-free run."""
        if self.failures:
            raise AssertionError(
                "steps are not idempotent enough: "
                + ", ".join(c.label for c in self.failures)
                + " ended otherwise than the crash-free run\n"
                + self.report()
            )


def default_points(reached: Iterable[CrashPoint]) -> list[CrashPoint]:
    """The first time each boundary of each step was reached, in the order reached."""
    return [p for p in reached if p.occurrence == 1]


async def crash_matrix(
    build: Build,
    initial_data: Any,
    *,
    saga_name: str = "saga",
    scenario: Scenario = run_to_the_end,
    points: Iterable[CrashPoint] | None = None,
    session_maker: Database | None = None,
    seed: int = 0,
    execution_lease: timedelta = timedelta(minutes=5),
    in_place_retry_max: timedelta = timedelta(seconds=1),
) -> CrashMatrix:
    """Run one saga crash-free, then once per crash point, each in a fresh kit.

    Args:
        build: makes the definition, with fresh steps and fresh fake services (called once
            per case; may be async).
        initial_data: the saga's input.
        saga_name: the name it is registered under.
        scenario: drives the started saga (deliver its events, act as an operator); by
            default it runs it until it settles. A crash strikes inside it, and the takeover
            happens inside it too.
        points: the crashes to try; by default every boundary the crash-free run reached
            (the first time each was reached): before each step, after each step's effect,
            while a step begins to wait, during each compensation.
        session_maker: makes a fresh application database per case, for transactional
            steps (their session).
        seed, execution_lease, in_place_retry_max: as on :class:`SagaTestKit`.

    Must run on virtual time (``saga_core.testing.run`` or ``@virtual_time``).
    """

    async def one(crash: CrashPoint | None) -> tuple[CrashCase, list[CrashPoint]]:
        definition = build()
        if inspect.isawaitable(definition):
            definition = await definition
        kit = SagaTestKit(
            seed=seed,
            execution_lease=execution_lease,
            in_place_retry_max=in_place_retry_max,
            session_maker=None if session_maker is None else await session_maker(),
        )
        kit.register(saga_name, definition)
        if crash is not None:
            kit.crash_at(crash)
        saga_id = await kit.start(saga_name, initial_data, aggregation_id="crash-matrix")
        await scenario(kit, saga_id)
        result = await kit.result(saga_id)
        outputs = _normalised(result.outputs, saga_id)
        case = CrashCase(crash, result, outputs, struck=bool(kit.crashes))
        return case, list(kit.calls.reached)

    free, reached = await one(None)
    cases = []
    for point in default_points(reached) if points is None else points:
        case, _ = await one(point)
        cases.append(
            CrashCase(point, case.result, case.outputs, _differences(case, free), case.struck)
        )
    return CrashMatrix(saga_name, free, tuple(cases))
