"""Transactional steps: a step marked ``transactional = True`` writes its rows through
``current_step().session``, and the executor writes the step's checkpoint through that same
session before committing it. The step's effect and the record that it happened commit
together or not at all, so a crash, a lost lease or a failure never leaves one without the
other.

A run calls three hooks of :class:`TxSteps`: ``begin`` before it runs ``execute``/``compensate``,
``commit`` in place of the checkpoint writer, and ``discard`` when the run stops for any other
reason (lease lost, cancelled, unexpected error).

On SQLite the step's transaction holds the database's only write lock (``BEGIN IMMEDIATE``)
from before the step runs until its checkpoint commits, together with this process's write
lock of the store: claims, checkpoints of other sagas and lease renewals of this process
queue behind it instead of failing on SQLite's busy timeout or deadlocking against it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

from saga_core.checkpoint import CheckpointWriter
from saga_core.context import StepContext
from saga_core.definition import SagaDefinition
from saga_core.errors import SagaError
from saga_core.store.base import Applied, Checkpoint, SagaStore
from saga_core.store.sql import SqlSagaStore

__all__ = ["StepTransaction", "TxSteps"]

logger = logging.getLogger(__name__)

Factory = Callable[[], Coroutine[Any, Any, Any]]


class _Run(Protocol):
    """What the hooks need of a run."""

    definition: SagaDefinition
    tx: Any


class StepTransaction:
    """The open transaction of one execution of a transactional step."""

    def __init__(self, session: AsyncSession, step_id: str, stack: AsyncExitStack) -> None:
        self.session = session
        self.step_id = step_id
        self._stack = stack
        self._root: SessionTransaction | None = None
        self._committing = False
        self.commit_refused = False
        """The step tried to commit the session (the commit raised)."""
        event.listen(session.sync_session, "before_commit", self._before_commit)

    def _before_commit(self, session: Session) -> None:
        # Savepoints (session.begin_nested()) may be released; the transaction itself only
        # commits together with the checkpoint.
        if self._committing or session.in_nested_transaction():
            return
        self.commit_refused = True
        raise SagaError(
            f"transactional step {self.step_id!r} must not commit its session: it commits "
            "together with the step's checkpoint when the step returns"
        )

    async def open(self, store: SqlSagaStore) -> None:
        await store.begin_step_transaction(self.session)
        self._root = self.session.sync_session.get_transaction()

    def _check_intact(self) -> None:
        if self.commit_refused:
            raise SagaError(
                f"transactional step {self.step_id!r} tried to commit its session (refused); "
                "its writes are rolled back. Let the checkpoint commit them"
            )
        if self.session.sync_session.get_transaction() is not self._root:
            raise SagaError(
                f"transactional step {self.step_id!r} rolled back or closed its session; its "
                "writes are rolled back. Raise an exception to fail the step instead"
            )

    async def after_step(self) -> None:
        """The step returned: its pending ORM changes are flushed into the transaction
        (a refused write is a failure of the step) and the transaction is still the one
        it was given."""
        self._check_intact()
        await self.session.flush()
        self._check_intact()

    async def commit_with(self, store: SqlSagaStore, checkpoint: Checkpoint) -> Applied | None:
        """Write ``checkpoint`` in the step's transaction and commit both; ``None`` (and
        everything rolled back) when the fence no longer matched."""
        try:
            self._check_intact()
            res = await store.saga_checkpoint_in(self.session, checkpoint)
            if res is None:
                return None  # rolled back below: the step's writes vanish with it
            self._committing = True
            await self.session.commit()
            return res
        finally:
            await self.close()

    async def close(self) -> None:
        """Roll back whatever is not committed and give the connection (and lock) back."""
        try:
            await self.session.close()
        except Exception as exc:
            # A step cancelled mid-statement (timeout, lost lease) can leave the connection
            # unusable: drop it, which ends the transaction on the server too.
            logger.warning("could not roll back a transactional step's session: %s", exc)
            try:
                await self.session.invalidate()
            except Exception as exc2:
                logger.warning("could not invalidate a transactional step's session: %s", exc2)
        finally:
            await self._stack.aclose()


class TxSteps:
    """The hooks of transactional steps for one store: :meth:`begin` before a step runs,
    :meth:`commit` in place of the checkpoint writer, :meth:`discard` when the run stops
    for any other reason (lease lost, cancelled, unexpected error)."""

    def __init__(
        self,
        store: SagaStore,
        session_maker: async_sessionmaker[AsyncSession],
        writer: CheckpointWriter,
    ) -> None:
        self.store = store
        self.session_maker = session_maker
        self.writer = writer

    async def begin(
        self, run: _Run, factory: Factory, ctx: StepContext
    ) -> tuple[Factory, StepContext]:
        """Before a step runs: for a transactional step, open its session (``run.tx``) and
        return the call and context that use it; anything else is returned as it is."""
        if not run.definition.step(ctx.step_id).transactional:
            return factory, ctx
        store = self.store
        if not isinstance(store, SqlSagaStore):
            raise SagaError(f"transactional steps need a SQL store, not {type(store).__name__}")
        stack = AsyncExitStack()
        await stack.enter_async_context(store.step_transaction_lock())
        try:
            tx = StepTransaction(self.session_maker(), ctx.step_id, stack)
        except BaseException:
            await stack.aclose()
            raise
        try:
            await tx.open(store)
        except BaseException:
            await tx.close()
            raise
        run.tx = tx

        async def call() -> Any:
            out = await factory()
            await tx.after_step()
            return out

        return call, dataclasses.replace(ctx, _session=tx.session)

    async def commit(self, run: _Run, checkpoint: Checkpoint, succeeded: bool) -> Applied | None:
        """Write the checkpoint of the step that just ran: through its transaction when it
        is a transactional step that succeeded; else (after rolling back a transactional
        step's writes) through the checkpoint writer."""
        tx: StepTransaction | None = run.tx
        run.tx = None
        if tx is not None:
            if succeeded:
                store = self.store
                assert isinstance(store, SqlSagaStore)
                return await tx.commit_with(store, checkpoint)
            await tx.close()
        return await self.writer.write(checkpoint)

    async def discard(self, run: _Run) -> None:
        """The run stopped with a transactional step's transaction still open: roll it back."""
        tx, run.tx = run.tx, None
        if tx is not None:
            await tx.close()
