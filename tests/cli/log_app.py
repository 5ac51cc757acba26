"""An application for ``sagactl --app log_app:orch`` that logs through standard logging
while it is imported, as a library under saga_core would during a command."""

from __future__ import annotations

import logging
import os

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import SagaOrchestrator

logging.getLogger("saga_core.testapp").warning("careful: {braces} <b>[red]markup[/]</b> %s", 42)
logging.getLogger("saga_core.testapp").info("an info line nobody asked for")

orch: SagaOrchestrator = SagaOrchestrator(  # type: ignore[type-arg]
    session_maker=async_sessionmaker(create_async_engine(os.environ["SAGA_DATABASE_URL"]))
)
