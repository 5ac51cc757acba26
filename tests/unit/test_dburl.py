"""``saga_core.dburl`` reads the plain URL shapes without SQLAlchemy: every URL it accepts
must be read exactly as SQLAlchemy's ``make_url`` reads it, and the settings normalise it as
before (the driver spelled out)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from saga_core.dburl import _PG, _SQLITE, simple_url, with_driver
from saga_core.settings import SagaSettings


def _same_as_sqlalchemy(url: str) -> None:
    simple = simple_url(url)
    if simple is None:
        return
    sa = make_url(url)
    assert not sa.query
    if simple.dialect == "postgresql":
        assert (sa.username, sa.password, sa.host, sa.port, sa.database) == (
            simple.user,
            simple.password,
            simple.host,
            simple.port,
            simple.database,
        )
    else:
        assert sa.database == simple.path
    normalised = with_driver(url, simple)
    assert make_url(normalised).drivername in ("postgresql+asyncpg", "sqlite+aiosqlite")
    assert make_url(normalised).set(drivername="x") == sa.set(drivername="x")


@settings(max_examples=400)
@given(st.from_regex(_PG, fullmatch=True) | st.from_regex(_SQLITE, fullmatch=True))
def test_every_simple_url_reads_as_sqlalchemy_reads_it(url: str) -> None:
    _same_as_sqlalchemy(url)


def test_examples() -> None:
    s = simple_url("postgresql://app:s%40cret@db.internal:6432/orders")
    assert s is not None
    assert (s.user, s.password, s.host, s.port, s.database) == (
        "app",
        "s@cret",
        "db.internal",
        6432,
        "orders",
    )
    assert simple_url("sqlite:////var/lib/app/saga.db") is not None
    for other in (
        "postgresql+asyncpg://u@h/db?ssl=require",  # options: SQLAlchemy reads them
        "postgresql+asyncpg:///db",  # a unix socket
        "postgres+asyncpg://u@h/db",  # not a driver SQLAlchemy knows
        "postgresql+psycopg://u@h/db",
        "postgresql://u@h:99999/db",
        "sqlite+aiosqlite:///:memory:",
        "sqlite://",
        "mysql://u@h/db",
    ):
        assert simple_url(other) is None, other
        _same_as_sqlalchemy(other)


def test_settings_normalise_as_before() -> None:
    cases = {
        "postgresql://u:p@h/db": "postgresql+asyncpg://u:p@h/db",
        "postgres://u@h:5433/db": "postgresql+asyncpg://u@h:5433/db",
        "sqlite:///x.db": "sqlite+aiosqlite:///x.db",
        "sqlite+aiosqlite:////abs/x.db": "sqlite+aiosqlite:////abs/x.db",
        "postgresql+asyncpg://u@h/db?ssl=require": "postgresql+asyncpg://u@h/db?ssl=require",
    }
    for given_url, want in cases.items():
        assert SagaSettings(database_url=given_url).database_url == want
