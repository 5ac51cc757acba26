"""Plain database URLs read without SQLAlchemy.

SQLAlchemy's import alone takes about 0.3 s, longer than a console command should take
(``sagactl list``). The URLs most deployments use — ``postgresql+asyncpg://user:pw@host:port/db``
and ``sqlite+aiosqlite:///path`` — are read here by a strict pattern: every URL it accepts
is one that SQLAlchemy's ``make_url`` reads the same way. Anything else (query options, a
unix socket, unusual characters) is not "simple": the caller uses ``make_url``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["SimpleUrl", "simple_url", "with_driver"]

_PG = re.compile(
    r"(?:postgresql\+asyncpg|postgresql|postgres)://"
    r"(?:(?P<user>[A-Za-z0-9_.~%-]+)(?::(?P<password>[A-Za-z0-9_.~%!$&'()*+,;=-]*))?@)?"
    r"(?P<host>[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?"
    r"/(?P<database>[A-Za-z0-9_.-]+)"
)
_SQLITE = re.compile(r"(?:sqlite\+aiosqlite|sqlite):///(?P<path>[^?#\x00]+)")


@dataclass(frozen=True)
class SimpleUrl:
    """A URL of one of the two plain shapes, with its parts decoded."""

    dialect: str
    """``postgresql`` or ``sqlite``."""
    user: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    path: str | None = None
    """SQLite: the database file, as SQLAlchemy reads it (relative to the working directory
    unless it starts with ``/``)."""


def simple_url(url: str) -> SimpleUrl | None:
    """``url`` read as a plain PostgreSQL or SQLite URL (any of the accepted driver
    spellings), or ``None`` when it is not one of those shapes."""
    m = _PG.fullmatch(url)
    if m is not None:
        port = int(m["port"]) if m["port"] else None
        if port is not None and not 0 < port < 65536:
            return None
        return SimpleUrl(
            dialect="postgresql",
            user=unquote(m["user"]) if m["user"] else None,
            password=unquote(m["password"]) if m["password"] is not None else None,
            host=m["host"],
            port=port,
            database=m["database"],
        )
    m = _SQLITE.fullmatch(url)
    if m is not None:
        path = unquote(m["path"])
        return (
            None if path in ("", ":memory:") or "\x00" in path else SimpleUrl("sqlite", path=path)
        )
    return None


def with_driver(url: str, simple: SimpleUrl) -> str:
    """``url`` (a simple URL) with the driver saga_core uses spelled out."""
    scheme, rest = url.split("://", 1)
    driver = "postgresql+asyncpg" if simple.dialect == "postgresql" else "sqlite+aiosqlite"
    return url if scheme == driver else f"{driver}://{rest}"
