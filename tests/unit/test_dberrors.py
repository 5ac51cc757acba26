"""The classification of database errors, on exceptions of the real driver classes (the
integration test ``test_dberrors_real.py`` provokes the ones a test server can produce)."""

from __future__ import annotations

import socket
import sqlite3
import ssl

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from saga_core.checkpoint import is_transient as checkpoint_is_transient
from saga_core.dberrors import (
    DbErrorKind,
    DbProblem,
    classify_db_error,
    is_permanent,
    is_transient,
)


def _sqlite(message: str, name: str | None = None) -> sqlite3.Error:
    exc = sqlite3.OperationalError(message)
    if name is not None:
        exc.sqlite_errorname = name  # type: ignore[attr-defined]
    return exc


def _wrapped(orig: BaseException, cls: type[DBAPIError] = DBAPIError) -> DBAPIError:
    return cls("SELECT 1", {}, orig)


CASES: list[tuple[BaseException, DbProblem]] = [
    (asyncpg.InvalidPasswordError("password authentication failed"), DbProblem.AUTHENTICATION),
    (
        asyncpg.InvalidAuthorizationSpecificationError("no pg_hba.conf entry"),
        DbProblem.AUTHENTICATION,
    ),
    (asyncpg.InvalidCatalogNameError('database "x" does not exist'), DbProblem.NO_DATABASE),
    (asyncpg.InsufficientPrivilegeError("permission denied"), DbProblem.PRIVILEGE),
    (asyncpg.UndefinedTableError('relation "t" does not exist'), DbProblem.SCHEMA),
    (asyncpg.UndefinedColumnError("column does not exist"), DbProblem.SCHEMA),
    (asyncpg.InvalidSchemaNameError("schema does not exist"), DbProblem.SCHEMA),
    (asyncpg.TooManyConnectionsError("sorry, too many clients already"), DbProblem.OVERLOADED),
    (asyncpg.CannotConnectNowError("the database system is starting up"), DbProblem.RESTARTING),
    (asyncpg.AdminShutdownError("terminating connection"), DbProblem.RESTARTING),
    (asyncpg.CrashShutdownError("crash of another server process"), DbProblem.RESTARTING),
    (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), DbProblem.TIMEOUT),
    (asyncpg.DeadlockDetectedError("deadlock detected"), DbProblem.CONFLICT),
    (asyncpg.SerializationError("could not serialize access"), DbProblem.CONFLICT),
    (asyncpg.LockNotAvailableError("could not obtain lock"), DbProblem.LOCKED),
    (asyncpg.ReadOnlySQLTransactionError("read-only transaction"), DbProblem.READ_ONLY),
    (asyncpg.ConnectionDoesNotExistError("connection was closed"), DbProblem.UNREACHABLE),
    (asyncpg.InterfaceError("connection is closed"), DbProblem.UNREACHABLE),
    (asyncpg.exceptions.ClientConfigurationError("bad sslmode"), DbProblem.CONFIGURATION),
    (asyncpg.UniqueViolationError("duplicate key"), DbProblem.OTHER),
    (ConnectionRefusedError(111, "Connection refused"), DbProblem.UNREACHABLE),
    (ConnectionResetError(104, "Connection reset by peer"), DbProblem.UNREACHABLE),
    (socket.gaierror(-2, "Name or service not known"), DbProblem.UNREACHABLE),
    (TimeoutError(), DbProblem.TIMEOUT),
    (PermissionError(13, "Permission denied"), DbProblem.CONFIGURATION),
    (
        ConnectionError('PostgreSQL server at "h:5432" rejected SSL upgrade'),
        DbProblem.CONFIGURATION,
    ),
    (ssl.SSLCertVerificationError("certificate verify failed"), DbProblem.CONFIGURATION),
    (_sqlite("database is locked", "SQLITE_BUSY"), DbProblem.LOCKED),
    (_sqlite("database is locked"), DbProblem.LOCKED),
    (_sqlite("unable to open database file", "SQLITE_CANTOPEN"), DbProblem.CONFIGURATION),
    (
        _sqlite("attempt to write a readonly database", "SQLITE_READONLY_DBMOVED"),
        DbProblem.CONFIGURATION,
    ),
    (_sqlite("no such table: saga_state", "SQLITE_ERROR"), DbProblem.SCHEMA),
    (_sqlite("disk I/O error", "SQLITE_IOERR"), DbProblem.UNAVAILABLE),
    (ValueError("not a database error"), DbProblem.OTHER),
    (PoolTimeoutError("QueuePool limit reached"), DbProblem.TIMEOUT),
]


@pytest.mark.parametrize(("exc", "problem"), CASES, ids=lambda v: type(v).__name__)
def test_each_error_and_its_sqlalchemy_wrapping_is_classified(
    exc: BaseException, problem: DbProblem
) -> None:
    assert classify_db_error(exc).problem is problem
    # SQLAlchemy keeps the driver's error in .orig; an error raised while handling another
    # keeps it in __cause__: both are looked through.
    assert classify_db_error(_wrapped(exc)).problem is problem
    try:
        try:
            raise exc
        except BaseException as inner:
            raise RuntimeError("while talking to the database") from inner
    except RuntimeError as outer:
        assert classify_db_error(outer).problem is problem


def test_kinds_and_the_helpers_agree() -> None:
    for exc, problem in CASES:
        info = classify_db_error(exc)
        assert info.kind is problem.kind
        assert is_transient(exc) is (problem.kind is DbErrorKind.TRANSIENT)
        assert is_permanent(exc) is (problem.kind is DbErrorKind.PERMANENT)
        assert checkpoint_is_transient(exc) is is_transient(exc), "the old name delegates"


def test_the_sqlstate_is_kept_and_the_driver_message_preferred() -> None:
    orig = asyncpg.InvalidCatalogNameError('database "nope" does not exist')
    info = classify_db_error(_wrapped(orig))
    assert info.sqlstate == "3D000" and info.detail == 'database "nope" does not exist'
    assert str(info) == 'database does not exist: database "nope" does not exist'
    assert info.permanent and not info.transient


def test_sqlalchemy_flags_decide_when_the_driver_says_nothing() -> None:
    plain = OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    assert classify_db_error(plain).problem is DbProblem.UNAVAILABLE
    invalidated = DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert classify_db_error(invalidated).problem is DbProblem.UNREACHABLE
    # A disconnect seen by the dialect wins over whatever code the error carries.
    revoked_then_gone = DBAPIError(
        "SELECT 1",
        {},
        asyncpg.InsufficientPrivilegeError("permission denied"),
        connection_invalidated=True,
    )
    assert classify_db_error(revoked_then_gone).problem is DbProblem.UNREACHABLE
    # A DBAPIError without any code: the words of a connection going away.
    adapted = DBAPIError("SELECT 1", {}, Exception("the connection was closed mid-query"))
    assert classify_db_error(adapted).problem is DbProblem.UNAVAILABLE
    assert classify_db_error(DBAPIError("SELECT 1", {}, Exception("odd"))).kind is DbErrorKind.OTHER
    assert (
        classify_db_error(IntegrityError("INSERT", {}, Exception("dup"))).kind is DbErrorKind.OTHER
    )
    assert (
        classify_db_error(ProgrammingError("SELECT", {}, Exception("syntax"))).kind
        is DbErrorKind.OTHER
    )
