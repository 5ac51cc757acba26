"""Exit codes and the errors that end ``sagad`` with one of them.

``sysexits.h`` values, so systemd and shell scripts can tell the cases apart::

    0   EXIT_OK           clean stop (signal, drained)
    1   EXIT_CRASH        an unexpected error
    64  EXIT_USAGE        a mistyped command line (EX_USAGE)
    75  EXIT_UNAVAILABLE  the database was unreachable at start, after retries (EX_TEMPFAIL)
    78  EXIT_CONFIG       invalid configuration, unloadable app, missing schema, or a
                          permanent database error: authentication failed, unknown database,
                          missing privilege (at start, or for ``permanent_error_timeout``
                          while running) (EX_CONFIG)
"""

from __future__ import annotations

__all__ = [
    "EXIT_CONFIG",
    "EXIT_CRASH",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "ConfigError",
    "DatabaseRefusedError",
    "DatabaseUnavailableError",
    "SagadError",
    "SchemaError",
]

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_USAGE = 64
EXIT_UNAVAILABLE = 75
EXIT_CONFIG = 78


class SagadError(Exception):
    """An expected reason to stop; ``lines`` are printed one per line, then ``sagad`` exits
    with ``exit_code``."""

    exit_code = EXIT_CRASH

    def __init__(self, *lines: str) -> None:
        super().__init__("; ".join(lines))
        self.lines = list(lines)


class ConfigError(SagadError):
    """Settings, the app path or the app itself are wrong: fix the configuration."""

    exit_code = EXIT_CONFIG


class SchemaError(SagadError):
    """The saga tables are missing or outdated: run ``sagactl db upgrade``."""

    exit_code = EXIT_CONFIG


class DatabaseUnavailableError(SagadError):
    """The database did not answer within ``startup_timeout``."""

    exit_code = EXIT_UNAVAILABLE


class DatabaseRefusedError(SagadError):
    """A permanent database error: wrong credentials, unknown database, missing privilege or
    table. Retrying cannot help; restarting cannot either (exit 78, not restarted)."""

    exit_code = EXIT_CONFIG
