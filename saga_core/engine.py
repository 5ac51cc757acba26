"""``SagaEngine``: the runtime of one saga table, shared by the orchestrator, ``sagad`` and
``SagaAdmin``. Wiring only: it builds the store, the checkpoint writer and the executor from
the settings, and keeps the registered definitions and what this process has claimed."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from saga_core.checkpoint import CheckpointWriter
from saga_core.definition import SagaDefinition
from saga_core.errors import SagaError
from saga_core.executor import Executor
from saga_core.lease import monotonic
from saga_core.run import Flags, RunDeps, RunSettings, Transactions
from saga_core.state import SagaStateMixin
from saga_core.store import SagaRow, SagaStore, make_store
from saga_core.tracing import Tracing
from saga_core.txstep import TxSteps
from saga_core.versioning import Definitions

__all__ = ["SagaEngine", "default_worker_id"]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=SagaStateMixin)

Listener = Callable[[str, dict[str, Any]], None]


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _settings(
    execution_lease: timedelta,
    in_place_retry_max: timedelta,
    max_payload_bytes: int,
    worker_id: str | None,
    max_recoveries: int | None,
) -> RunSettings:
    if execution_lease < timedelta(seconds=1):
        raise SagaError(f"execution_lease must be at least 1 second, got {execution_lease}")
    if max_payload_bytes < 1:
        raise SagaError("max_payload_bytes must be positive")
    if max_recoveries is not None and (
        isinstance(max_recoveries, bool)
        or not isinstance(max_recoveries, int)
        or max_recoveries < 0
    ):
        raise SagaError(f"max_recoveries must be None or an int >= 0, got {max_recoveries!r}")
    return RunSettings(
        worker_id=worker_id or default_worker_id(),
        execution_lease=execution_lease,
        in_place_retry_max=in_place_retry_max,
        max_payload_bytes=max_payload_bytes,
        max_recoveries=max_recoveries,
    )


class SagaEngine(Generic[M]):
    """The runtime of one saga table: store, registered definitions, executor and the
    checkpoint writer. Reach it as ``orchestrator.engine``."""

    def __init__(
        self,
        *,
        model_class: type[M],
        session_maker: async_sessionmaker[AsyncSession],
        execution_lease: timedelta,
        in_place_retry_max: timedelta,
        max_payload_bytes: int,
        worker_id: str | None,
        max_recoveries: int | None = 5,
        tracer_provider: Any = None,
    ) -> None:
        bind = session_maker.kw.get("bind")
        if not isinstance(bind, AsyncEngine):
            raise SagaError(
                "session_maker must be an async_sessionmaker bound to an AsyncEngine "
                "(async_sessionmaker(create_async_engine(url)))"
            )
        table = getattr(model_class, "__table__", None)
        if not isinstance(table, Table) or "step_execution_token" not in table.c:
            raise SagaError(f"{model_class!r} is not a mapped model that mixes in SagaStateMixin")
        settings = _settings(
            execution_lease, in_place_retry_max, max_payload_bytes, worker_id, max_recoveries
        )
        self._sql: tuple[type[M], async_sessionmaker[AsyncSession], AsyncEngine] | None = (
            model_class,
            session_maker,
            bind,
        )
        store = make_store(bind, table, lease=execution_lease)
        self._wire(
            store,
            lambda writer: TxSteps(store, session_maker, writer),
            settings,
            tracer_provider,
        )

    @classmethod
    def on_store(
        cls,
        store: SagaStore,
        *,
        transactions: Callable[[CheckpointWriter], Transactions],
        execution_lease: timedelta,
        in_place_retry_max: timedelta,
        max_payload_bytes: int,
        worker_id: str | None,
        max_recoveries: int | None = 5,
        tracer_provider: Any = None,
    ) -> SagaEngine[Any]:
        """An engine on ``store`` without SQLAlchemy (``saga_core.testing`` runs one on its
        in-memory store). ``transactions`` makes the hooks of transactional steps from the
        engine's checkpoint writer. Such an engine has no ``sql_engine``, ``session_maker``
        or ``model_class``."""
        settings = _settings(
            execution_lease, in_place_retry_max, max_payload_bytes, worker_id, max_recoveries
        )
        engine: SagaEngine[Any] = cls.__new__(cls)
        engine._sql = None
        engine._wire(store, transactions, settings, tracer_provider)
        return engine

    def _wire(
        self,
        store: SagaStore,
        transactions: Callable[[CheckpointWriter], Transactions],
        settings: RunSettings,
        tracer_provider: Any,
    ) -> None:
        self.settings = settings
        self.flags = Flags()
        tracing = None if tracer_provider is None else Tracing(tracer_provider)
        self.store: SagaStore = store
        self.definitions = Definitions()
        """name -> latest definition; every version through ``definition_for``."""
        self.writer = CheckpointWriter(self.store)
        self.listeners: list[Listener] = []
        deps = RunDeps(
            store=self.store,
            writer=self.writer,
            settings=self.settings,
            flags=self.flags,
            emit=self.emit,
            tx=transactions(self.writer),
        )
        self.executor = Executor(deps, self.definition_for, tracing)
        self._held: dict[uuid.UUID, float] = {}
        """Sagas this engine claimed and has not finished driving -> when the claim was sent."""
        self._claims = 0
        self._unclaim = False
        """A claim failed after it may have committed: release what it took, on the next one."""

    # --- the SQL database ----------------------------------------------------------------------

    def _sql_parts(self) -> tuple[type[M], async_sessionmaker[AsyncSession], AsyncEngine]:
        if self._sql is None:
            raise SagaError(
                f"this engine runs on {type(self.store).__name__}, not on a SQL database"
            )
        return self._sql

    @property
    def model_class(self) -> type[M]:
        """The SQLAlchemy model of the saga table."""
        return self._sql_parts()[0]

    @property
    def session_maker(self) -> async_sessionmaker[AsyncSession]:
        return self._sql_parts()[1]

    @property
    def sql_engine(self) -> AsyncEngine:
        """The SQLAlchemy engine of the saga table's database."""
        return self._sql_parts()[2]

    # --- settings, as attributes -------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        """Identifies this process in leases and history."""
        return self.settings.worker_id

    @worker_id.setter
    def worker_id(self, value: str) -> None:
        self.settings.worker_id = value

    @property
    def tracing(self) -> Tracing | None:
        """OpenTelemetry spans of runs and attempts (``saga_core.tracing``); None: off."""
        return self.executor.tracing

    @tracing.setter
    def tracing(self, value: Tracing | None) -> None:
        self.executor.tracing = value

    @property
    def execution_lease(self) -> timedelta:
        return self.settings.execution_lease

    @property
    def in_place_retry_max(self) -> timedelta:
        return self.settings.in_place_retry_max

    @property
    def max_payload_bytes(self) -> int:
        return self.settings.max_payload_bytes

    @property
    def max_recoveries(self) -> int | None:
        return self.settings.max_recoveries

    @property
    def unexpected_error_delay(self) -> timedelta:
        """How long a saga whose run stopped on an unexpected error waits before a worker
        tries it again."""
        return self.settings.unexpected_error_delay

    @unexpected_error_delay.setter
    def unexpected_error_delay(self, value: timedelta) -> None:
        self.settings.unexpected_error_delay = value

    @property
    def table_name(self) -> str:
        return self.store.table_name

    @property
    def draining(self) -> bool:
        """Set by a worker shutting down: sagas stop after their current step's checkpoint
        and are released for another worker."""
        return self.flags.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.flags.draining = value

    @property
    def yielding(self) -> bool:
        """Set while a suspect waits to run alone: every other run stops between steps."""
        return self.flags.yielding

    @yielding.setter
    def yielding(self, value: bool) -> None:
        self.flags.yielding = value

    # --- listeners -----------------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        """Tell listeners (metrics) what happened; a failing listener is logged, not raised."""
        for listener in self.listeners:
            try:
                listener(event, fields)
            except Exception as exc:  # a metrics bug must not break a saga
                logger.warning("saga listener %r failed: %s", listener, exc)

    # --- claims and runs ---------------------------------------------------------------------------

    def definition_for(self, name: str, version: int) -> SagaDefinition | None:
        """The definition a saga of ``name`` started under ``version`` runs with, or
        ``None`` when this engine has not registered that version."""
        return self.definitions.get_version(name, version)

    async def claim(
        self,
        limit: int,
        *,
        saga_ids: Sequence[uuid.UUID] | None = None,
        suspects: bool | None = None,
    ) -> list[SagaRow]:
        """Claim up to ``limit`` due sagas this engine can run (registered (name, version)
        pairs only). ``suspects``: only (``True``) or none of (``False``) the sagas whose
        worker was lost at least twice in a row while they ran, to be run on their own.

        A claim that fails after it may have committed (its reply lost) took rows nobody
        runs: the next claim first releases them (due at once, no recovery counted)."""
        if not self.definitions:
            return []
        if self._unclaim and self._claims == 0:
            released = await self.store.saga_unclaim(self.worker_id, list(self._held))
            self._unclaim = False
            if released:
                logger.warning(
                    "released %s saga(s) claimed by a claim whose reply was lost", released
                )
        sent = monotonic()
        self._claims += 1
        try:
            rows = await self.store.saga_claim(
                owner=self.worker_id,
                lease=self.execution_lease,
                limit=limit,
                saga_names=sorted(self.definitions),
                saga_ids=saga_ids,
                versions=self.definitions.pairs(),
                suspects=suspects,
            )
        except BaseException:
            self._unclaim = True
            raise
        finally:
            self._claims -= 1
        for row in rows:
            self._held[row.id] = sent
        return rows

    async def drive(self, row: SagaRow, *, isolated: bool = False) -> None:
        """Run one claimed saga until it stops being held by this worker."""
        sent = self._held.get(row.id)
        try:
            await self.executor.drive(row, sent=sent, isolated=isolated)
        finally:
            self._held.pop(row.id, None)

    async def release_unstarted(self, rows: Sequence[SagaRow]) -> None:
        """Give back sagas claimed but never driven (the worker is stopping)."""
        for row in rows:
            self._held.pop(row.id, None)
            if row.lease_token is None:
                continue
            try:
                await self.store.saga_release(row.id, row.lease_token, None)
            except Exception as exc:  # the lease expires; another worker takes over then
                logger.warning("could not release lease: %s", exc, extra={"saga_id": str(row.id)})

    async def flush(self) -> None:
        """Wait until every checkpoint queued so far is written."""
        await self.writer.flush()
        await asyncio.sleep(0)
