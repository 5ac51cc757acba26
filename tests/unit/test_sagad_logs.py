"""sagad's log lines under journald: a syslog priority prefix on every line when
``JOURNAL_STREAM`` names the stream's device and inode (sd-daemon), plain timestamped text
otherwise, plain JSON always; standard ``logging`` records routed in with their level."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
from loguru import logger

from saga_core.logs import SagaLog
from sagad import logs


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[TextIO]:
    with (tmp_path / "stderr.log").open("w+") as fh:
        yield fh
    logger.remove()
    logger.add(sys.stderr)
    logs._state["handler"] = None
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, logs._InterceptHandler)]


def _journal_of(fh: TextIO) -> str:
    st = os.fstat(fh.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def _emit_all() -> None:
    logger.debug("a debug line")
    logger.info("an info line")
    logger.success("a success line")
    logger.bind(saga_id="s-1", saga_name="order").warning("a warning line")
    logger.error("an error line")
    logger.critical("a critical line")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("a failure with a traceback")
    logging.getLogger("saga_core.executor").warning(
        "from the standard logging module", extra={"saga_id": "s-2", "step": "charge"}
    )
    logging.getLogger("sqlalchemy.engine").info("library chatter below WARNING")


def test_priority_prefix_on_every_line_under_the_journal(
    log_file: TextIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", _journal_of(log_file))
    logs.configure_logging("DEBUG", "text", stream=log_file)
    _emit_all()
    log_file.seek(0)
    lines = log_file.read().splitlines()
    assert all(line[:3] in {"<2>", "<3>", "<4>", "<5>", "<6>", "<7>"} for line in lines), lines
    first = {line[3:].split("|", 1)[1].strip(): line[:3] for line in lines if "|" in line}
    assert first["a debug line"] == "<7>"
    assert first["an info line"] == "<6>"
    assert first["a success line"] == "<5>"
    assert first["a warning line saga_id=s-1 saga_name=order"] == "<4>"
    assert first["an error line"] == "<3>"
    assert first["a critical line"] == "<2>"
    assert first["from the standard logging module saga_id=s-2 step=charge"] == "<4>"
    traceback = [line for line in lines if "RuntimeError: boom" in line or "Traceback" in line]
    assert traceback and all(line.startswith("<3>") for line in traceback)
    assert not any("library chatter" in line for line in lines)
    assert not any(line[3:7].isdigit() for line in lines), "no timestamps: the journal adds them"
    assert "\x1b[" not in "".join(lines)


def test_a_journal_stream_naming_another_file_is_not_the_journal(
    log_file: TextIO, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with (tmp_path / "elsewhere").open("w") as other:
        monkeypatch.setenv("JOURNAL_STREAM", _journal_of(other))
    logs.configure_logging("INFO", "text", stream=log_file)
    logger.warning("redirected")
    log_file.seek(0)
    (line,) = log_file.read().splitlines()
    assert not line.startswith("<") and line[:4].isdigit(), line  # a timestamp, no prefix


def test_json_keeps_its_level_and_no_prefix_under_the_journal(
    log_file: TextIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", _journal_of(log_file))
    logs.configure_logging("INFO", "json", stream=log_file)
    logger.error("as json")
    logging.getLogger("saga_core").info("std info", extra={"saga_id": "s-3"})
    run_log = SagaLog(logging.getLogger("saga_core.executor"), {"saga_id": "s-4", "worker": "w"})
    run_log.bind(step="charge", attempt=2).warning("through an adapter")
    run_log.debug("below the level")
    log_file.seek(0)
    records = [json.loads(line) for line in log_file.read().splitlines()]
    assert [(r["level"], r["message"]) for r in records] == [
        ("ERROR", "as json"),
        ("INFO", "std info"),
        ("WARNING", "through an adapter"),
    ]
    assert records[1]["saga_id"] == "s-3"
    assert {k: records[2][k] for k in ("saga_id", "worker", "step", "attempt")} == {
        "saga_id": "s-4",
        "worker": "w",
        "step": "charge",
        "attempt": 2,
    }
    # Named after the module that logged (not the logging module the record came through).
    assert records[1]["logger"] == records[2]["logger"] == __name__


@pytest.mark.parametrize(
    ("level", "priority"),
    [("TRACE", 7), ("DEBUG", 7), ("INFO", 6), ("SUCCESS", 5), ("WARNING", 4), ("ERROR", 3)],
)
def test_priorities_of_the_levels(level: str, priority: int) -> None:
    assert logs.journal_priority(logger.level(level).no) == priority


def test_fields_end_the_first_line_of_a_multi_line_message(log_file: TextIO) -> None:
    logs.configure_logging("INFO", "text", stream=log_file)
    logging.getLogger("saga_core.executor").warning(
        "traceback of execute attempt 1 of step c:\nTraceback {0} <red>\nRuntimeError: boom",
        extra={"saga_id": "s-5", "step": "c"},
    )
    log_file.seek(0)
    lines = log_file.read().splitlines()
    assert lines[0].endswith("| traceback of execute attempt 1 of step c: saga_id=s-5 step=c")
    assert lines[1:] == ["Traceback {0} <red>", "RuntimeError: boom"], "shown literally"
