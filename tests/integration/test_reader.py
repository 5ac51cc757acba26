"""``SagaReader`` (the bare-driver listing ``sagactl list`` uses) answers as ``SagaAdmin``
does: the same snapshots, in the same order, and the same counts, for every filter, on
PostgreSQL and SQLite, over sagas in every status (leases, finished times, errors set)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from itkit import STATUS_CASES, Harness, define_standard, heal_probe, reach

from saga_core import SagaReader
from saga_core.store.lite import LIST_COLUMNS

FILTERS: list[dict[str, Any]] = [
    {},
    {"status": "COMPLETED"},
    {"status": ["failed", "SUSPENDED"]},
    {"status": "RUNNING"},
    {"saga_name": "flow"},
    {"saga_name": ["flow", "flow_noroll", "nothing"]},
    {"saga_name": "nothing"},
    {"aggregation_id": "agg-COMPLETED"},
    {"aggregation_id": "no such"},
    {"status": "COMPENSATED", "saga_name": "flow"},
]
PAGES: list[dict[str, Any]] = [
    {},
    {"limit": 2},
    {"limit": 3, "offset": 2},
    {"limit": 0},
    {"offset": 100},
    {"oldest_first": True},
    {"oldest_first": True, "limit": 2, "offset": 1},
    {"definition_version": 1},
    {"definition_version": 2},
]


def test_list_columns_are_the_tables_but_the_big_ones() -> None:
    from saga_core import SagaState

    names = {c.name for c in SagaState.__table__.columns}
    assert set(LIST_COLUMNS) == names - {"context", "inbox", "step_history"}


async def test_reader_answers_as_the_admin(h: Harness) -> None:
    define_standard(h)
    w = await h.worker()
    held = None
    # RUNNING_LEASED last: its worker holds step a (of every saga) until let go.
    for case in sorted(STATUS_CASES, key=lambda c: c == "RUNNING_LEASED"):
        heal_probe(h.probe)
        got = await reach(h, w, case, aggregation_id=f"agg-{case}")
        if got.holder is not None:
            held = got
    try:
        assert h.url is not None
        reader = await SagaReader.open(h.url, h.table_name)
        assert reader is not None, "a plain URL and table name: the reader must serve them"
        async with reader:
            admin = w.admin
            now = await admin.db_now()
            mine = await reader.db_now()
            assert abs(mine - now) < timedelta(seconds=5)
            assert mine.tzinfo is not None and mine.utcoffset() == timedelta(0)
            everything = await admin.list_sagas(limit=100)
            assert len(everything) == len(STATUS_CASES)
            assert {s.status.value for s in everything} >= {"FAILED", "COMPLETED", "ABORTED"}
            assert any(s.lease_owner for s in everything), "a leased saga is listed"
            assert any(s.finished_at for s in everything)
            assert any(s.last_error for s in everything)
            middle = sorted(s.created_at for s in everything)[len(everything) // 2]
            times: list[dict[str, Any]] = [
                {"created_after": middle},
                {"created_before": middle},
                {"created_after": middle - timedelta(days=1), "created_before": middle},
            ]
            for flt in [*FILTERS, *times]:
                for page in PAGES:
                    want = await admin.list_sagas(**flt, **page)
                    got_rows = await reader.list_sagas(**flt, **page)
                    assert [s.model_dump() for s in got_rows] == [s.model_dump() for s in want], (
                        flt,
                        page,
                    )
                assert await reader.count_sagas(**flt) == await admin.count_sagas(**flt), flt
    finally:
        if held is not None:
            await held.let_go()


async def test_reader_declines_what_it_does_not_serve(tmp_path: Any) -> None:
    missing = tmp_path / "missing.db"
    assert await SagaReader.open(f"sqlite+aiosqlite:///{missing}") is None
    assert not missing.exists(), "the reader never creates a database file"
    assert await SagaReader.open("sqlite+aiosqlite:///:memory:") is None
    assert await SagaReader.open("postgresql+asyncpg://u@h/db?ssl=require") is None
    assert await SagaReader.open("postgresql+asyncpg://u@h/db", 'Odd"Name') is None
    assert await SagaReader.open("mysql://u@h/db") is None


async def test_reader_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    monkeypatch.setenv("SAGA_LITE_READS", "0")
    assert await SagaReader.open(pg_url) is None
