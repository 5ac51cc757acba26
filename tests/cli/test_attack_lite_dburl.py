"""Every URL ``saga_core.dburl.simple_url`` accepts is read as SQLAlchemy's ``make_url``
reads it (held: random URLs over the characters either grammar treats specially)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from saga_core.dburl import simple_url

SCHEMES = [
    "postgresql+asyncpg://",
    "postgresql://",
    "postgres://",
    "sqlite:///",
    "sqlite+aiosqlite:///",
    "sqlite://",
    "sqlite:////",
]
ALPHABET = "aZ09_.~%-!$&'()*+,;=:@/?#[]\x00 \n\tAF\u00e9\uff0e"


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(SCHEMES), st.text(ALPHABET, min_size=1, max_size=24))
def test_simple_url_reads_as_make_url(scheme: str, rest: str) -> None:
    url = scheme + rest
    simple = simple_url(url)
    if simple is None:
        return
    parsed = make_url(url)
    assert not parsed.query
    if simple.dialect == "postgresql":
        got = (simple.user, simple.password, simple.host, simple.port, simple.database)
        want = (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database)
        assert got == want
    else:
        assert (parsed.username, parsed.password, parsed.host, parsed.port) == (None,) * 4
        assert simple.path == parsed.database
