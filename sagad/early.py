"""A stop before ``sagad run`` is ready: the handler its console entry point installs first.

:func:`install` runs in the first lines of :func:`sagad.cli.main`, before typer, pydantic,
SQLAlchemy and the application are imported. Until :func:`sagad.daemon.serve` installs the
daemon's own handlers (once the application is imported), SIGTERM and SIGINT write one log
line, ``stopped before ready``, and end the process with exit code 0 at once: nothing has
reached the database or the registry yet, so there is nothing to undo, and a slow or stuck
import cannot hold the stop up. After that the daemon's handlers cancel the rest of start-up
(see :func:`sagad.daemon.serve`), with the same line.

The handler only uses modules imported before it is installed (``os``, ``signal``, ``sys``,
``time``): it may interrupt any import, so it must not import anything itself.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

__all__ = ["MESSAGE", "STOP_SIGNALS", "install", "line", "use_format"]

MESSAGE = "stopped before ready"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_format: dict[str, object] = {"json": False, "time": True}
"""How the line is written: plain text with a local timestamp until the settings have been
read, then the format of the daemon's own logs (:func:`use_format`)."""


def install() -> None:
    """Handle SIGTERM/SIGINT from now until the daemon installs its own handlers."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)


def use_format(fmt: str, *, with_time: bool, journal: bool = False) -> None:
    """Write the line like the daemon's logs (``text`` or ``json``; ``with_time`` for text;
    ``journal``: text with the syslog priority prefix journald reads, ``<6>`` for INFO)."""
    _format.update(json=fmt == "json", time=with_time, journal=journal)


def line(now: float) -> str:
    """The log line (with its newline) for a stop at ``now`` (``time.time()``)."""
    ms = int(now * 1000) % 1000
    if _format["json"]:
        # What sagad.logs' JSON sink writes: ts in UTC, ISO 8601 with microseconds.
        us = int(now * 1_000_000) % 1_000_000
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{us:06d}+00:00"
        return (
            f'{{"ts": "{ts}", "level": "INFO", "message": "{MESSAGE}", "logger": "{__name__}"}}\n'
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{ms:03d} | "
    prefix = "<6>" if _format.get("journal") else (stamp if _format["time"] else "")
    return prefix + f"{'INFO':<8} | {MESSAGE}\n"


def _stop(signum: int, frame: FrameType | None) -> None:
    for stream in (sys.stdout, sys.stderr):
        _flush(stream)
    try:
        os.write(2, line(time.time()).encode())
    finally:
        os._exit(0)


def _flush(stream: object) -> None:
    """Write out what was buffered so far; this fails when the signal interrupted a write to
    that stream (or there is none), and then there is nothing to do."""
    try:
        stream.flush()  # type: ignore[attr-defined]
    except Exception:
        return
