"""Masking database passwords by URL structure (``saga_core.settings.mask_secrets`` and
``mask_url``), never by blind substring replacement."""

from __future__ import annotations

from saga_core.settings import MIN_FREE_TEXT_PASSWORD, mask_secrets, mask_url

SHORT = "postgresql+asyncpg://app:e@db.internal:5432/orders"
LONG = "postgresql://app:Tr0ub4dor-and-3@db.internal/orders"


def test_a_one_letter_password_leaves_words_alone() -> None:
    text = "error: database unreachable: password authentication failed for user e2e"
    assert mask_secrets(text, [SHORT]) == text


def test_passwords_in_urls_are_masked_wherever_the_url_stands() -> None:
    text = f"cannot connect to {SHORT}: refused (retrying {LONG}?)"
    assert mask_secrets(text, [SHORT]) == (
        "cannot connect to postgresql+asyncpg://app:***@db.internal:5432/orders: refused "
        "(retrying postgresql://app:***@db.internal/orders?)"
    )
    # Any URL carrying a password, known or not; URLs without one are left as they are.
    assert mask_secrets("x postgres://u:p%40ss@h/db y", []) == "x postgres://u:***@h/db y"
    same = "sqlite+aiosqlite:///saga.db and postgresql://u@h/db"
    assert mask_secrets(same, [SHORT]) == same


def test_a_known_password_as_a_url_component_outside_a_full_url() -> None:
    assert mask_secrets('dsn "app:e@db.internal" rejected', [SHORT]) == (
        'dsn "app:***@db.internal" rejected'
    )
    odd = "postgresql://app:p%40ss%20word@h/db"  # the password is "p@ss word"
    assert mask_secrets("user app:p@ss word@h", [odd]) == "user app:***@h"


def test_a_long_password_is_masked_in_free_text_as_a_whole_token() -> None:
    assert len("Tr0ub4dor-and-3") >= MIN_FREE_TEXT_PASSWORD
    text = "server said: password 'Tr0ub4dor-and-3' expired"
    assert mask_secrets(text, [LONG]) == "server said: password '***' expired"
    # Inside a longer word it is not a token of its own: left alone.
    assert mask_secrets("xTr0ub4dor-and-3x", [LONG]) == "xTr0ub4dor-and-3x"


def test_unparseable_urls_are_ignored_and_mask_url_renders_by_structure() -> None:
    assert mask_secrets("plain text", ["not a url", "", None]) == "plain text"
    assert mask_url(SHORT) == "postgresql+asyncpg://app:***@db.internal:5432/orders"
    assert mask_url("sqlite+aiosqlite:///saga.db") == "sqlite+aiosqlite:///saga.db"


def test_a_long_word_is_scanned_once_not_once_per_character() -> None:
    """A long run of word characters (a hostile aggregation id echoed in a message) used to
    make the URL pattern try a scheme at every position of the run: 40,000 characters took
    seconds, 200,000 minutes. Now a scheme starts only where a word starts. Run in a
    subprocess with a generous deadline (a hang guard, not a performance figure)."""
    import subprocess
    import sys

    code = (
        "from saga_core.settings import mask_secrets\n"
        "s = 'x' * 200_000\n"
        "assert mask_secrets(s) == s\n"
        "t = s + ' postgresql://u:pw@h/db'\n"
        "assert mask_secrets(t) == s + ' postgresql://u:***@h/db'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_url_glued_to_a_word_is_still_masked() -> None:
    from saga_core.settings import mask_secrets

    assert mask_secrets("errorpostgresql://u:pw@h/db") == "errorpostgresql://u:***@h/db"
    assert mask_secrets("(postgresql://u:pw@h/db)") == "(postgresql://u:***@h/db)"
