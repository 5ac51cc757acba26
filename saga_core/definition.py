"""Saga definitions: typed steps, the builder, and the immutable definition it produces.

Every mistake in a definition is reported by ``SagaBuilder.build()`` (or ``add_step``), never
while a saga runs.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Generic, TypeVar, get_args, get_origin

from pydantic import BaseModel

from saga_core.errors import SagaDefinitionError
from saga_core.retry import NoRetry, RetryPolicy, default_compensation_policy
from saga_core.typecheck import InputContext, check_input_map, reject_cycles, takes_context

__all__ = ["BaseStep", "InputContext", "SagaBuilder", "SagaDefinition", "StepRef", "StepSpec"]

InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)


def _model_arg(value: Any) -> type[BaseModel] | None:
    if isinstance(value, type) and issubclass(value, BaseModel):
        return value
    return None


class BaseStep(Generic[InT, OutT]):
    """A step of a saga: ``execute`` does the work, ``compensate`` undoes it.

    Subclass with the input and output pydantic models as generic arguments::

        class ChargeCard(BaseStep[ChargeIn, ChargeOut]):
            async def execute(self, inp: ChargeIn) -> ChargeOut: ...
            async def compensate(self, inp: ChargeIn, out: ChargeOut) -> None: ...

    Steps are created once and reused by every saga: keep clients on them, never per-saga
    state. A step that does not override ``compensate`` has nothing to undo.
    """

    input_model: ClassVar[type[BaseModel] | None] = None
    output_model: ClassVar[type[BaseModel] | None] = None
    transactional: ClassVar[bool] = False
    """``True``: the step's only effect is writes to the saga table's database through
    ``current_step().session``, whose transaction also commits the step's checkpoint (see
    "Transactional steps" in docs/concepts.md)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, BaseStep):
                args = get_args(base)
                if len(args) == 2:
                    in_model, out_model = _model_arg(args[0]), _model_arg(args[1])
                    if in_model is not None:
                        cls.input_model = in_model
                    if out_model is not None:
                        cls.output_model = out_model

    async def execute(self, inp: InT) -> OutT:
        """Do the step's work and return its output."""
        raise NotImplementedError(f"{type(self).__name__}.execute is not implemented")

    async def compensate(self, inp: InT, out: OutT) -> None:
        """Undo what ``execute`` did. The default does nothing (nothing to undo)."""
        return None

    @classmethod
    def has_compensation(cls) -> bool:
        return cls.compensate is not BaseStep.compensate

    @classmethod
    def resolve_models(cls) -> tuple[type[BaseModel], type[BaseModel]]:
        """The input and output models, from the generic arguments or ``execute``'s
        annotations."""
        in_model, out_model = cls.input_model, cls.output_model
        if in_model is None or out_model is None:
            try:
                hints = typing.get_type_hints(cls.execute)
            except Exception:  # unresolvable annotations: report below
                hints = {}
            params = [p for p in inspect.signature(cls.execute).parameters if p != "self"]
            if in_model is None and params:
                in_model = _model_arg(hints.get(params[0]))
            if out_model is None:
                out_model = _model_arg(hints.get("return"))
        if in_model is None or out_model is None:
            raise SagaDefinitionError(
                f"step {cls.__name__}: cannot tell its input/output models; declare them as "
                f"`class {cls.__name__}(BaseStep[InModel, OutModel])` with pydantic models"
            )
        return in_model, out_model


@dataclass(frozen=True)
class StepRef:
    """A handle to a step added to a builder, used for ``depends_on``."""

    step_id: str
    index: int
    output_model: type[BaseModel]
    _builder_id: int = field(repr=False, compare=False)


