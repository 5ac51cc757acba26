"""The worker registry: this process's row in ``saga_workers`` (id, host, pid, version, start
time, heartbeat, in-flight count), refreshed every ``heartbeat_interval``. ``sagactl workers``
reads it; a row whose heartbeat is older than ``worker_stale_after`` belongs to a dead worker.

``sagad`` registers as the last step of its start-up, so a start that fails leaves no row, and
marks its row stopped on every way out once registered. On SQLite, registration also claims
the database for this one worker, atomically (see ``register``).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

from loguru import logger

from saga_core.store import SagaStore, WorkerRow
from sagad import __version__
from sagad.errors import ConfigError

__all__ = ["Registry", "new_worker_id"]


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
        self.registered = False
        self.unregistered = False

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

    async def register(self, *, stale_after: float, where: dict[int, str]) -> None:
        """The first heartbeat. On SQLite it is refused, atomically, while another live
        ``sagad`` is registered on the same file (``where``: id(store) -> file name).

        Raises:
            ConfigError: another worker runs on a SQLite database of this process.
        """
        self.registered = True  # from here on, every exit marks the row(s) stopped
        row = self._row()
        for store in self.stores:
            register_sole = getattr(store, "worker_register_sole", None)
            if register_sole is None:
                try:
                    await store.worker_heartbeat(row)
                except Exception as exc:
                    logger.warning("worker registration failed (retried by the heartbeat): {}", exc)
                continue
            other = await register_sole(row, stale_after=stale_after, alive=_alive)
            if other is not None:
                raise ConfigError(
                    f"another sagad (pid {other.pid} on {other.host}, id {other.id}) is running "
                    f"on the SQLite database {where.get(id(store), '?')}: SQLite supports one "
                    "worker process. Stop the other one, or use PostgreSQL to run several workers"
                )

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
        """Mark this worker stopped in every database (once; nothing when never registered)."""
        if not self.registered or self.unregistered:
            return
        self.unregistered = True
        for store in self.stores:
            try:
                await asyncio.wait_for(store.worker_stopped(self.worker_id), timeout=5.0)
            except Exception as exc:
                logger.warning("could not mark this worker stopped in the registry: {}", exc)

    async def forget(self) -> None:
        """Remove this worker's row: it stopped before it was ready (it ran nothing)."""
        self.unregistered = True  # nothing left to mark stopped
        for store in self.stores:
            try:
                await asyncio.wait_for(store.worker_forget(self.worker_id), timeout=5.0)
            except Exception as exc:
                logger.warning("could not remove this worker from the registry: {}", exc)


def _alive(worker: WorkerRow) -> bool:
    """Whether a registered worker may still run: on this host, its pid must exist."""
    if worker.host != socket.gethostname():
        return True
    try:
        os.kill(worker.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
