"""``SagaTestKit``: run registered sagas in memory, on virtual time, deterministically.

The kit runs the production engine, executor and admin code on a :class:`MemorySagaStore`
whose database clock is the event loop's virtual clock (:class:`VirtualTimeLoop`): retry
delays, step and wait timeouts, ``run_at`` and leases are fast-forwarded, so a saga with a
one-hour backoff settles in milliseconds. Retry jitter comes from a generator seeded by the
kit. A worker "process" claims and drives the due sagas; when a simulated crash strikes
(``crash_at``), that process vanishes without another write and a new one takes over once the
lease has expired, as another ``sagad`` would.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import random
import uuid
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from saga_core.admin import SagaAdmin
from saga_core.definition import SagaDefinition
from saga_core.errors import SagaDefinitionError, SagaError
from saga_core.machine import SagaStatus
from saga_core.orchestrator import SagaOrchestrator
from saga_core.payload import DEFAULT_MAX_PAYLOAD_BYTES
from saga_core.retry import jitter_random
from saga_core.rows import CLAIMABLE_STATUSES, RETRY_AT_KEY, waits_of
from saga_core.store.base import SagaFilter, SagaRow
from saga_core.testing.calls import CrashPoint, StepCalls, instrument
from saga_core.testing.loop import VirtualTimeLoop
from saga_core.testing.memdata import MemoryDatabase
from saga_core.testing.memstore import MemorySagaStore
from saga_core.testing.result import SagaResult
from saga_core.testing.txmem import no_session_message
from saga_core.testing.wiring import memory_orchestrator
from saga_core.waits import Delivery

__all__ = ["START", "SagaTestKit"]

START = datetime(2030, 1, 1, tzinfo=UTC)
"""Where the kit's database clock starts (a fixed time: runs do not depend on the date)."""


class _VirtualClock:
    """The database clock: ``start`` plus the virtual time the kit's loops have run for."""

    def __init__(self, start: datetime) -> None:
        self._base = self._last = start
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._anchor = 0.0

    def __call__(self) -> datetime:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._last
        if self._loop is None or self._loop() is not loop:
            # A new loop (another run() with the same kit): time goes on from where it was.
            self._loop, self._anchor, self._base = weakref.ref(loop), loop.time(), self._last
        self._last = self._base + timedelta(seconds=loop.time() - self._anchor)
        return self._last


def _virtual_loop() -> VirtualTimeLoop:
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        raise SagaError(
            "SagaTestKit runs on virtual time: run your test with saga_core.testing.run(...) "
            "or decorate it with @saga_core.testing.virtual_time"
        )
    return loop


