"""Group commit of checkpoints: outcomes arriving together from many sagas share one
transaction. Each saga still waits for its own checkpoint before its next step begins.

A batch the database refuses for a reason of its own (not a lost connection) is written again
one checkpoint at a time, so that one unstorable row fails alone: the others are written and
their sagas go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from saga_core import dberrors
from saga_core.backoff import BackoffPolicy
from saga_core.store.base import Applied, Checkpoint, SagaStore

__all__ = ["CheckpointResult", "CheckpointWriter", "is_transient"]

logger = logging.getLogger(__name__)

CheckpointResult = Applied | None
"""What a checkpoint came to: written (``Applied``), or ``None`` when its lease token no
longer matched (nothing written)."""


def is_transient(exc: BaseException) -> bool:
    """A database error that may go away: see :mod:`saga_core.dberrors`."""
    return dberrors.is_transient(exc)


Outcome = CheckpointResult | BaseException


class CheckpointWriter:
    """Batches concurrent checkpoints into one store call; retries transient database
    errors with backoff so a finished step's checkpoint is never dropped while the process
    lives."""

    def __init__(self, store: SagaStore, *, max_batch: int = 256, max_backoff: float = 5.0) -> None:
        self.store = store
        self.max_batch = max_batch
        self.policy = BackoffPolicy(first=0.05, maximum=max_backoff, permanent_give_up_after=None)
        self._queue: list[tuple[Checkpoint, asyncio.Future[CheckpointResult]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, checkpoint: Checkpoint) -> CheckpointResult:
        """Persist ``checkpoint``: ``None`` when its fencing token no longer matched.

        Raises:
            Exception: the database refused this very checkpoint (not a lost connection:
                those are retried until they go through).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CheckpointResult] = loop.create_future()
        self._queue.append((checkpoint, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        # A caller cancelled meanwhile cancels only ``fut``: the checkpoint stays queued (or
        # in the batch being written) and is written all the same; its outcome is dropped.
        return await fut

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

    async def _write_batch(self, batch: Sequence[Checkpoint]) -> Sequence[Outcome]:
        try:
            return await self._write_retrying(batch)
        except Exception as exc:
            if len(batch) == 1:
                logger.error("checkpoint write failed: %s", exc, exc_info=exc)
                return [exc]
        # Refused as a whole: find which checkpoints the database refuses, one by one.
        logger.warning(
            "a batch of %s checkpoints was refused; writing them one at a time", len(batch)
        )
        out: list[Outcome] = []
        for cp in batch:
            try:
                (res,) = await self._write_retrying([cp])
                out.append(res)
            except Exception as exc:
                logger.error(
                    "checkpoint of saga %s refused: %s",
                    cp.saga_id,
                    exc,
                    exc_info=exc,
                    extra={"saga_id": str(cp.saga_id)},
                )
                out.append(exc)
        return out

    async def _write_retrying(self, batch: Sequence[Checkpoint]) -> list[CheckpointResult]:
        """Write ``batch`` in one transaction, retrying transient errors (the shared backoff
        policy, without a deadline: a finished step's record waits for the database as long
        as the process lives); others raise."""
        backoff = self.policy.start()
        while True:
            try:
                return await self.store.saga_checkpoint(batch)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                wait = backoff.failure(exc)
                logger.warning(
                    "database unavailable while writing %s checkpoint(s), retrying in %.2fs: %s",
                    len(batch),
                    wait,
                    exc,
                )
                await asyncio.sleep(wait)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait({self._flusher})