@dataclass(frozen=True)
class StepSpec:
    """One step of a built definition."""

    step_id: str
    index: int
    step: BaseStep[Any, Any]
    input_map: Callable[[Any], Any]
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    timeout: timedelta | None
    retry_policy: RetryPolicy
    depends_on: str | None
    """The first (or only) step this one depends on."""
    compensation_timeout: timedelta | None
    compensation_retry_policy: RetryPolicy
    has_compensation: bool
    dependencies: tuple[str, ...] = ()
    """Every step this one depends on, in the order given; their outputs are the
    ``input_map``'s arguments. In a parallel saga, the steps it waits for."""
    context_input: bool = False
    """Parallel sagas: the ``input_map`` takes an :class:`InputContext` although the step has
    ``depends_on`` (its one parameter is annotated so): it gets the context, not outputs."""
    transactional: bool = False
    """``execute`` and ``compensate`` run in a transaction that commits their checkpoint."""

    @property
    def step_class(self) -> str:
        return type(self.step).__name__


@dataclass(frozen=True)
class SagaDefinition:
    """An immutable saga definition; create it with :class:`SagaBuilder`."""

    steps: tuple[StepSpec, ...]
    compensate_on_failure: bool
    fingerprint: str
    parallel: bool = False
    """Steps run as soon as the steps they depend on are done, concurrently (a graph);
    otherwise one after another in the order they were added."""

    def __len__(self) -> int:
        return len(self.steps)

    def step(self, step_id: str) -> StepSpec:
        for spec in self.steps:
            if spec.step_id == step_id:
                return spec
        raise KeyError(step_id)

    @property
    def step_ids(self) -> tuple[str, ...]:
        return tuple(s.step_id for s in self.steps)


def _to_timeout(value: timedelta | float | None, what: str) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise SagaDefinitionError(f"{what} must be a timedelta or seconds, got {value!r}")
    if not isinstance(value, timedelta) and not math.isfinite(value):
        raise SagaDefinitionError(f"{what} must be a finite number of seconds, got {value!r}")
    delta = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if delta <= timedelta(0):
        raise SagaDefinitionError(f"{what} must be positive, got {delta}")
    return delta


# Unique per builder (``id()`` is reused once a builder is garbage collected, which let a
# StepRef from a discarded builder pass for one of a new builder's).
_BUILDER_IDS = itertools.count(1)

_STEP_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


@dataclass
class _Pending:
    step_id: str
    step: BaseStep[Any, Any]
    input_map: Any
    timeout: timedelta | None
    retry_policy: RetryPolicy
    depends_on: list[StepRef | str]
    compensation_timeout: timedelta | None
    compensation_retry_policy: RetryPolicy
    input_model: type[BaseModel]
    output_model: type[BaseModel]


