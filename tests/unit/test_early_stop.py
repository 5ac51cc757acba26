"""sagad's handler for a stop before ready (:mod:`sagad.early`): its line looks like the
daemon's own log lines, and the console entry point installs it before anything heavy is
imported. (The handler itself is exercised on real processes in
``tests/acceptance/test_stop_during_startup.py``.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta

import pytest

from sagad import early

HEAVY = ("typer", "click", "pydantic", "sqlalchemy", "asyncpg", "loguru", "saga_core", "uvloop")


def _python(code: str, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
        check=True,
    )
    return out.stdout + out.stderr


def test_the_entry_point_imports_nothing_heavy_before_it_handles_signals() -> None:
    out = _python(
        f"""
        import sys
        import sagad.cli
        print(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))
        """
    )
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("fmt", "journal"), [("text", ""), ("text", "journal"), ("json", "")], ids=str
)
def test_the_line_is_written_like_the_daemons_logs(fmt: str, journal: str) -> None:
    """The same message through sagad's logging and through sagad.early, in a child process
    (configuring loguru here would change this process's logging)."""
    env = {"JOURNAL_STREAM_OF_STDOUT": "1"} if journal else {}
    out = _python(
        f"""
        import os, sys, time
        if os.environ.get("JOURNAL_STREAM_OF_STDOUT"):  # stdout is "the journal"
            st = os.fstat(1)
            os.environ["JOURNAL_STREAM"] = f"{{st.st_dev}}:{{st.st_ino}}"
        from loguru import logger
        from sagad import early
        from sagad.logs import configure_logging
        configure_logging("INFO", {fmt!r}, stream=sys.stdout)
        logger.info(early.MESSAGE)
        sys.stdout.flush()
        print(early.line(time.time()), end="")
        """,
        **env,
    )
    daemon, ours = out.splitlines()
    if fmt == "json":
        a, b = json.loads(daemon), json.loads(ours)
        assert (a["level"], a["message"]) == (b["level"], b["message"]) == ("INFO", early.MESSAGE)
        assert set(a) == set(b) == {"ts", "level", "message", "logger"}
        for record in (a, b):
            assert datetime.fromisoformat(record["ts"]).utcoffset() == timedelta(0)
    else:
        stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| "
        strip = (lambda s: re.sub(stamp, "", s)) if not journal else (lambda s: s)
        expected = f"{'<6>' if journal else ''}INFO     | {early.MESSAGE}"
        assert strip(daemon) == strip(ours) == expected
        if not journal:
            assert re.match(stamp, daemon) and re.match(stamp, ours)


def test_the_line_before_and_after_the_settings_are_read() -> None:
    out = _python(
        """
        from sagad import early
        print(early.line(0.5), end="")  # before: text with a local timestamp
        early.use_format("text", with_time=False)
        print(early.line(0.5), end="")
        early.use_format("json", with_time=True)
        print(early.line(0.5), end="")
        """,
        TZ="UTC",
    )
    assert out.splitlines() == [
        "1970-01-01 00:00:00.500 | INFO     | stopped before ready",
        "INFO     | stopped before ready",
        '{"ts": "1970-01-01T00:00:00.500000+00:00", "level": "INFO", '
        '"message": "stopped before ready", "logger": "sagad.early"}',
    ]
