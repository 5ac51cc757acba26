"""Start-up checks shared by ``sagad run`` and ``sagad check``: reach the database (with
bounded retries) and verify the schema."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from saga_core import SagaEngine
from saga_core.backoff import BackoffPolicy, RetryGaveUp
from saga_core.dberrors import classify_db_error
from saga_core.settings import mask_secrets, mask_url
from sagad.dbproblems import describe, hint
from sagad.errors import DatabaseRefusedError, DatabaseUnavailableError, SagadError, SchemaError

__all__ = [
    "STARTUP_BACKOFF",
    "database_error",
    "describe_url",
    "distinct_databases",
    "verify_schema",
    "wait_for_database",
]

CONNECT_ATTEMPT_TIMEOUT_S = 10.0


def describe_url(engine: AsyncEngine) -> str:
    """The engine's URL with any password masked."""
    return mask_url(engine.url.render_as_string(hide_password=False))


def distinct_databases(engines: list[SagaEngine[Any]]) -> list[SagaEngine[Any]]:
    """One saga engine per distinct database URL (for pings, registry and listeners)."""
    seen: dict[str, SagaEngine[Any]] = {}
    for eng in engines:
        seen.setdefault(eng.sql_engine.url.render_as_string(hide_password=False), eng)
    return list(seen.values())


STARTUP_BACKOFF = BackoffPolicy(first=0.25, maximum=5.0, permanent_give_up_after=0.0)
"""Start-up: a permanent error (wrong password, unknown database...) stops at once."""


def _said(text: str, engine: AsyncEngine) -> str:
    """A driver's message with the password masked (it may quote the DSN, or the password)."""
    return mask_secrets(text, [engine.url.render_as_string(hide_password=False)])


def database_error(exc: BaseException, engine: AsyncEngine) -> SagadError:
    """The error that ends sagad for a database problem: 78 for a permanent one (with what to
    do), 75 for one that may go away (``exc`` is a :class:`RetryGaveUp` or the error)."""
    info = exc.info if isinstance(exc, RetryGaveUp) else classify_db_error(exc)
    where = describe_url(engine)
    if info.permanent:
        return DatabaseRefusedError(
            f"database {where}: {_said(describe(info), engine)}; {hint(info)} (not retrying)"
        )
    tried = ""
    if isinstance(exc, RetryGaveUp):
        tried = f" (gave up after {exc.attempts} attempt(s) in {exc.elapsed:.0f}s; startup_timeout)"
    return DatabaseUnavailableError(
        f"database unreachable: {where}: {_said(describe(info), engine)}{tried}"
    )


async def wait_for_database(engines: list[AsyncEngine], timeout: float) -> None:
    """Connect to each database, retrying transient errors with backoff for up to
    ``timeout`` seconds.

    Raises:
        DatabaseRefusedError: a permanent error, at once (exit 78).
        DatabaseUnavailableError: a database did not answer in time (exit 75).
    """
    policy = replace(STARTUP_BACKOFF, give_up_after=timeout)
    for engine in engines:
        backoff = policy.start()
        while True:
            left = timeout - backoff.failing_for
            try:
                async with asyncio.timeout(max(min(CONNECT_ATTEMPT_TIMEOUT_S, left), 1.0)):
                    async with engine.connect() as conn:
                        await conn.execute(text("SELECT 1"))
                break
            except Exception as exc:
                try:
                    wait = backoff.failure(exc)
                except RetryGaveUp as gave_up:
                    raise database_error(gave_up, engine) from None
                # One line for the first failure, the rest at debug: a slow database start
                # should not flood the journal.
                logger.log(
                    "WARNING" if backoff.attempts == 1 else "DEBUG",
                    "database {} not reachable yet ({}); retrying for up to {:.0f}s",
                    describe_url(engine),
                    _said(describe(backoff.last) if backoff.last else str(exc), engine),
                    timeout - backoff.failing_for,
                )
                await asyncio.sleep(wait)


async def verify_schema(engines: list[SagaEngine[Any]], *, create: bool) -> list[str]:
    """Check every saga table (and the worker registry) is present and current; with
    ``create`` make it so. Returns what was created.

    Raises:
        SchemaError: a table is missing or outdated (exit 78).
    """
    done: list[str] = []
    problems: list[str] = []
    for eng in engines:
        status = await eng.store.schema_status()
        if status.get("up_to_date"):
            continue
        if create:
            done.extend(await eng.store.schema_upgrade())
            continue
        for name, entry in sorted(status.get("tables", {}).items()):
            if entry.get("up_to_date"):
                continue
            if not entry.get("exists"):
                what = "does not exist"
            else:
                missing = [
                    *entry.get("missing_columns", []),
                    *entry.get("missing_indexes", []),
                    *entry.get("missing_constraints", []),
                    *(f"{c} (outdated)" for c in entry.get("outdated_constraints", [])),
                ]
                what = "is outdated (missing " + ", ".join(missing) + ")"
            problems.append(
                f"schema: table {name} {what} in {describe_url(eng.sql_engine)}; "
                "run `sagactl db upgrade` (or `sagad run --create-schema`)"
            )
    if problems:
        raise SchemaError(*dict.fromkeys(problems))
    return done
