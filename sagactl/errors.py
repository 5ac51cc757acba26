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

# Connection failures that are not transient but still mean "cannot reach the database".
_CONNECT_ERRORS = frozenset(
    {
        "InvalidPasswordError",
        "InvalidAuthorizationSpecificationError",
        "InvalidCatalogNameError",
        "ConnectionRefusedError",
        "gaierror",
    }
)


class CliError(Exception):
    """An error with the exit code and the message to show (no traceback)."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        orig = getattr(cur, "orig", None)
        cur = orig if isinstance(orig, BaseException) else (cur.__cause__ or cur.__context__)
    return seen


def _unreachable(exc: BaseException) -> bool:
    from sqlalchemy.exc import ProgrammingError

    from saga_core.errors import is_transient

    for e in _chain(exc):
        if type(e).__name__ in _CONNECT_ERRORS:
            return True
        if is_transient(e) and not isinstance(e, ProgrammingError):
            return True
    return False


def _missing_table(exc: BaseException) -> bool:
    text = " ".join(str(e) for e in _chain(exc)).lower()
    names = {type(e).__name__ for e in _chain(exc)}
    return "UndefinedTableError" in names or "no such table" in text


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
    if _missing_table(exc):
        first = str(_chain(exc)[-1]).strip().splitlines()[0]
        return (
            ExitCode.ERROR,
            f"the saga tables are missing ({first}); create them with `sagactl db upgrade`",
        )
    if _unreachable(exc):
        last = _chain(exc)[-1]
        detail = str(last).strip().splitlines()[0] if str(last).strip() else type(last).__name__
        return ExitCode.UNREACHABLE, f"database unreachable: {detail}"
    if isinstance(exc, SagaStoreError):
        return ExitCode.ERROR, str(exc)
    if isinstance(exc, SagaError):
        return ExitCode.ERROR, str(exc)
    if isinstance(exc, DBAPIError):
        detail = str(exc.orig or exc).strip().splitlines()[0]
        return ExitCode.ERROR, f"database error: {detail}"
    return ExitCode.ERROR, f"unexpected error: {type(exc).__name__}: {exc}"