class SagaBuilder:
    """Builds a :class:`SagaDefinition` step by step.

    Args:
        compensate_on_failure: when a step exhausts its retries, roll back the completed
            steps (newest first). With ``False`` the saga stops in ``FAILED`` for an operator.
        parallel: run the saga as a graph: every step starts as soon as all the steps in
            its ``depends_on`` are done (a step without ``depends_on`` at once), branches
            running concurrently under the saga's one lease. Without it steps run one after
            another in the order they were added.
    """

    def __init__(self, *, compensate_on_failure: bool = True, parallel: bool = False) -> None:
        self.compensate_on_failure = bool(compensate_on_failure)
        self.parallel = bool(parallel)
        self._pending: list[_Pending] = []
        self._errors: list[str] = []
        self._id = next(_BUILDER_IDS)

    def add_step(
        self,
        *,
        step: BaseStep[Any, Any],
        input_map: Callable[[Any], Any],
        timeout: timedelta | float | None = None,
        retry_policy: RetryPolicy | None = None,
        depends_on: StepRef | str | Sequence[StepRef | str] | None = None,
        step_id: str | None = None,
        compensation_timeout: timedelta | float | None = None,
        compensation_retry_policy: RetryPolicy | None = None,
    ) -> StepRef:
        """Add a step; steps run in the order they are added (in a parallel saga, once the
        steps it depends on are done).

        Args:
            step: the step instance (shared by every saga of this definition).
            input_map: builds the step's input. Without ``depends_on`` it receives an
                :class:`InputContext`; with ``depends_on`` the output model of that step
                (with several, one argument per step, in the order given). In a parallel saga
                an ``input_map`` whose one parameter is annotated ``InputContext`` gets the
                context instead (to wait for steps without taking their outputs). It returns the step's input model or a dict validated into it.
            timeout: cancel an execution after this long; counts as a failed attempt.
            retry_policy: how often and when to run a failed execution again (default
                :class:`NoRetry`).
            depends_on: the step (a ``StepRef``, or a step id) whose output feeds
                ``input_map``; several steps need ``SagaBuilder(parallel=True)``.
            step_id: unique id within the saga; defaults to the step's class name.
            compensation_timeout: like ``timeout``, for ``compensate``.
            compensation_retry_policy: retry policy for ``compensate`` (default: 5 tries with
                exponential backoff).
        """
        if not isinstance(step, BaseStep):
            raise SagaDefinitionError(f"step must be a BaseStep instance, got {step!r}")
        sid = step_id if step_id is not None else type(step).__name__
        if not isinstance(sid, str) or not _STEP_ID.match(sid):
            raise SagaDefinitionError(
                f"step_id {sid!r} is invalid: use 1-100 letters, digits, '_', '.', ':' or '-'"
            )
        in_model, out_model = type(step).resolve_models()
        deps: list[StepRef | str]
        if depends_on is None:
            deps = []
        elif isinstance(depends_on, StepRef | str):
            deps = [depends_on]
        elif isinstance(depends_on, Sequence):
            deps = list(depends_on)
            if not deps or not all(isinstance(d, StepRef | str) for d in deps):
                raise SagaDefinitionError(
                    f"step {sid!r}: depends_on takes StepRefs or step ids, got {depends_on!r}"
                )
        else:
            raise SagaDefinitionError(
                f"step {sid!r}: depends_on must be a StepRef, a step id or a list of them, "
                f"got {depends_on!r}"
            )
        if len(deps) > 1 and not self.parallel:
            raise SagaDefinitionError(
                f"step {sid!r}: depends_on several steps needs SagaBuilder(parallel=True); "
                "a sequential saga runs its steps one after another in the order they were "
                "added"
            )
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise SagaDefinitionError(f"step {sid!r}: retry_policy must be a RetryPolicy")
        if compensation_retry_policy is not None and not isinstance(
            compensation_retry_policy, RetryPolicy
        ):
            raise SagaDefinitionError(
                f"step {sid!r}: compensation_retry_policy must be a RetryPolicy"
            )
        self._pending.append(
            _Pending(
                step_id=sid,
                step=step,
                input_map=input_map,
                timeout=_to_timeout(timeout, f"step {sid!r}: timeout"),
                retry_policy=retry_policy or NoRetry(),
                depends_on=deps,
                compensation_timeout=_to_timeout(
                    compensation_timeout, f"step {sid!r}: compensation_timeout"
                ),
                compensation_retry_policy=compensation_retry_policy
                or default_compensation_policy(),
                input_model=in_model,
                output_model=out_model,
            )
        )
        return StepRef(sid, len(self._pending) - 1, out_model, self._id)

    def build(self) -> SagaDefinition:
        """Check everything and return the immutable definition.

        Raises:
            SagaDefinitionError: empty saga, duplicate step ids, a non-callable input_map,
                a depends_on from another builder.
            TypeValidationError: input_map annotations that do not fit.
        """
        if not self._pending:
            raise SagaDefinitionError(
                "a saga needs at least one step; call add_step() before build()"
            )
        seen: set[str] = set()
        by_id: dict[str, int] = {}
        for index, p in enumerate(self._pending):
            if p.step_id in seen:
                raise SagaDefinitionError(
                    f"duplicate step_id {p.step_id!r}: give each step a unique step_id="
                )
            seen.add(p.step_id)
            by_id[p.step_id] = index
        resolved = [self._resolve_deps(index, p, by_id) for index, p in enumerate(self._pending)]
        if self.parallel:
            reject_cycles([p.step_id for p in self._pending], resolved)
        specs: list[StepSpec] = []
        for index, p in enumerate(self._pending):
            if not callable(p.input_map):
                raise SagaDefinitionError(f"step {p.step_id!r}: input_map must be callable")
            dep_idx = resolved[index]
            context_input = self.parallel and bool(dep_idx) and takes_context(p.input_map)
            expected = (
                [InputContext]
                if context_input or not dep_idx
                else [self._pending[d].output_model for d in dep_idx]
            )
            check_input_map(p.step_id, p.input_map, expected, p.input_model)
            dep_ids = tuple(self._pending[d].step_id for d in dep_idx)
            transactional = getattr(p.step, "transactional", False)
            if not isinstance(transactional, bool):
                raise SagaDefinitionError(
                    f"step {p.step_id!r}: {type(p.step).__name__}.transactional must be True or "
                    f"False, got {transactional!r}"
                )
            if transactional and self.parallel:
                raise SagaDefinitionError(
                    f"step {p.step_id!r}: transactional steps are not supported in a parallel "
                    "saga yet (its branches share one lease and run concurrently); use a "
                    "sequential SagaBuilder for sagas with transactional steps"
                )
            specs.append(
                StepSpec(
                    step_id=p.step_id,
                    index=index,
                    step=p.step,
                    input_map=p.input_map,
                    input_model=p.input_model,
                    output_model=p.output_model,
                    timeout=p.timeout,
                    retry_policy=p.retry_policy,
                    depends_on=dep_ids[0] if dep_ids else None,
                    compensation_timeout=p.compensation_timeout,
                    compensation_retry_policy=p.compensation_retry_policy,
                    has_compensation=type(p.step).has_compensation(),
                    dependencies=dep_ids,
                    context_input=context_input,
                    transactional=transactional,
                )
            )
        return SagaDefinition(
            steps=tuple(specs),
            compensate_on_failure=self.compensate_on_failure,
            fingerprint=_fingerprint(specs, self.compensate_on_failure, self.parallel),
            parallel=self.parallel,
        )

    def _resolve_deps(self, index: int, p: _Pending, by_id: dict[str, int]) -> list[int]:
        """Indices of the steps ``p`` depends on, checked."""
        out: list[int] = []
        for dep in p.depends_on:
            if isinstance(dep, StepRef):
                if dep._builder_id != self._id:
                    raise SagaDefinitionError(
                        f"step {p.step_id!r}: depends_on {dep.step_id!r} comes from "
                        "another SagaBuilder"
                    )
                target = dep.index
            else:
                if dep not in by_id:
                    known = ", ".join(by_id)
                    raise SagaDefinitionError(
                        f"step {p.step_id!r}: depends_on names an unknown step {dep!r} "
                        f"(steps: {known})"
                    )
                target = by_id[dep]
            if target == index:
                raise SagaDefinitionError(f"step {p.step_id!r}: a step cannot depend on itself")
            if not self.parallel and target > index:
                raise SagaDefinitionError(
                    f"step {p.step_id!r}: depends_on must name an earlier step"
                )
            if target in out:
                raise SagaDefinitionError(
                    f"step {p.step_id!r}: depends_on names {self._pending[target].step_id!r} twice"
                )
            out.append(target)
        return out


def _fingerprint(specs: list[StepSpec], compensate_on_failure: bool, parallel: bool) -> str:
    parts: dict[str, Any] = {
        "compensate_on_failure": compensate_on_failure,
        "steps": [
            {
                "id": s.step_id,
                "class": f"{type(s.step).__module__}.{type(s.step).__qualname__}",
                "in": s.input_model.model_json_schema(),
                "out": s.output_model.model_json_schema(),
                "depends_on": s.depends_on,
                "compensates": s.has_compensation,
            }
            for s in specs
        ],
    }
    if parallel:  # sequential definitions keep the fingerprints they always had
        parts["parallel"] = True
        for part, spec in zip(parts["steps"], specs, strict=True):
            part["after"] = list(spec.dependencies)
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
