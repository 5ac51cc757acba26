"""Fixtures of the fault tests: ``sagad`` (real processes) and ``fault_db`` (a chaos table)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import faultkit
import pytest


@pytest.fixture
def sagad(tmp_path: Path) -> Iterator[faultkit.SagadFactory]:
    factory = faultkit.SagadFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
async def fault_db(pg_url: str) -> AsyncIterator[faultkit.FaultDb]:
    db = faultkit.FaultDb(pg_url)
    await db.setup()
    try:
        yield db
    finally:
        await db.close()
