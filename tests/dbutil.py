"""Helpers for turning PostgreSQL URLs into the forms the tests need.

Importable from any test as ``from dbutil import plain_dsn`` (``tests/`` is on
``pythonpath`` in pyproject.toml).
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url

ASYNC_DRIVER = "postgresql+asyncpg"
_ACCEPTED_SCHEMES = ("postgresql", "postgres")


def _parse(url: str | URL) -> URL:
    parsed = make_url(url) if isinstance(url, str) else url
    backend = parsed.drivername.split("+", 1)[0]
    if backend not in _ACCEPTED_SCHEMES:
        raise ValueError(
            f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)!r} "
            "(expected postgresql://, postgresql+asyncpg:// or postgres://)"
        )
    return parsed


def async_url(url: str | URL, *, database: str | None = None) -> str:
    """Return ``url`` as a SQLAlchemy ``postgresql+asyncpg://`` URL string.

    Accepts ``postgresql://``, ``postgres://`` and ``postgresql+<driver>://``.
    ``database`` replaces the database part when given.
    """
    parsed = _parse(url).set(drivername=ASYNC_DRIVER)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def plain_dsn(url: str | URL, *, database: str | None = None) -> str:
    """Return ``url`` as a plain libpq-style ``postgresql://`` DSN.

    The result is usable by asyncpg.connect(), psycopg, psql and subprocesses.
    ``database`` replaces the database part when given.
    """
    parsed = _parse(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def database_name(url: str | URL) -> str | None:
    """Return the database part of ``url`` (``None`` when it has none)."""
    return _parse(url).database
