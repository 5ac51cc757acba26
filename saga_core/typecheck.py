"""Checks of a definition made at build time: the dependency graph of a parallel saga has no
cycle, and each ``input_map``'s annotations fit the models it receives and returns."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict

from saga_core.errors import SagaDefinitionError, TypeValidationError

__all__ = ["InputContext", "check_input_map", "reject_cycles", "takes_context"]


class InputContext(BaseModel):
    """What the ``input_map`` of a step without ``depends_on`` receives."""

    model_config = ConfigDict(frozen=True)

    initial_data: dict[str, Any]
    """The data given to ``start``, decoded from JSON."""
    step_outputs: dict[str, dict[str, Any]]
    """Outputs of the steps completed so far, as JSON objects, by step id."""
    events: list[dict[str, Any]] = []
    """Every event delivered by ``notify``, oldest first."""
    latest_event: dict[str, Any] | None = None
    """The most recent event, or ``None``."""


def reject_cycles(step_ids: list[str], deps: list[list[int]]) -> None:
    """Raise when the dependencies of a parallel saga form a cycle, naming one."""
    state = [0] * len(step_ids)  # 0 unvisited, 1 on the current path, 2 done
    path: list[int] = []

    def visit(i: int) -> None:
        state[i] = 1
        path.append(i)
        for d in deps[i]:
            if state[d] == 1:
                cycle = [*path[path.index(d) :], d]
                shown = " -> ".join(step_ids[j] for j in reversed(cycle))
                raise SagaDefinitionError(
                    f"depends_on forms a cycle: {shown}; a parallel saga must be a graph "
                    "without cycles"
                )
            if state[d] == 0:
                visit(d)
        path.pop()
        state[i] = 2

    for i in range(len(step_ids)):
        if state[i] == 0:
            visit(i)


def _resolve_hints(fn: Callable[..., Any]) -> dict[str, Any] | None:
    """Annotations of ``fn`` resolved from its globals and closure; None when they cannot be."""
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)  # noqa: B004
    localns: dict[str, Any] = {}
    code_fn = getattr(target, "__func__", target)
    closure = getattr(code_fn, "__closure__", None)
    code = getattr(code_fn, "__code__", None)
    if closure and code is not None:
        for name, cell in zip(code.co_freevars, closure, strict=False):
            try:
                localns[name] = cell.cell_contents
            except ValueError:  # empty cell
                continue
    try:
        return typing.get_type_hints(target, localns=localns)
    except Exception:
        return None


def takes_context(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes exactly one positional parameter, annotated ``InputContext``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    params = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if len(params) != 1 or params[0].kind is params[0].VAR_POSITIONAL:
        return False
    hints = _resolve_hints(fn) or {}
    ann = hints.get(params[0].name)
    return isinstance(ann, type) and issubclass(ann, InputContext)


def check_input_map(
    step_id: str,
    fn: Callable[..., Any],
    expected_args: list[type[Any]],
    input_model: type[BaseModel],
) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins and C callables cannot be inspected: nothing to check
    n = len(expected_args)
    params = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    required = [
        p
        for p in sig.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    star = any(p.kind is p.VAR_POSITIONAL for p in params)
    fixed = [p for p in params if p.kind is not p.VAR_POSITIONAL]
    if not params or len(required) > n or (len(fixed) < n and not star):
        what = (
            "exactly one positional argument"
            if n == 1
            else f"{n} positional arguments (one output per step in depends_on)"
        )
        raise SagaDefinitionError(
            f"step {step_id!r}: input_map must take {what} (got signature {sig})"
        )
    hints = _resolve_hints(fn)
    if hints is None:
        return
    for param, expected_arg in zip(fixed, expected_args, strict=False):
        ann = hints.get(param.name)
        if ann is not None and not _accepts(ann, expected_arg):
            raise TypeValidationError(
                f"step {step_id!r}: input_map takes {getattr(ann, '__name__', ann)} but receives "
                f"{expected_arg.__name__}"
                + (
                    " (a step without depends_on gets an InputContext)"
                    if expected_arg is InputContext
                    else " (the output model of its depends_on step)"
                )
            )
    ret = hints.get("return")
    if ret is None or _return_fits(ret, input_model):
        return
    if isinstance(ret, type) and ret is not NoneType:
        raise TypeValidationError(
            f"step {step_id!r}: input_map returns {ret.__name__} but the step takes "
            f"{input_model.__name__} (return that model or a dict)"
        )
    raise TypeValidationError(
        f"step {step_id!r}: input_map return annotation {ret!r} is neither "
        f"{input_model.__name__} nor dict"
    )


def _accepts(ann: Any, arg: type[Any]) -> bool:
    """Whether a parameter annotated ``ann`` accepts an ``arg`` instance (a union does when
    one member does). What is not a class (a TypeVar, ``Self``...) is not checked."""
    origin = get_origin(ann)
    if origin is Union or origin is UnionType:
        return any(_accepts(member, arg) for member in get_args(ann))
    cls = origin if isinstance(origin, type) else ann  # dict[str, Any] -> dict
    if not isinstance(cls, type) or cls is Any:
        return True
    try:
        return issubclass(arg, cls)
    except TypeError:  # a class that refuses subclass checks (a plain Protocol, say)
        return True


def _return_fits(ret: Any, input_model: type[BaseModel]) -> bool:
    """Whether an input_map return annotation is the input model or a dict (a union fits
    when every member does). What is not a class (a TypeVar, ``Self``...) is not checked."""
    origin = get_origin(ret)
    if origin is Union or origin is UnionType:
        return all(_return_fits(arg, input_model) for arg in get_args(ret))
    cls = origin if isinstance(origin, type) else ret  # dict[str, Any] -> dict
    if not isinstance(cls, type) or cls is Any:
        return True
    try:
        return cls is Mapping or issubclass(cls, dict) or issubclass(cls, input_model)
    except TypeError:  # a class that refuses subclass checks
        return True
