"""Fixtures of the integration suite: every store-level and orchestrator-level test runs on
both backends, PostgreSQL (the session's fresh database, ``pg_url``) and SQLite (a file in the
test's own temporary directory); modules that set ``ALSO_IN_MEMORY = True`` run on the
in-memory store of ``saga_core.testing`` too.

Isolation: each test gets its own saga table (a fresh model class from ``SagaStateMixin``
with a unique ``__tablename__``), created by ``create_tables()`` and dropped afterwards; rows
are committed for real, since workers race on them from separate connections.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from itkit import Harness

BACKENDS = [
    pytest.param("postgresql", id="pg", marks=pytest.mark.postgres),
    pytest.param("sqlite", id="sqlite"),
]
MEMORY = pytest.param("memory", id="memory")
"""The in-memory store of ``saga_core.testing`` (no SQL): added for modules that set
``ALSO_IN_MEMORY = True`` (their tests need nothing but the store seam), except for their
tests marked ``sql_only``."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "backend" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return  # the test chose its backends itself
    memory = (
        [MEMORY]
        if getattr(metafunc.module, "ALSO_IN_MEMORY", False)
        and metafunc.definition.get_closest_marker("sql_only") is None
        else []
    )
    metafunc.parametrize("backend", [*BACKENDS, *memory])


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if backend == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    if backend == "memory":
        return None
    return f"sqlite+aiosqlite:///{tmp_path / 'saga.db'}"


@pytest.fixture
async def h(backend: str, db_url: str | None) -> AsyncIterator[Harness]:
    """The test's harness: a fresh saga table on the backend, a probe, no workers yet."""
    harness = Harness(backend, db_url)
    await harness.setup()
    try:
        yield harness
    finally:
        await harness.close()
