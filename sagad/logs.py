"""Logging to stderr with loguru: readable text for terminals, JSON lines for collectors.

Bound fields (``saga_id``, ``saga_name``, ``step``, ``attempt``, ``worker``) appear as
``key=value`` in text and as top-level keys in JSON. Under journald (``JOURNAL_STREAM`` set)
text has neither colours nor timestamps: the journal adds its own.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import UTC
from typing import Any, TextIO

from loguru import logger

from sagad import early

__all__ = ["FIELDS", "configure_logging", "set_level"]

FIELDS = ("saga_id", "saga_name", "step", "attempt", "status", "worker")
"""Bound fields shown on every line that carries them (``worker`` only in JSON: in text it
would repeat on every line; the start-up line names it)."""

_state: dict[str, Any] = {"handler": None, "format": "text", "stream": None}


def _text_format(with_time: bool) -> Any:
    prefix = "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | " if with_time else ""

    def fmt(record: Any) -> str:
        extra = record["extra"]
        parts = "".join(
            f" <cyan>{key}</cyan>={{extra[{key}]}}"
            for key in FIELDS
            if key in extra and key != "worker"
        )
        return prefix + "<level>{level: <8}</level> | {message}" + parts + "\n{exception}"

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
    """Replace loguru's handlers with one stderr handler; enable saga_core's logs."""
    stream = stream or sys.stderr
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    if _state["handler"] is not None:
        logger.remove(_state["handler"])
    else:
        logger.remove()
    logger.enable("saga_core")
    logger.enable("sagad")
    if fmt == "json":
        handler = logger.add(_JsonSink(stream).write, level=level, format="{message}")
    else:
        handler = logger.add(
            stream,
            level=level,
            format=_text_format(with_time=not journal),
            colorize=False if journal else None,
            backtrace=False,
            diagnose=False,
        )
    _state.update(handler=handler, format=fmt, stream=stream, level=level)
    early.use_format(fmt, with_time=not journal)


def set_level(level: str) -> None:
    """Change the level (SIGHUP) keeping the format."""
    if _state.get("level") == level:
        return
    configure_logging(level, str(_state["format"]), stream=_state["stream"])
