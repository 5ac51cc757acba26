"""Logging to stderr with loguru: readable text for terminals, JSON lines for collectors.

Bound fields (``saga_id``, ``saga_name``, ``step``, ``attempt``, ``worker``) appear as
``key=value`` in text and as top-level keys in JSON.

Under journald — ``JOURNAL_STREAM`` names the device and inode of our stderr, as
``sd-daemon(3)`` says to check — text has neither colours nor timestamps (the journal adds
its own) and every line starts with its syslog priority, ``<3>`` ERROR to ``<7>`` DEBUG, so
``journalctl -p warning`` works; a multi-line record (a traceback) repeats the prefix on each
line. JSON lines stay plain JSON with their ``level``.

Records of the standard ``logging`` module are routed into loguru with their level, their
``exc_info`` and the fields above when given as ``extra=``: ``saga_core``'s (it logs that
way, see ``saga_core.logs``) from the configured level, other libraries' from WARNING.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from datetime import UTC
from types import FrameType
from typing import Any, TextIO

from loguru import logger

from saga_core.logs import FIELDS
from sagad import early

__all__ = ["FIELDS", "configure_logging", "set_level"]

__all__ = ["FIELDS", "PRIORITIES", "configure_logging", "journal_priority", "set_level"]

# FIELDS (saga_core's): shown on every line that carries them (``worker`` only in JSON: in
# text it would repeat on every line; the start-up line names it).

_state: dict[str, Any] = {"handler": None, "format": "text", "stream": None}

PRIORITIES = ((50, 2), (40, 3), (30, 4), (25, 5), (20, 6))
"""(lowest loguru level number, syslog priority): CRITICAL 2, ERROR 3, WARNING 4,
SUCCESS 5 (notice), INFO 6; below INFO (DEBUG, TRACE) 7."""


def journal_priority(level_no: int) -> int:
    """The syslog priority of a loguru level number."""
    for lowest, priority in PRIORITIES:
        if level_no >= lowest:
            return priority
    return 7


def _is_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal's: ``JOURNAL_STREAM`` ("<dev>:<ino>") must name it
    (a variable inherited by a process whose stderr was redirected does not count)."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class _JournalSink:
    """Text lines, each prefixed with the record's syslog priority (``<4>`` ...)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, message: Any) -> None:
        prefix = f"<{journal_priority(message.record['level'].no)}>"
        lines = str(message).rstrip("\n").split("\n")
        self.stream.write("".join(f"{prefix}{line}\n" for line in lines))
        self.stream.flush()


class _InterceptHandler(logging.Handler):
    """Standard ``logging`` records into loguru (the recipe of loguru's documentation)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # The caller that logged (past this method and the logging module's frames, a
        # LoggerAdapter's included): loguru names the record after its module.
        frame: FrameType | None = sys._getframe(0)
        depth = 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        fields = {k: getattr(record, k) for k in FIELDS if hasattr(record, k)}
        logger.bind(**fields).opt(depth=depth, exception=record.exc_info).log(
            level, record.getMessage()
        )


def _route_standard_logging(level: str) -> None:
    """Send standard ``logging`` to loguru: ``saga_core``'s records from ``level`` up, other
    libraries' from WARNING up (SQLAlchemy and asyncpg say a lot at INFO and DEBUG)."""
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _InterceptHandler)]
    root.addHandler(_InterceptHandler())
    root.setLevel(logging.WARNING)
    logging.getLogger("saga_core").setLevel(logger.level(level).no)


_FIRST, _REST = "_first_line", "_other_lines"
"""Where the text format keeps a multi-line message's parts (never shown as fields)."""


def _text_format(with_time: bool) -> Any:
    prefix = "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | " if with_time else ""

    def fmt(record: Any) -> str:
        extra = record["extra"]
        parts = "".join(
            f" <cyan>{key}</cyan>={{extra[{key}]}}"
            for key in FIELDS
            if key in extra and key != "worker"
        )
        head = prefix + "<level>{level: <8}</level> | "
        message = record["message"]
        if "\n" not in message:
            return head + "{message}" + parts + "\n{exception}"
        # A multi-line message (a failed attempt's traceback): the fields end its first
        # line, not its last (where they would read as part of the error).
        first, _, rest = message.partition("\n")
        extra[_FIRST], extra[_REST] = first, rest
        return head + f"{{extra[{_FIRST}]}}{parts}\n{{extra[{_REST}]}}\n{{exception}}"

    return fmt


class _JsonSink:
    """One JSON object per line: ts, level, message, the bound fields, exception text."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, message: Any) -> None:
        record = message.record
        out: dict[str, Any] = {
            "ts": record["time"].astimezone(UTC).isoformat(),
            "level": record["level"].name,
            "message": record["message"],
            "logger": record["name"],
        }
        for key, value in record["extra"].items():
            out.setdefault(key, value)
        exc = record["exception"]
        if exc is not None and exc.type is not None:
            out["exception"] = "".join(
                traceback.format_exception(exc.type, exc.value, exc.traceback)
            )
        self.stream.write(json.dumps(out, default=str) + "\n")
        self.stream.flush()


def configure_logging(level: str, fmt: str, *, stream: TextIO | None = None) -> None:
    """Replace loguru's handlers with one stderr handler; route standard logging into it."""
    stream = stream or sys.stderr
    journal = _is_journal(stream)
    if _state["handler"] is not None:
        logger.remove(_state["handler"])
    else:
        logger.remove()
    logger.enable("sagad")
    if fmt == "json":
        handler = logger.add(_JsonSink(stream).write, level=level, format="{message}")
    elif journal:
        handler = logger.add(
            _JournalSink(stream).write,
            level=level,
            format=_text_format(with_time=False),
            colorize=False,
            backtrace=False,
            diagnose=False,
        )
    else:
        handler = logger.add(
            stream,
            level=level,
            format=_text_format(with_time=True),
            backtrace=False,
            diagnose=False,
        )
    _route_standard_logging(level)
    _state.update(handler=handler, format=fmt, stream=stream, level=level)
    early.use_format(fmt, with_time=not journal, journal=journal and fmt != "json")


def set_level(level: str) -> None:
    """Change the level (SIGHUP) keeping the format."""
    if _state.get("level") == level:
        return
    configure_logging(level, str(_state["format"]), stream=_state["stream"])
