"""What a database error means for whoever retries: gone in a moment, or there until someone
acts.

:func:`classify_db_error` looks through an exception and what it wraps (SQLAlchemy's
``DBAPIError.orig``, ``__cause__``, ``__context__``) for the most precise evidence there is:

0. SQLAlchemy's ``connection_invalidated`` (the dialect saw a disconnect): unreachable;
1. a PostgreSQL SQLSTATE (SQLAlchemy's asyncpg adapter and asyncpg's own errors carry one);
2. an SQLite result code (``sqlite3.Error.sqlite_errorname``) or, failing that, its message;
3. the Python type: ``OSError`` and ``TimeoutError`` (a refused or reset connection, an
   unknown host, a timeout), asyncpg's client-side errors by name;
4. SQLAlchemy's own types (a pool timeout, an operational or interface error) and, for any
   other ``DBAPIError``, words of a connection going away in its message.

::

    PERMANENT   retrying cannot help; a person must fix something
                AUTHENTICATION  28P01 wrong password, 28000 unknown role or no pg_hba entry
                NO_DATABASE     3D000 the database does not exist
                PRIVILEGE       42501 permission denied (a revoked GRANT)
                SCHEMA          42P01/42703/3F000/42704/42883 a missing table, column, schema,
                                object or function; SQLite "no such table/column"
                CONFIGURATION   SSL refused or certificate rejected, bad client settings,
                                an SQLite file that cannot be opened, is read-only or is not
                                a database
    TRANSIENT   may go away by itself: retry with backoff
                UNREACHABLE     refused/reset connection, unknown host, SQLSTATE class 08,
                                a connection found closed or invalidated
                OVERLOADED      class 53: "too many clients" (53300), out of memory or disk
                RESTARTING      57P01/57P02 administrator or crash shutdown, 57P03 starting up
                TIMEOUT         timeouts, 57014 statement timeout or cancel, pool exhausted
                LOCKED          SQLite "database is locked" (busy), 55P03 lock not available
                CONFLICT        40001 serialization failure, 40P01 deadlock
                READ_ONLY       25006 a read-only transaction (a standby during failover)
                UNAVAILABLE     any other operational or interface error
    OTHER       anything else: a constraint violation, a bug, a non-database error

The module imports nothing but the standard library (it names driver errors rather than
importing drivers), so every layer — the checkpoint writer, ``sagad``, ``sagactl`` — shares it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DbErrorInfo",
    "DbErrorKind",
    "DbProblem",
    "classify_db_error",
    "is_permanent",
    "is_transient",
]


class DbErrorKind(StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    OTHER = "other"


class DbProblem(StrEnum):
    """Why a database call failed; the value is the phrase shown to people."""

    AUTHENTICATION = "authentication failed"
    NO_DATABASE = "database does not exist"
    PRIVILEGE = "permission denied"
    SCHEMA = "missing table, column or schema"
    CONFIGURATION = "connection settings rejected"
    UNREACHABLE = "unreachable"
    OVERLOADED = "out of connections or resources"
    RESTARTING = "server shutting down or starting up"
    TIMEOUT = "timed out"
    LOCKED = "database locked"
    CONFLICT = "transaction conflict"
    READ_ONLY = "read-only (a standby?)"
    UNAVAILABLE = "database unavailable"
    OTHER = "database error"

    @property
    def kind(self) -> DbErrorKind:
        if self in _PERMANENT:
            return DbErrorKind.PERMANENT
        if self is DbProblem.OTHER:
            return DbErrorKind.OTHER
        return DbErrorKind.TRANSIENT


_PERMANENT = frozenset(
    {
        DbProblem.AUTHENTICATION,
        DbProblem.NO_DATABASE,
        DbProblem.PRIVILEGE,
        DbProblem.SCHEMA,
        DbProblem.CONFIGURATION,
    }
)


@dataclass(frozen=True)
class DbErrorInfo:
    """The verdict on one exception."""

    problem: DbProblem
    detail: str
    """The first line of the most specific message found (the driver's, not SQLAlchemy's
    wrapper with its SQL and parameters). Database servers never echo passwords."""
    sqlstate: str | None = None

    @property
    def kind(self) -> DbErrorKind:
        return self.problem.kind

    @property
    def permanent(self) -> bool:
        return self.kind is DbErrorKind.PERMANENT

    @property
    def transient(self) -> bool:
        return self.kind is DbErrorKind.TRANSIENT

    def __str__(self) -> str:
        return f"{self.problem.value}: {self.detail}" if self.detail else self.problem.value


_SQLSTATES: dict[str, DbProblem] = {
    "28P01": DbProblem.AUTHENTICATION,
    "28000": DbProblem.AUTHENTICATION,
    "3D000": DbProblem.NO_DATABASE,
    "42501": DbProblem.PRIVILEGE,
    "42P01": DbProblem.SCHEMA,
    "42703": DbProblem.SCHEMA,
    "42704": DbProblem.SCHEMA,
    "42883": DbProblem.SCHEMA,
    "3F000": DbProblem.SCHEMA,
    "57P01": DbProblem.RESTARTING,
    "57P02": DbProblem.RESTARTING,
    "57P03": DbProblem.RESTARTING,
    "57014": DbProblem.TIMEOUT,
    "55P03": DbProblem.LOCKED,
    "40001": DbProblem.CONFLICT,
    "40P01": DbProblem.CONFLICT,
    "25006": DbProblem.READ_ONLY,
}
_SQLSTATE_CLASSES: dict[str, DbProblem] = {
    "08": DbProblem.UNREACHABLE,
    "28": DbProblem.AUTHENTICATION,
    "53": DbProblem.OVERLOADED,
}

# SQLite primary result codes (extended codes such as SQLITE_BUSY_SNAPSHOT share the prefix).
_SQLITE_CODES: dict[str, DbProblem] = {
    "SQLITE_BUSY": DbProblem.LOCKED,
    "SQLITE_LOCKED": DbProblem.LOCKED,
    "SQLITE_CANTOPEN": DbProblem.CONFIGURATION,
    "SQLITE_READONLY": DbProblem.CONFIGURATION,
    "SQLITE_PERM": DbProblem.CONFIGURATION,
    "SQLITE_AUTH": DbProblem.CONFIGURATION,
    "SQLITE_NOTADB": DbProblem.CONFIGURATION,
    "SQLITE_CORRUPT": DbProblem.CONFIGURATION,
    "SQLITE_IOERR": DbProblem.UNAVAILABLE,
    "SQLITE_FULL": DbProblem.OVERLOADED,
}
_SQLITE_MESSAGES: tuple[tuple[str, DbProblem], ...] = (
    ("database is locked", DbProblem.LOCKED),
    ("database table is locked", DbProblem.LOCKED),
    ("no such table", DbProblem.SCHEMA),
    ("no such column", DbProblem.SCHEMA),
    ("unable to open database file", DbProblem.CONFIGURATION),
    ("attempt to write a readonly database", DbProblem.CONFIGURATION),
    ("file is not a database", DbProblem.CONFIGURATION),
)

# Words of a driver message about a connection or a server going away, for a DBAPIError that
# carries no code (an adapted error without a SQLSTATE).
_UNAVAILABLE_MARKERS = (
    "connection",
    "terminating",
    "shutting down",
    "starting up",
    "recovery mode",
    "closed",
    "too many clients",
)

# asyncpg's client-side errors, by name: saga_core imports no driver.
_CLIENT_NAMES: dict[str, DbProblem] = {
    "ConnectionDoesNotExistError": DbProblem.UNREACHABLE,
    "ClientConfigurationError": DbProblem.CONFIGURATION,
    "InvalidPasswordError": DbProblem.AUTHENTICATION,
    "InvalidAuthorizationSpecificationError": DbProblem.AUTHENTICATION,
    "InvalidCatalogNameError": DbProblem.NO_DATABASE,
    "CannotConnectNowError": DbProblem.RESTARTING,
    "TooManyConnectionsError": DbProblem.OVERLOADED,
    "PostgresConnectionError": DbProblem.UNREACHABLE,
}


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps, outermost first (``orig`` before ``__cause__``)."""
    out: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(out) < 16:
        cur = todo.pop(0)
        if any(cur is seen for seen in out):
            continue
        out.append(cur)
        orig = getattr(cur, "orig", None)
        for nxt in (orig, cur.__cause__, cur.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return out


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def _sqlstate(exc: BaseException) -> str | None:
    for attr in ("sqlstate", "pgcode"):
        code = getattr(exc, attr, None)
        if isinstance(code, str) and len(code) == 5:
            return code.upper()
    return None


def _by_sqlstate(code: str) -> DbProblem:
    found = _SQLSTATES.get(code) or _SQLSTATE_CLASSES.get(code[:2])
    return found or DbProblem.OTHER


def _by_sqlite(exc: BaseException) -> DbProblem | None:
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        for prefix, problem in _SQLITE_CODES.items():
            if name == prefix or name.startswith(prefix + "_"):
                return problem
    if type(exc).__module__ == "sqlite3":
        text = str(exc).lower()
        for marker, problem in _SQLITE_MESSAGES:
            if marker in text:
                return problem
        if type(exc).__name__ == "OperationalError":
            return DbProblem.UNAVAILABLE
    return None


def _by_type(exc: BaseException) -> DbProblem | None:
    name = type(exc).__name__
    text = str(exc).lower()
    if name in _CLIENT_NAMES:
        return _CLIENT_NAMES[name]
    if name == "InterfaceError" and "closed" in text:
        return DbProblem.UNREACHABLE
    if name == "InternalClientError" and "in progress" in text:
        # The server ended the backend while asyncpg was mid-operation (pg_terminate_backend,
        # a restart): nothing was committed by this call.
        return DbProblem.UNREACHABLE
    if name == "SSLCertVerificationError" or "rejected ssl upgrade" in text:
        return DbProblem.CONFIGURATION
    if isinstance(exc, TimeoutError):
        return DbProblem.TIMEOUT
    if isinstance(exc, PermissionError):  # a Unix socket or file we may not open
        return DbProblem.CONFIGURATION
    if isinstance(exc, OSError):  # ConnectionError, socket.gaierror, ssl.SSLError...
        return DbProblem.UNREACHABLE
    return None


def _by_sqlalchemy(exc: BaseException) -> DbProblem | None:
    module = type(exc).__module__
    if not module.startswith("sqlalchemy"):
        return None
    name = type(exc).__name__
    if name == "TimeoutError":  # the pool had no connection to give in time
        return DbProblem.TIMEOUT
    if name in ("OperationalError", "InterfaceError"):
        return DbProblem.UNAVAILABLE
    if hasattr(exc, "orig"):  # another DBAPIError with nothing more precise in it
        text = " ".join(_first_line(e) for e in _chain(exc)).lower()
        if any(marker in text for marker in _UNAVAILABLE_MARKERS):
            return DbProblem.UNAVAILABLE
    return None


def classify_db_error(exc: BaseException) -> DbErrorInfo:
    """The problem behind ``exc`` (see the module docstring for the rules)."""
    chain = _chain(exc)
    detail = _first_line(chain[-1])
    # SQLAlchemy asked the dialect and was told the connection is gone: whatever the error
    # says otherwise, the next attempt gets a new connection.
    for e in chain:
        if getattr(e, "connection_invalidated", False) is True:
            return DbErrorInfo(DbProblem.UNREACHABLE, _first_line(chain[-1]), _sqlstate(e))
    # Otherwise the most precise evidence wins, wherever it sits in the chain.
    for e in chain:
        code = _sqlstate(e)
        if code is not None:
            return DbErrorInfo(_by_sqlstate(code), _first_line(e), code)
    for finder in (_by_sqlite, _by_type, _by_sqlalchemy):
        for e in chain:
            problem = finder(e)
            if problem is not None:
                return DbErrorInfo(problem, _first_line(e))
    return DbErrorInfo(DbProblem.OTHER, detail)


def is_transient(exc: BaseException) -> bool:
    """A database error that may go away by itself: retry it with backoff."""
    return classify_db_error(exc).transient


def is_permanent(exc: BaseException) -> bool:
    """A database error that stays until someone fixes the configuration, the privileges or
    the schema: retrying cannot help."""
    return classify_db_error(exc).permanent
