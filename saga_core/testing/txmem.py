"""Transactional steps on the in-memory store.

A transactional step writes the application's rows through ``current_step().session``; on a
SQL store its checkpoint commits in that same transaction. The in-memory store has no SQL
session to offer, so the test kit takes the application's database from the test (a
``session_maker``, e.g. SQLite in memory) and keeps the same promise: the step's session and
its checkpoint commit together or not at all. Its commit holds the in-memory database (no other
store call runs meanwhile), checks the checkpoint's fence, commits the session, then writes
the checkpoint; a lost lease, a failure, or a crash before that rolls the session back, so
the step's effect vanishes with the crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from saga_core.checkpoint import CheckpointWriter
from saga_core.context import StepContext
from saga_core.definition import SagaDefinition
from saga_core.errors import SagaError
from saga_core.store.base import Applied, Checkpoint
from saga_core.testing.loop import VirtualTimeLoop
from saga_core.testing.memstore import MemorySagaStore

__all__ = ["MemoryTransactions", "no_session_message"]

Factory = Callable[[], Coroutine[Any, Any, Any]]


class _Run(Protocol):
    definition: SagaDefinition
    tx: Any


def no_session_message(step_id: str) -> str:
    return (
        f"step {step_id!r} is transactional: on the in-memory store its session needs a "
        "database for your tables; pass session_maker=async_sessionmaker(create_async_engine("
        "'sqlite+aiosqlite://', poolclass=StaticPool)) (after creating your tables there)"
    )


class _StepTransaction:
    """The open session of one execution of a transactional step."""

    def __init__(self, session: AsyncSession, step_id: str) -> None:
        self.session = session
        self.step_id = step_id
        self._committing = False
        self._stack = contextlib.ExitStack()
        event.listen(session.sync_session, "before_commit", self._before_commit)

    def _before_commit(self, session: Session) -> None:
        if self._committing or session.in_nested_transaction():
            return
        raise SagaError(
            f"transactional step {self.step_id!r} must not commit its session: it commits "
            "together with the step's checkpoint when the step returns"
        )

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(loop, VirtualTimeLoop):
            # The driver answers from its own thread: wait for it in real time.
            self._stack.enter_context(loop.real_time())
        await self.session.connection()

    async def commit(self) -> None:
        self._committing = True
        await self.session.commit()

    async def close(self) -> None:
        """Roll back whatever is not committed."""
        try:
            await self.session.close()
        finally:
            self._stack.close()


class MemoryTransactions:
    """The run's transactional-step hooks (``run.Transactions``) on a :class:`MemorySagaStore`.

    Args:
        store: the worker's store.
        writer: the worker's checkpoint writer (every other checkpoint goes through it).
        session_maker: the application's database for transactional steps; ``None``: a
            transactional step cannot run (``SagaError``; the kit refuses such a definition
            when it is registered).
    """

    def __init__(
        self,
        store: MemorySagaStore,
        writer: CheckpointWriter,
        session_maker: async_sessionmaker[AsyncSession] | None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.session_maker = session_maker

    async def begin(
        self, run: _Run, factory: Factory, ctx: StepContext
    ) -> tuple[Factory, StepContext]:
        if not run.definition.step(ctx.step_id).transactional:
            return factory, ctx
        if self.session_maker is None:
            raise SagaError(no_session_message(ctx.step_id))
        tx = _StepTransaction(self.session_maker(), ctx.step_id)
        try:
            await tx.open()
        except BaseException:
            await tx.close()
            raise
        run.tx = tx

        async def call() -> Any:
            out = await factory()
            await tx.session.flush()  # a refused write is a failure of the step
            return out

        return call, dataclasses.replace(ctx, _session=tx.session)

    async def commit(self, run: _Run, checkpoint: Checkpoint, succeeded: bool) -> Applied | None:
        tx: _StepTransaction | None = run.tx
        run.tx = None
        if tx is None:
            return await self.writer.write(checkpoint)
        if not succeeded:
            await tx.close()  # the failed step's writes are rolled back
            return await self.writer.write(checkpoint)
        try:
            async with self.store.transaction() as now:
                if not self.store.fence_holds(checkpoint):
                    return None  # rolled back below: the step's writes vanish with it
                await tx.commit()
                return self.store.checkpoint_now(checkpoint, now)
        finally:
            await tx.close()

    async def discard(self, run: _Run) -> None:
        tx, run.tx = run.tx, None
        if tx is not None:
            await tx.close()
