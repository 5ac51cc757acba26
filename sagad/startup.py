"""Start-up checks shared by ``sagad run`` and ``sagad check``: reach the database (with
bounded retries) and verify the schema."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from saga_core import SagaEngine
from saga_core.settings import mask_secrets, mask_url
from sagad.errors import DatabaseUnavailableError, SchemaError

__all__ = ["describe_url", "distinct_databases", "verify_schema", "wait_for_database"]

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


def _one_line(exc: BaseException) -> str:
    text_ = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text_[0] if text_ else ''}".rstrip(": ")


async def wait_for_database(engines: list[AsyncEngine], timeout: float) -> None:
    """Connect to each database, retrying with backoff for up to ``timeout`` seconds.

    Raises:
        DatabaseUnavailableError: a database did not answer in time (exit 75).
    """
    deadline = time.monotonic() + timeout
    for engine in engines:
        delay = 0.25
        attempt = 0
        while True:
            attempt += 1
            left = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(min(CONNECT_ATTEMPT_TIMEOUT_S, left), 1.0)):
                    async with engine.connect() as conn:
                        await conn.execute(text("SELECT 1"))
                break
            except Exception as exc:
                reason = _one_line(exc) if not isinstance(exc, TimeoutError) else "timed out"
                # A driver message may quote the DSN, or the password itself.
                reason = mask_secrets(reason, [engine.url.render_as_string(hide_password=False)])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseUnavailableError(
                        f"database unreachable: {describe_url(engine)}: {reason} "
                        f"(gave up after {attempt} attempt(s) in {timeout:g}s; startup_timeout)"
                    ) from None
                # One line for the first failure, the rest at debug: a slow database start
                # should not flood the journal.
                logger.log(
                    "WARNING" if attempt == 1 else "DEBUG",
                    "database {} not reachable yet ({}); retrying for up to {:.0f}s",
                    describe_url(engine),
                    reason,
                    left,
                )
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 5.0)


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
                missing = [*entry.get("missing_columns", []), *entry.get("missing_indexes", [])]
                what = "is outdated (missing " + ", ".join(missing) + ")"
            problems.append(
                f"schema: table {name} {what} in {describe_url(eng.sql_engine)}; "
                "run `sagactl db upgrade` (or `sagad run --create-schema`)"
            )
    if problems:
        raise SchemaError(*dict.fromkeys(problems))
    return done
