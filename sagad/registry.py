"""The worker registry: this process's row in ``saga_workers`` (id, host, pid, version, start
time, heartbeat, in-flight count), refreshed every ``heartbeat_interval``. ``sagactl workers``
reads it; a row whose heartbeat is older than ``worker_stale_after`` belongs to a dead worker.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

from loguru import logger

from saga_core.store import SagaStore
from sagad import __version__
from sagad.errors import ConfigError

__all__ = ["Registry", "check_single_sqlite_worker", "new_worker_id"]


def new_worker_id() -> str:
    import uuid

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Registry:
    """Heartbeats to every distinct database the process works on."""

    def __init__(
        self,
        stores: list[SagaStore],
        *,
        worker_id: str,
        saga_names: list[str],
        info: dict[str, Any],
        state: Callable[[], tuple[int, int]],
        saga_versions: dict[str, dict[str, list[int]]] | None = None,
    ) -> None:
        self.stores = stores
        self.worker_id = worker_id
        self.saga_names = saga_names
        self.saga_versions = saga_versions or {}
        """table -> saga name -> the definition versions this worker runs."""
        self.info = info
        self.state = state
        """() -> (in_flight, concurrency)"""

    def _row(self) -> dict[str, Any]:
        in_flight, concurrency = self.state()
        return {
            "id": self.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "in_flight": in_flight,
            "concurrency": concurrency,
            "saga_names": self.saga_names,
            "saga_versions": self.saga_versions,
            "info": self.info,
        }

    async def beat(self) -> None:
        row = self._row()
        for store in self.stores:
            try:
                await store.worker_heartbeat(row)
            except Exception as exc:
                logger.warning("worker heartbeat failed: {}", exc)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.beat()

    async def stopped(self) -> None:
        for store in self.stores:
            try:
                await asyncio.wait_for(store.worker_stopped(self.worker_id), timeout=5.0)
            except Exception as exc:
                logger.warning("could not mark this worker stopped in the registry: {}", exc)

    async def forget(self) -> None:
        """Remove this worker's row: it stopped before it was ready (it ran nothing)."""
        for store in self.stores:
            try:
                await asyncio.wait_for(store.worker_forget(self.worker_id), timeout=5.0)
            except Exception as exc:
                logger.warning("could not remove this worker from the registry: {}", exc)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def check_single_sqlite_worker(
    store: SagaStore, *, worker_id: str, stale_after: float, where: str
) -> None:
    """Refuse to start when another live ``sagad`` is registered on this SQLite file.

    Raises:
        ConfigError: another worker's heartbeat is fresh (and, on this host, its pid lives).
    """
    now = await store.db_now()
    host = socket.gethostname()
    for w in await store.worker_list():
        if w.id == worker_id or w.stopped_at is not None:
            continue
        if (now - w.heartbeat_at).total_seconds() > stale_after:
            continue
        if w.host == host and not _pid_alive(w.pid):
            continue
        raise ConfigError(
            f"another sagad (pid {w.pid} on {w.host}, id {w.id}) is running on the SQLite "
            f"database {where}: SQLite supports one worker process. Stop the other one, or "
            "use PostgreSQL to run several workers"
        )
