"""Layout of ``show`` and ``watch`` on a recorded rich console; argument parsing units."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from cli_seed import Seeded
from rich.console import Console

from saga_core import SagaAdmin
from sagactl.appload import bare_orchestrator, make_engine
from sagactl.argv import hoist_global_options
from sagactl.render_show import show_page
from sagactl.render_watch import dashboard
from sagactl.runtime import GlobalOptions, Runtime
from sagactl.stats import gather_dashboard
from sagactl.timeparse import TimeArgError, parse_duration, parse_when


def _console(width: int = 120) -> Console:
    return Console(record=True, width=width, force_terminal=True, color_system="truecolor")


def test_show_layout_on_a_terminal(pg_url: str, seeded: Seeded) -> None:
    async def read() -> tuple[object, datetime]:
        engine = make_engine(pg_url)
        try:
            admin = SagaAdmin(engine=bare_orchestrator(engine, "saga_state").engine)
            return await admin.get_saga(seeded["compensating"]), await admin.db_now()
        finally:
            await engine.dispose()

    snap, now = asyncio.run(read())
    console = _console()
    console.print(show_page(snap, now))  # type: ignore[arg-type]
    text = console.export_text(clear=False)
    lines = text.splitlines()
    # A rounded panel titled with the id, a key/value header inside it.
    assert lines[0].startswith("╭─ saga " + str(seeded["compensating"]))
    assert lines[0].endswith("╮") and len(lines[0]) == 120
    body = lines[1 : lines.index(next(ln for ln in lines if ln.startswith("╰")))]
    keys = [ln[2:18].strip() for ln in body]
    assert keys[:4] == ["status", "name", "aggregation id", "trace id"]
    assert {"lease", "due", "token", "last error"} <= set(keys)
    # Then the steps and the timeline tables, in that order, with aligned columns.
    steps_at = lines.index(next(ln for ln in lines if ln.startswith("steps")))
    timeline_at = lines.index(next(ln for ln in lines if ln.startswith("timeline")))
    assert steps_at < timeline_at
    head = next(ln for ln in lines[timeline_at:] if "OUTCOME" in ln)
    rows = [ln for ln in lines[timeline_at:] if ln[:4].strip().isdigit()]
    col = head.index("OUTCOME")
    assert [r[col : col + 7] for r in rows] == ["SUCCESS", "ERROR  ", "ERROR  "]
    # Status and outcomes are coloured on a terminal.
    html = console.export_html(inline_styles=True)
    assert "COMPENSATING" in html and "color: #800080" in html  # magenta status


def test_watch_frame_layout(pg_url: str, seeded: Seeded) -> None:
    async def frame() -> object:
        rt = Runtime(GlobalOptions(database_url=pg_url))
        async with rt.connect() as s:
            return await gather_dashboard(s, timedelta(minutes=5))

    d = asyncio.run(frame())
    console = _console(140)
    frame_ = dashboard(d, source="db · saga_state", interval=2.0, width=140)  # type: ignore[arg-type]
    console.print(frame_)
    lines = console.export_text().splitlines()
    assert lines[0].startswith("sagactl watch") and "every 2.0s" in lines[0]
    # One title per section, each once (no panel title repeated by a table title).
    heads = [ln.split()[0] for ln in lines if ln[:1].isalpha() and ln.split()[0] in SECTIONS]
    assert heads == ["sagas", "workers", "failures"]
    assert all(len(ln) <= 140 for ln in lines)
    sagas = "\n".join(lines[1 : next(i for i, ln in enumerate(lines) if ln.startswith("workers"))])
    assert "order_manual" in sagas and "due now 1" in sagas
    for status in ("RUNNING", "SUSPENDED", "COMPENSATING", "COMPLETED", "FAILED", "ABORTED"):
        assert status in sagas  # wide enough for one column per status
    failures = "\n".join(
        lines[next(i for i, ln in enumerate(lines) if ln.startswith("failures")) :]
    )
    assert str(seeded["failed"])[:8] in failures and "card declined" in failures
    assert "(no sagad worker has registered)" in "\n".join(lines)


SECTIONS = ("sagas", "workers", "failures")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["list", "-o", "json"], ["-o", "json", "list"]),
        (["-o", "json", "list"], ["-o", "json", "list"]),
        (
            ["list", "--output=jsonl", "--status", "FAILED"],
            ["--output=jsonl", "list", "--status", "FAILED"],
        ),
        (
            ["show", "abc", "--database-url", "u", "--app", "m:a", "--app=m:b"],
            ["--database-url", "u", "--app", "m:a", "--app=m:b", "show", "abc"],
        ),
        (
            ["skip", "x", "--output", "{}", "-o", "json"],
            ["-o", "json", "skip", "x", "--output", "{}"],
        ),
        (
            ["--output", "json", "skip", "x", "--output", "{}"],
            ["--output", "json", "skip", "x", "--output", "{}"],
        ),
        (["db", "status", "--table", "t", "-ojson"], ["--table", "t", "-ojson", "db", "status"]),
        (["list", "--", "-o"], ["list", "--", "-o"]),
    ],
)
def test_hoist_global_options(argv: list[str], expected: list[str]) -> None:
    assert hoist_global_options(argv) == expected


def test_durations_and_timestamps() -> None:
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_when("2H") == timedelta(hours=2)
    assert parse_when("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_when("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_when("2024-05-01T14:00:00+02:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    for bad in ("", "2", "h", "-5m", "yesterday", "2024-13-01"):
        with pytest.raises(TimeArgError):
            parse_when(bad)
