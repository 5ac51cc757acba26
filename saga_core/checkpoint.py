"""Group commit of checkpoints: outcomes arriving together from many sagas share one
transaction. Each saga still waits for its own checkpoint before its next step begins."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from loguru import logger

from saga_core import dberrors
from saga_core.store.base import Checkpoint, SagaStore

CheckpointResult = datetime | None | bool


def is_transient(exc: BaseException) -> bool:
    """A database error that may go away: see :mod:`saga_core.dberrors`."""
    return dberrors.is_transient(exc)


class CheckpointWriter:
    """Batches concurrent checkpoints into one store call; retries transient database
    errors with backoff so a finished step's checkpoint is never dropped while the process
    lives."""

    def __init__(self, store: SagaStore, *, max_batch: int = 256, max_backoff: float = 5.0) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_backoff = max_backoff
        self._queue: list[tuple[Checkpoint, asyncio.Future[CheckpointResult]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0
        self.written = 0

    async def write(self, checkpoint: Checkpoint) -> CheckpointResult:
        """Persist ``checkpoint``: ``False`` when its fencing token no longer matched."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CheckpointResult] = loop.create_future()
        self._queue.append((checkpoint, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        # Shielded: a caller cancelled mid-write must not withdraw a finished step's record.
        return await asyncio.shield(fut)

    async def _flush(self) -> None:
        while self._queue:
            # One statement updates a row at most once: a saga's second queued write (its
            # release after a checkpoint, say) waits for the next batch, keeping the order.
            batch: list[tuple[Checkpoint, asyncio.Future[CheckpointResult]]] = []
            seen: set[object] = set()
            for item in self._queue:
                if item[0].saga_id in seen or len(batch) >= self.max_batch:
                    break
                seen.add(item[0].saga_id)
                batch.append(item)
            del self._queue[: len(batch)]
            results = await self._write_batch([cp for cp, _ in batch])
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    async def _write_batch(
        self, batch: Sequence[Checkpoint]
    ) -> Sequence[CheckpointResult | BaseException]:
        backoff = 0.05
        while True:
            try:
                results = await self.store.saga_checkpoint(batch)
                self.batches += 1
                self.written += len(batch)
                return results
            except Exception as exc:
                if not is_transient(exc):
                    logger.opt(exception=exc).error("checkpoint write failed: {}", exc)
                    return [exc] * len(batch)
                logger.warning(
                    "database unavailable while writing {} checkpoint(s), retrying in {:.2f}s: {}",
                    len(batch),
                    backoff,
                    exc,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait({self._flusher})
