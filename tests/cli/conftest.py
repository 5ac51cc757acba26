"""Fixtures of the sagactl tests: a PostgreSQL table seeded with real sagas in every
status, and a runner for the CLI in-process (with global options hoisted as ``main`` does).

The CLI runs its own event loop (``asyncio.run``), so these tests are synchronous and seed
the database with ``asyncio.run`` too.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from cli_helpers import CliFn, Run, invoke  # noqa: E402
from cli_seed import Seeded, seed  # noqa: E402

from saga_core import SagaAdmin, SagaAdminSnapshot  # noqa: E402
from sagactl.appload import bare_orchestrator, make_engine  # noqa: E402


@pytest.fixture
def seeded(pg_url: str) -> Seeded:
    """saga_state emptied and seeded with one saga per status (see seed.LABELS)."""
    return asyncio.run(seed(pg_url))


@pytest.fixture
def cli(pg_url: str) -> CliFn:
    """Run sagactl against the test database: ``cli("list", "-o", "json")``."""

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Run:
        return invoke([*args, "--database-url", pg_url], input=input, env=env)

    return run


@pytest.fixture
def get_saga(pg_url: str) -> Callable[..., SagaAdminSnapshot]:
    """Read a saga straight from the database (``table=`` for another table)."""

    def get(saga_id: uuid.UUID, table: str = "saga_state") -> SagaAdminSnapshot:
        async def read() -> SagaAdminSnapshot:
            engine = make_engine(pg_url)
            try:
                orch = bare_orchestrator(engine, table)
                return await SagaAdmin(engine=orch.engine).get_saga(saga_id)
            finally:
                await engine.dispose()

        return asyncio.run(read())

    return get


@pytest.fixture
def subprocess_env(pg_url: str) -> Iterator[dict[str, str]]:
    """Environment for running the real ``sagactl`` script."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA")}
    env.update(
        SAGA_DATABASE_URL=pg_url,
        PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]),
        COLUMNS="160",
    )
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    yield env
