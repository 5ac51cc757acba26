"""Errors the CLI reports, and how every exception maps to an exit code and a message."""

from __future__ import annotations

from sagactl.exitcodes import ExitCode
from sagactl.timeparse import TimeArgError

# SQLAlchemy and saga_core are imported inside the functions below: ``CliError`` is needed
# by every command module, which ``sagactl --help`` imports (see ``runtime``).

__all__ = ["NO_URL_MESSAGE", "CliError", "classify"]

NO_URL_MESSAGE = (
    "no database URL configured; give one with --database-url URL, the SAGA_DATABASE_URL "
    "environment variable, or database_url in the config file (--config FILE or "
    "$SAGA_CONFIG), e.g. postgresql+asyncpg://user@host/db or sqlite+aiosqlite:///path/saga.db "
    "(sagactl never guesses one: a default SQLite file would be created empty)"
)

_REFUSED_HINTS = {
    "AUTHENTICATION": "check the user and password (--database-url, database_password_file) "
    "and pg_hba.conf",
    "NO_DATABASE": "check the database name in the URL (--database-url, SAGA_DATABASE_URL or "
    "the config file)",
    "PRIVILEGE": "the role lacks a privilege on the saga tables (docs/security.md: Security: database roles)",
    "CONFIGURATION": "check the database URL (host, SSL settings, file path)",
}


class CliError(Exception):
    """An error with the exit code and the message to show (no traceback)."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


def _database(exc: BaseException) -> tuple[ExitCode, str] | None:
    """Exit code and message for a database error; ``None`` for any other error."""
    from saga_core.errors import DbProblem, classify_db_error

    info = classify_db_error(exc)
    code = f" ({info.sqlstate})" if info.sqlstate else ""
    if info.problem is DbProblem.SCHEMA:
        return (
            ExitCode.ERROR,
            f"the saga tables are missing or outdated ({info.detail}{code}); create or "
            "upgrade them with `sagactl db upgrade`",
        )
    if info.problem is not None and info.problem.name in _REFUSED_HINTS:
        return (
            ExitCode.REFUSED,
            f"{info.problem.value}: {info.detail}{code}; {_REFUSED_HINTS[info.problem.name]}",
        )
    if info.transient:
        return ExitCode.UNREACHABLE, f"database unreachable: {info.detail}{code}"
    return None


def classify(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code and a one-paragraph message for ``exc``."""
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, TimeArgError):
        return ExitCode.USAGE, str(exc)
    from sqlalchemy.exc import DBAPIError

    from saga_core.errors import (
        SagaError,
        SagaInputError,
        SagaNotFoundError,
        SagaStateError,
        SagaStoreError,
    )
    from saga_core.settings import SettingsError

    if isinstance(exc, SettingsError):
        return ExitCode.USAGE, str(exc)
    if isinstance(exc, SagaNotFoundError):
        return ExitCode.NOT_FOUND, str(exc)
    if isinstance(exc, SagaStateError):
        return ExitCode.ILLEGAL, str(exc)
    if isinstance(exc, SagaInputError):
        # pydantic's "For further information visit <url>" lines are noise at a terminal.
        lines = [ln for ln in str(exc).splitlines() if "errors.pydantic.dev" not in ln]
        return ExitCode.USAGE, "\n".join(lines)
    found = _database(exc)
    if found is not None:
        return found
    if isinstance(exc, SagaStoreError | SagaError):
        return ExitCode.ERROR, str(exc)
    if isinstance(exc, DBAPIError):
        detail = str(exc.orig or exc).strip().splitlines()[0]
        return ExitCode.ERROR, f"database error: {detail}"
    if type(exc).__module__.partition(".")[0] in ("asyncpg", "sqlite3"):
        # The same error raised by the bare driver (``list`` reads through SagaReader),
        # not wrapped by SQLAlchemy: worded as above.
        lines = str(exc).strip().splitlines()
        return ExitCode.ERROR, f"database error: {lines[0] if lines else type(exc).__name__}"
    return ExitCode.ERROR, f"unexpected error: {type(exc).__name__}: {exc}"
