"""Fuzzed input (hypothesis): any initial_data either starts a saga whose stored data reads
back equal, or is refused with a clear SagaInputError and nothing written; on both backends.
Oversize payloads are refused the same way."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itkit import Probe, chain, make_model, unique_table_name
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import SagaAdmin, SagaInputError, SagaOrchestrator

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=30)
)
json_like = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)
initial_data = st.dictionaries(st.text(max_size=12), json_like, max_size=5) | json_like


@cache
def _model(table: str) -> Any:
    return make_model(table)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _same(a: Any, b: Any) -> bool:
    number = (int, float)
    if isinstance(a, number) and isinstance(b, number) and not isinstance(a, bool | str):
        return not isinstance(b, bool) and float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.fixture(params=["sqlite", "postgresql"])
def fuzz_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite+aiosqlite:///{Path(tmp_path_factory.mktemp('fuzz')) / 'fuzz.db'}"
    table = unique_table_name("fuzz")

    async def make() -> None:
        engine = create_async_engine(url)
        try:
            orch: SagaOrchestrator[Any] = SagaOrchestrator(
                model_class=_model(table), session_maker=async_sessionmaker(engine)
            )
            await orch.create_tables()
        finally:
            await engine.dispose()

    asyncio.run(make())
    yield url, table

    async def drop() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_model(table).__table__.drop)
        finally:
            await engine.dispose()

    asyncio.run(drop())


async def _attempt(url: str, table: str, data: Any, limit: int) -> tuple[str, Any]:
    engine = create_async_engine(url)
    try:
        orch: SagaOrchestrator[Any] = SagaOrchestrator(
            model_class=_model(table),
            session_maker=async_sessionmaker(engine),
            max_payload_bytes=limit,
        )
        orch.register("flow", chain(Probe(), ["a"]))
        t = _model(table).__table__

        async def count() -> int:
            async with engine.connect() as conn:
                return int((await conn.execute(select(func.count()).select_from(t))).scalar_one())

        before = await count()
        try:
            sid = await orch.start(saga_name="flow", initial_data=data, aggregation_id=str(before))
        except SagaInputError as exc:
            assert await count() == before, "a refused start wrote nothing"
            return "refused", str(exc)
        row = await orch.engine.store.saga_get(sid)
        assert row is not None
        return "accepted", row.context["initial_data"]
    finally:
        await engine.dispose()


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=initial_data)
def test_fuzzed_initial_data(fuzz_target: tuple[str, str], data: Any) -> None:
    url, table = fuzz_target
    outcome, detail = asyncio.run(_attempt(url, table, data, 64 * 1024))
    if outcome == "refused":
        assert detail, "the refusal says why"
        storable = isinstance(data, dict) and _finite(data) and "\\u0000" not in json.dumps(data)
        assert not storable, f"refused storable data: {detail}"
    else:
        assert isinstance(data, dict)
        # Equal, up to JSON numbers: PostgreSQL's JSONB keeps numbers as numeric, so 5.0e16
        # may read back as the int 50000000000000000 (the same number).
        assert _same(detail, json.loads(json.dumps(data))), "stored data reads back equal"


@pytest.mark.parametrize("size", [1000, 70_000])
def test_oversize_initial_data_is_refused(fuzz_target: tuple[str, str], size: int) -> None:
    url, table = fuzz_target
    outcome, detail = asyncio.run(_attempt(url, table, {"s": "x" * size}, 512))
    assert outcome == "refused" and "over the limit of 512 bytes" in detail


async def _skip_attempt(url: str, table: str, mock: Any) -> tuple[str, Any]:
    """A saga FAILED at step b (no compensation on failure), skipped with ``mock``."""
    engine = create_async_engine(url)
    try:
        probe = Probe()
        probe.fail["b"] = -1
        orch: SagaOrchestrator[Any] = SagaOrchestrator(
            model_class=_model(table), session_maker=async_sessionmaker(engine)
        )
        orch.register("stuck", chain(probe, ["a", "b"], compensate_on_failure=False))
        sid = await orch.start(
            saga_name="stuck", initial_data={"n": 1}, aggregation_id=uuid.uuid4().hex, inline=True
        )
        before = await orch.engine.store.saga_get(sid)
        assert before is not None and before.status == "FAILED"
        admin: SagaAdmin[Any] = SagaAdmin(engine=orch.engine, actor="fuzz")
        try:
            await admin.skip_step(sid, mock_output=mock, reason="fuzz")
        except SagaInputError as exc:
            assert await orch.engine.store.saga_get(sid) == before, "a refused skip changed nothing"
            return "refused", str(exc)
        after = await orch.engine.store.saga_get(sid)
        assert after is not None
        return "accepted", after.context["step_outputs"]["b"]
    finally:
        await engine.dispose()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mock=json_like | st.fixed_dictionaries({"n": json_like}))
def test_fuzzed_mock_output(fuzz_target: tuple[str, str], mock: Any) -> None:
    url, table = fuzz_target
    outcome, detail = asyncio.run(_skip_attempt(url, table, mock))
    if outcome == "refused":
        assert detail
    else:
        # Accepted only what the step's output model (Out: n int) validates.
        assert isinstance(mock, dict) and isinstance(detail, dict) and isinstance(detail["n"], int)
