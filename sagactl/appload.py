"""Finding the saga table to work on: the application's orchestrators (``--app``), or a
bare orchestrator on ``--table`` when no application is given."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from saga_core import SagaOrchestrator, SagaState, SagaStateMixin
from sagactl.errors import NO_URL_MESSAGE, CliError
from sagactl.exitcodes import ExitCode

__all__ = ["load_app", "make_engine", "model_for_table", "pick_orchestrator"]

_MODELS: dict[str, type[SagaStateMixin]] = {}


def model_for_table(name: str) -> type[SagaStateMixin]:
    """``SagaState`` for ``saga_state``; otherwise a model with the saga columns on ``name``."""
    if name == SagaState.__tablename__:
        return SagaState
    if name not in _MODELS:

        class _Base(DeclarativeBase):
            pass

        cls_name = "Saga_" + "".join(ch if ch.isalnum() else "_" for ch in name)
        _MODELS[name] = type(cls_name, (SagaStateMixin, _Base), {"__tablename__": name})
    return _MODELS[name]


def make_engine(url: str) -> AsyncEngine:
    """An engine for a short-lived command: a small pool and a bounded connect time."""
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql+asyncpg"):
        connect_args["timeout"] = float(os.environ.get("SAGACTL_CONNECT_TIMEOUT", "10"))
    return create_async_engine(url, pool_size=2, max_overflow=2, connect_args=connect_args)


def bare_orchestrator(engine: AsyncEngine, table: str) -> SagaOrchestrator[Any]:
    """An orchestrator without definitions: enough for every admin action except the skip
    of a forward step (which validates the output against the step's model)."""
    return SagaOrchestrator(
        model_class=model_for_table(table), session_maker=async_sessionmaker(engine)
    )


async def _resolve(target: str, database_url: str | None) -> list[SagaOrchestrator[Any]]:
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        # Like `python -m`: the application's package is importable from where sagactl runs.
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(
            f"--app {target}: cannot import {module_name!r}: {exc}", ExitCode.USAGE
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CliError(
                f"--app {target}: {module_name!r} has no attribute {attr!r}", ExitCode.USAGE
            )
        obj = getattr(obj, part)
    if not isinstance(obj, SagaOrchestrator | list | tuple) and callable(obj):
        if database_url is None:
            raise CliError(
                f"--app {target} is a factory that takes the database URL: {NO_URL_MESSAGE}",
                ExitCode.USAGE,
            )
        obj = obj(database_url)
        if inspect.isawaitable(obj):
            obj = await obj
    items = list(obj) if isinstance(obj, list | tuple) else [obj]
    bad = [x for x in items if not isinstance(x, SagaOrchestrator)]
    if bad or not items:
        raise CliError(
            f"--app {target} must name a SagaOrchestrator, a list of them, or a factory that "
            f"takes the database URL and returns one; got {type(bad[0] if bad else obj).__name__}",
            ExitCode.USAGE,
        )
    return items


async def load_app(targets: list[str], database_url: str | None) -> list[SagaOrchestrator[Any]]:
    """Every orchestrator named by ``--app`` (in order). A factory is called with
    ``database_url``, which it needs (``None``: none was configured)."""
    found: list[SagaOrchestrator[Any]] = []
    for target in targets:
        found.extend(await _resolve(target, database_url))
    return found


def pick_orchestrator(
    orchestrators: list[SagaOrchestrator[Any]], table: str, table_explicit: bool
) -> SagaOrchestrator[Any]:
    """The application's orchestrator on ``table``; the only one when the table was not set."""
    matches = [o for o in orchestrators if o.engine.table_name == table]
    if matches:
        return matches[0]
    if len(orchestrators) == 1 and not table_explicit:
        return orchestrators[0]
    names = ", ".join(sorted({o.engine.table_name for o in orchestrators}))
    raise CliError(
        f"no orchestrator of --app works on table {table!r} (its tables: {names}); "
        "choose one with --table",
        ExitCode.USAGE,
    )
