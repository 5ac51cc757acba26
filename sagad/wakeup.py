"""Wake-ups from PostgreSQL: ``LISTEN saga_wakeup`` on one dedicated asyncpg connection per
database, reconnecting with capped backoff. ``start``, ``notify`` and operator actions send
``NOTIFY saga_wakeup, '<table>'``; polling stays the fallback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from loguru import logger
from sqlalchemy.engine import URL

from saga_core.backoff import BackoffPolicy
from saga_core.settings import mask_url
from saga_core.store.postgres import WAKEUP_CHANNEL
from sagad.dbproblems import describe

__all__ = ["APPLICATION_NAME", "PgListener"]

APPLICATION_NAME = "sagad-listener"
"""``application_name`` of the listening connection (visible in ``pg_stat_activity``)."""

HEALTH_CHECK_S = 10.0
LISTENER_BACKOFF = BackoffPolicy(first=0.1, maximum=15.0, permanent_give_up_after=None)
"""Reconnects: up to 15 s apart, forever (polling covers the gap; the claim loop is the one
that gives up on a permanent error)."""


def connect_kwargs(url: URL) -> dict[str, Any]:
    """asyncpg.connect() arguments for a SQLAlchemy ``postgresql+asyncpg`` URL."""
    kwargs: dict[str, Any] = url.translate_connect_args(username="user")
    ssl = url.query.get("ssl") or url.query.get("sslmode")
    if isinstance(ssl, str):
        kwargs["ssl"] = ssl
    kwargs["server_settings"] = {"application_name": APPLICATION_NAME}
    return kwargs


class PgListener:
    """Calls ``on_wake()`` for every wake-up naming one of ``tables``, and once after each
    (re)connection, since notifications sent while disconnected are lost."""

    def __init__(self, url: URL, tables: set[str], on_wake: Callable[[], None]) -> None:
        self.url = url
        self.tables = tables
        self.on_wake = on_wake
        self.listening = asyncio.Event()
        """Set while LISTEN is active."""
        self.reconnects = 0

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if not payload or payload in self.tables:
            self.on_wake()

    async def run(self) -> None:
        """Listen until cancelled."""
        import asyncpg  # type: ignore[import-untyped]

        backoff = LISTENER_BACKOFF.start()
        where = mask_url(self.url.render_as_string(hide_password=False))
        while True:
            conn: Any = None
            try:
                conn = await asyncio.wait_for(
                    asyncpg.connect(**connect_kwargs(self.url)), timeout=HEALTH_CHECK_S
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(WAKEUP_CHANNEL, self._notified)
                self.listening.set()
                if self.reconnects:
                    logger.info("listening for wake-ups again on {}", where)
                self.on_wake()  # anything sent while we were away
                backoff.success()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=HEALTH_CHECK_S)
                    if not lost.is_set():
                        # A half-open TCP connection never reports termination: probe it.
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=HEALTH_CHECK_S)
                raise ConnectionError("listening connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                self.reconnects += 1
                wait = backoff.failure(exc)
                info = backoff.last
                logger.log(
                    "ERROR" if info is not None and info.permanent else "WARNING",
                    "wake-up listener on {} lost ({}); reconnecting in {:.1f}s, polling meanwhile",
                    where,
                    describe(info) if info is not None else exc,
                    wait,
                )
                await asyncio.sleep(wait)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
