"""Loading the application: ``module:attribute`` names a ``SagaOrchestrator``, a list of them,
or a factory that takes the database URL and returns one (or a list)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from loguru import logger
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import SagaOrchestrator
from saga_core.settings import mask_url
from sagad.errors import ConfigError

__all__ = ["load_orchestrators"]

Orchestrator = SagaOrchestrator[Any]


def _import_attribute(spec: str) -> Any:
    module_name, _, attr_path = spec.partition(":")
    # Like uvicorn and gunicorn: the working directory is importable (a console script's
    # sys.path does not include it). Under systemd, that is WorkingDirectory=.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ConfigError(
                f"app: cannot import module {module_name!r} (from {spec!r}): {exc}; "
                "check the name and PYTHONPATH"
            ) from None
        raise ConfigError(f"app: importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        logger.opt(exception=exc).debug("importing {} failed", module_name)
        raise ConfigError(
            f"app: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    value: Any = module
    for part in attr_path.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigError(
                f"app: module {module_name!r} has no attribute {attr_path!r} (from {spec!r})"
            ) from None
    return value


def _as_list(value: Any, spec: str) -> list[Orchestrator]:
    items = list(value) if isinstance(value, list | tuple) else [value]
    if not items or not all(isinstance(i, SagaOrchestrator) for i in items):
        raise ConfigError(
            f"app: {spec!r} is {type(value).__name__}, not a SagaOrchestrator, a list of them, "
            "or a factory taking the database URL and returning one"
        )
    return items


def _rebind(orch: Orchestrator, url: str) -> Orchestrator:
    """The same definitions on a new engine for ``url`` (an explicit ``--database-url``)."""
    eng = orch.engine
    if eng.sql_engine.url == make_url(url):
        return orch
    logger.info(
        "database_url {} overrides the orchestrator's own engine ({})",
        mask_url(url),
        mask_url(eng.sql_engine.url.render_as_string(hide_password=False)),
    )
    new: Orchestrator = SagaOrchestrator(
        model_class=eng.model_class,
        session_maker=async_sessionmaker(create_async_engine(url)),
        execution_lease=eng.execution_lease,
        in_place_retry_max=eng.in_place_retry_max,
        max_payload_bytes=eng.max_payload_bytes,
        max_recoveries=eng.max_recoveries,
    )
    new.engine.definitions.update(eng.definitions)
    new.engine.tracing = eng.tracing
    return new


async def load_orchestrators(
    specs: list[str], database_url: str, *, url_explicit: bool
) -> list[Orchestrator]:
    """Import every ``module:attribute`` in ``specs`` and return the orchestrators.

    A factory is called with ``database_url``. An orchestrator object keeps its own engine
    unless ``url_explicit`` (the URL came from a flag, the environment or the config file).

    Raises:
        ConfigError: nothing to import, an import failed, or the attribute is not usable.
    """
    if not specs:
        raise ConfigError(
            "app: no application given; pass --app module:attribute (or set app in the "
            "config file, or SAGA_APP)"
        )
    found: list[Orchestrator] = []
    for spec in specs:
        value = _import_attribute(spec)
        if isinstance(value, SagaOrchestrator | list | tuple):
            items = _as_list(value, spec)
            if url_explicit:
                items = [_rebind(o, database_url) for o in items]
        elif callable(value):
            try:
                produced = value(database_url)
                if inspect.isawaitable(produced):
                    produced = await produced
            except Exception as exc:
                logger.opt(exception=exc).debug("app factory {} failed", spec)
                raise ConfigError(
                    f"app: factory {spec!r} failed: {type(exc).__name__}: {exc}"
                ) from None
            items = _as_list(produced, spec)
        else:
            items = _as_list(value, spec)
        for orch in items:
            if not orch.engine.definitions:
                raise ConfigError(f"app: the orchestrator from {spec!r} has no registered sagas")
            if all(orch is not seen for seen in found):
                found.append(orch)
    return found
