"""Database plumbing shared by the examples."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

__all__ = ["async_url", "session_maker"]


def async_url(url: str) -> str:
    """``url`` with the async driver saga_core needs: ``sqlite://`` becomes
    ``sqlite+aiosqlite://`` and ``postgresql://`` becomes ``postgresql+asyncpg://``."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def session_maker(database_url: str) -> async_sessionmaker[AsyncSession]:
    """An ``async_sessionmaker`` on a new engine for ``database_url`` (see :func:`async_url`)."""
    return async_sessionmaker(create_async_engine(async_url(database_url)), expire_on_commit=False)
