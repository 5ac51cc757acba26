"""Standard ``logging`` records (saga_core's, SQLAlchemy's, asyncpg's) into loguru, on
standard error, from WARNING up: what the library warns about during a command (a database
blip it retried, say) reaches the operator instead of being dropped by the library's
``NullHandler``. loguru is imported by the first record, so a command that logs nothing
starts without it."""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["route_standard_logging"]

_FORMAT = "sagactl: {level}: {message}\n{exception}"


class _ToLoguru(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._logger: Any = None

    def _loguru(self) -> Any:
        if self._logger is None:
            from loguru import logger

            logger.remove()
            logger.add(sys.stderr, level="WARNING", format=_FORMAT, colorize=False)
            self._logger = logger
        return self._logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = self._loguru()
            try:
                level: str | int = logger.level(record.levelname).name
            except ValueError:
                level = record.levelno
            logger.opt(exception=record.exc_info).log(level, record.getMessage())
        except Exception:
            self.handleError(record)


def route_standard_logging() -> None:
    """Install the route (once); WARNING and above."""
    root = logging.getLogger()
    if not any(isinstance(h, _ToLoguru) for h in root.handlers):
        root.addHandler(_ToLoguru())
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