class SagaTestKit:
    """Sagas in memory, on virtual time, with counted step calls and simulated crashes.

    Args:
        seed: seeds the retry jitter (``ExponentialRetry``): every run is the same.
        execution_lease: the workers' lease (a crashed worker's saga is taken over once it
            expires, on the virtual clock).
        in_place_retry_max: as on ``SagaOrchestrator``.
        max_recoveries: as on ``SagaOrchestrator``.
        max_payload_bytes: as on ``SagaOrchestrator``.
        session_maker: the application's database, for transactional steps (e.g. SQLite in
            memory); without one a definition with a transactional step is refused.
        start: the database clock's time when the kit is created.

    Its methods must run on a :class:`VirtualTimeLoop` (``saga_core.testing.run`` or the
    ``virtual_time`` decorator).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        execution_lease: timedelta = timedelta(minutes=5),
        in_place_retry_max: timedelta = timedelta(seconds=1),
        max_recoveries: int | None = 5,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        session_maker: async_sessionmaker[AsyncSession] | None = None,
        start: datetime = START,
    ) -> None:
        self.clock = _VirtualClock(start)
        self.database = MemoryDatabase(self.clock)
        self.random = random.Random(seed)
        self.calls = StepCalls()
        self.calls.on_crash = self._crashed
        self.crashes: list[tuple[CrashPoint, str]] = []
        """Simulated crashes so far: where, and which worker died."""
        self._options: dict[str, Any] = {
            "execution_lease": execution_lease,
            "in_place_retry_max": in_place_retry_max,
            "max_recoveries": max_recoveries,
            "max_payload_bytes": max_payload_bytes,
            "session_maker": session_maker,
        }
        self._session_maker = session_maker
        self.client = memory_orchestrator(
            database=self.database, worker_id="kit-client", **self._options
        )
        """Starts, notifies and reads (never runs a saga): your application's side."""
        self.admin = SagaAdmin(engine=self.client.engine, actor="operator")
        """Operator actions (``retry_step``, ``skip_step``, ``compensate_step``, ``abort``)
        and reads, as ``sagactl`` would apply them."""
        self._registered: list[tuple[str, SagaDefinition, int]] = []
        self._numbers = itertools.count(1)
        self._aggregations = itertools.count(1)
        self._worker = self._new_worker()
        self._crash: asyncio.Event | None = None

    # --- definitions and starts ---------------------------------------------------------------

    def register(self, name: str, definition: SagaDefinition, *, version: int = 1) -> None:
        """Register ``definition`` as ``name`` (as ``SagaOrchestrator.register``); its steps
        are wrapped to count their calls.

        Raises:
            SagaDefinitionError: as ``register``; a transactional step without a
                ``session_maker``.
        """
        if not isinstance(definition, SagaDefinition):
            self.client.register(name, definition, version=version)  # raises, saying why
        for spec in definition.steps:
            if spec.transactional and self._session_maker is None:
                raise SagaDefinitionError(no_session_message(spec.step_id))
        counted = instrument(definition, self.calls)
        self.client.register(name, counted, version=version)
        self._worker.register(name, counted, version=version)
        self._registered.append((name, counted, version))

    def _new_worker(self) -> SagaOrchestrator[Any]:
        worker = memory_orchestrator(
            database=self.database, worker_id=f"kit-worker-{next(self._numbers)}", **self._options
        )
        for name, definition, version in self._registered:
            worker.register(name, definition, version=version)
        return worker

    async def start(
        self,
        saga_name: str,
        initial_data: Any,
        *,
        aggregation_id: str | None = None,
        run_at: datetime | timedelta | None = None,
        idempotency_key: str | None = None,
        trace_id: str | None = None,
    ) -> uuid.UUID:
        """Start a saga (as ``SagaOrchestrator.start``; ``aggregation_id`` defaults to a new
        one). It runs on :meth:`run_until_settled`."""
        _virtual_loop()
        return await self.client.start(
            saga_name=saga_name,
            initial_data=initial_data,
            aggregation_id=aggregation_id or f"{saga_name}-{next(self._aggregations)}",
            run_at=run_at,
            idempotency_key=idempotency_key,
            trace_id=trace_id,
        )

    async def run_saga(self, saga_name: str, initial_data: Any, **start: Any) -> SagaResult:
        """:meth:`start`, :meth:`run_until_settled`, then the saga's :meth:`result`."""
        saga_id = await self.start(saga_name, initial_data, **start)
        await self.run_until_settled()
        return await self.result(saga_id)

    # --- time and running -----------------------------------------------------------------------

    def now(self) -> datetime:
        """The database clock (virtual): use it for ``run_at=kit.now() + ...``."""
        return self.clock()

    def crash_at(self, point: CrashPoint) -> None:
        """Arm a simulated worker crash at ``point`` (once; its ``occurrence`` counted from
        now): the worker running that step dies there, and a new one takes the saga over
        once the lease has expired."""
        self.calls.arm(point)

    async def run_until_settled(
        self, *, through_event_waits: bool = False, limit: timedelta = timedelta(days=365)
    ) -> None:
        """Run every saga until it is finished, FAILED, or waits for an event, jumping over
        retry delays, ``run_at`` times and the leases of crashed workers. With
        ``through_event_waits``, event waits with a timeout run into it too.

        Raises:
            SagaError: a saga is due but no registered definition (name, version) runs it;
                or the sagas have not settled after ``limit`` of virtual time (a step that
                never returns, a retry policy without end): the running ones are released.
        """
        _virtual_loop()
        give_up = self.now() + limit
        while True:
            if await self._round(give_up, limit):
                continue
            wake = await self._next_wake(through_event_waits)
            if wake is None:
                return
            if wake[0] > give_up:
                raise self._unsettled(limit)
            delay = (wake[0] - self.now()).total_seconds()
            if delay <= 0:
                raise SagaError(
                    f"saga {wake[1].id} ({wake[1].saga_name!r}, version "
                    f"{wake[1].definition_version}) is due but not registered on this kit"
                )
            await asyncio.sleep(delay)

    @staticmethod
    def _unsettled(limit: timedelta) -> SagaError:
        return SagaError(
            f"the sagas have not settled within {limit} of virtual time: a step that never "
            "returns, or a retry policy without end?"
        )

    async def advance(self, by: timedelta | float) -> None:
        """Let ``by`` of virtual time pass, running whatever comes due meanwhile (event
        waits time out when their time comes)."""
        _virtual_loop()
        seconds = by.total_seconds() if isinstance(by, timedelta) else float(by)
        until = self.now() + timedelta(seconds=seconds)
        limit = timedelta(days=365)  # a run in progress at ``until`` finishes its steps
        while True:
            while await self._round(until + limit, limit):
                pass
            wake = await self._next_wake(True)
            stop = until if wake is None or wake[0] > until else wake[0]
            await asyncio.sleep(max((stop - self.now()).total_seconds(), 0.0))
            if stop == until:
                while await self._round(until + limit, limit):
                    pass
                return

    async def _round(self, give_up: datetime, limit: timedelta) -> int:
        """One ``run_due`` of the current worker (jitter seeded), stopped at ``give_up`` (and
        ``SagaError``, naming ``limit``); a crash kills the worker and puts a new one in its
        place. How many sagas it claimed."""
        worker = self._worker
        self._crash = crash = asyncio.Event()
        context = contextvars.copy_context()
        context.run(jitter_random.set, self.random)
        loop = asyncio.get_running_loop()
        run = loop.create_task(worker.run_due(), context=context)
        died = loop.create_task(crash.wait())
        left = max((give_up - self.now()).total_seconds(), 0.0)
        done, _ = await asyncio.wait({run, died}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        died.cancel()
        if not done:  # out of time: stop the worker as sagad would on SIGTERM
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            raise self._unsettled(limit)
        if not crash.is_set():
            return run.result()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        self._worker = self._new_worker()
        return 1

    def _crashed(self, point: CrashPoint) -> None:
        worker = self._worker
        store = worker.engine.store
        assert isinstance(store, MemorySagaStore)
        store.crash()
        self.crashes.append((point, worker.engine.worker_id))
        if self._crash is not None:
            self._crash.set()

    async def _next_wake(self, through_event_waits: bool) -> tuple[datetime, SagaRow] | None:
        store = self.client.engine.store
        rows = await store.saga_list(SagaFilter(statuses=CLAIMABLE_STATUSES), limit=1_000_000)
        wakes = [
            (row.deadline_at, row)
            for row in rows
            if row.deadline_at is not None and (through_event_waits or not _waits_for_event(row))
        ]
        return min(wakes, key=lambda w: w[0], default=None)

    # --- events and results -----------------------------------------------------------------------

    async def deliver(
        self,
        *,
        saga_id: uuid.UUID | None = None,
        token: uuid.UUID | None = None,
        aggregation_id: str | None = None,
        event_name: str | None = None,
        event: Any = None,
    ) -> Delivery:
        """Deliver an event by token or by correlation (as ``SagaOrchestrator.deliver``)."""
        return await self.client.deliver(
            saga_id=saga_id,
            token=token,
            aggregation_id=aggregation_id,
            event_name=event_name,
            event=event,
        )

    async def notify(
        self,
        *,
        saga_id: uuid.UUID | None = None,
        token: uuid.UUID | None = None,
        aggregation_id: str | None = None,
        event_name: str | None = None,
        event: Any = None,
    ) -> bool:
        """:meth:`deliver`, saying only whether the event was accepted."""
        delivery = await self.deliver(
            saga_id=saga_id,
            token=token,
            aggregation_id=aggregation_id,
            event_name=event_name,
            event=event,
        )
        return delivery.accepted

    async def token(self, saga_id: uuid.UUID, step_id: str | None = None) -> uuid.UUID:
        """The token a step handed out (``current_step().token``): the current step's, or
        ``step_id``'s (a branch of a parallel saga)."""
        snap = await self.admin.get_saga(saga_id)
        if step_id is None:
            return snap.step_execution_token
        for entry in snap.steps_state:
            if entry.get("step_id") == step_id:
                return uuid.UUID(str(entry["token"]))
        raise SagaError(f"saga {saga_id} has no step {step_id!r}")

    async def result(self, saga_id: uuid.UUID) -> SagaResult:
        """What the saga came to so far: status, outputs, history, and how many times each
        step's ``execute``/``compensate`` ran."""
        snap = await self.admin.get_saga(saga_id)
        executions, compensations = self.calls.of(saga_id)
        return SagaResult.of(snap, executions, compensations)


def _waits_for_event(row: SagaRow) -> bool:
    """Held by an event wait (nothing but an event, or its timeout, moves it on)."""
    if row.status != SagaStatus.SUSPENDED.value or not waits_of(row.context):
        return False
    return not row.context.get(RETRY_AT_KEY)
