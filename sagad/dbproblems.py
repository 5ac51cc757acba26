"""How ``sagad`` words a database error, and which exit it leads to."""

from __future__ import annotations

from saga_core.dberrors import DbErrorInfo, DbProblem

__all__ = ["describe", "hint"]

_HINTS = {
    DbProblem.AUTHENTICATION: "check the user and password (database_url, "
    "database_password_file) and pg_hba.conf",
    DbProblem.NO_DATABASE: "check the database name in database_url, or create the database",
    DbProblem.PRIVILEGE: "grant the worker role its privileges (docs/security.md: Security: database roles)",
    DbProblem.SCHEMA: "run `sagactl db upgrade`",
    DbProblem.CONFIGURATION: "check database_url (host, SSL settings, file path and permissions)",
}


def hint(info: DbErrorInfo) -> str:
    """What to do about a permanent problem ('' for the others)."""
    return _HINTS.get(info.problem, "")


def describe(info: DbErrorInfo) -> str:
    """``<problem>: <driver message> (<sqlstate>)`` on one line (an unreachable server's
    message, "Connection refused", says it all by itself)."""
    code = f" ({info.sqlstate})" if info.sqlstate else ""
    text = info.detail if info.problem is DbProblem.UNREACHABLE and info.detail else str(info)
    return f"{text}{code}"
