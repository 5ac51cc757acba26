"""A claimed run of one saga: what the worker holds in memory while it drives the saga, and
every write the run makes (fenced by its lease token), shared by the sequential loop
(``executor``) and the parallel one (``branches``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from saga_core import history as h
from saga_core import machine as m
from saga_core import waits
from saga_core.checkpoint import CheckpointWriter
from saga_core.context import StepContext
from saga_core.definition import SagaDefinition, StepSpec
from saga_core.errors import SagaConflictError
from saga_core.lease import DbClock, Lease, LeaseLost, monotonic
from saga_core.logs import SagaLog
from saga_core.rows import (
    STEP_INPUTS_KEY,
    STEP_OUTPUTS_KEY,
    machine_state,
    parse_token,
    shape_of,
    update_for,
    with_tokens,
)
from saga_core.store.base import (
    Applied,
    Checkpoint,
    DeadlineChange,
    LeaseChange,
    NotApplied,
    RowUpdate,
    SagaRow,
    SagaStore,
)
from saga_core.tracing import NO_SPAN, RunSpan

__all__ = ["Flags", "Run", "RunDeps", "RunSettings", "Transactions"]

Emit = Callable[..., None]


@dataclass
class RunSettings:
    """How runs behave (one object per engine, shared by its runs)."""

    worker_id: str
    execution_lease: timedelta
    in_place_retry_max: timedelta
    max_payload_bytes: int
    max_recoveries: int | None
    unexpected_error_delay: timedelta = timedelta(seconds=5)
    """How long a saga whose run stopped on an unexpected error (not a step's own failure:
    those follow its retry policy) waits before a worker tries it again."""
    interruption_delay: timedelta = timedelta(seconds=2)
    """How long a saga waits after its run could not start a step for a reason of the
    worker's own (no database connection to be had): not a failed attempt."""


@dataclass
class Flags:
    """Set by the worker process; read by every run between two steps."""

    draining: bool = False
    """Shutting down: runs stop after their current step's checkpoint and are released."""
    yielding: bool = False
    """A suspect waits to run alone: every run but the isolated one stops between steps."""


Factory = Callable[[], Coroutine[Any, Any, Any]]


class Transactions(Protocol):
    """The transactional-step hooks (``txstep``) as the run sees them."""

    async def begin(
        self, run: Run, factory: Factory, ctx: StepContext
    ) -> tuple[Factory, StepContext]: ...

    async def commit(self, run: Run, checkpoint: Checkpoint, succeeded: bool) -> Applied | None: ...

    async def discard(self, run: Run) -> None: ...


@dataclass
class RunDeps:
    """What a run needs from the engine: explicit, so that any store can drive it."""

    store: SagaStore
    writer: CheckpointWriter
    settings: RunSettings
    flags: Flags
    emit: Emit
    tx: Transactions


@dataclass
class Run:
    row: SagaRow
    definition: SagaDefinition
    deps: RunDeps
    lease: Lease
    clock: DbClock
    log: SagaLog
    """The run's logger, with ``saga_id``, ``saga_name`` and ``worker`` bound."""
    span: RunSpan = field(default_factory=lambda: NO_SPAN)
    isolated: bool = False
    """Run alone (a suspect): worker-wide yielding does not stop it."""
    context: dict[str, Any] = field(init=False)
    steps: list[dict[str, Any]] = field(init=False)
    state: m.MachineState = field(init=False)
    shape: m.Shape = field(init=False)
    tx: Any = None
    """The open transaction of the transactional step in flight (see ``txstep``)."""
    _written: tuple[list[dict[str, Any]], m.MachineState] | None = None
    """``steps`` as the last checkpoint made them, with the state they were made from."""

    def __post_init__(self) -> None:
        self.context = dict(self.row.context)
        self.steps = with_tokens(self.row)
        self.state = m.claimed(machine_state(self.row))
        self.shape = shape_of(self.row)

    @classmethod
    def claimed(
        cls, row: SagaRow, definition: SagaDefinition, deps: RunDeps, *, log: SagaLog, sent: float
    ) -> Run:
        """The run of a row a claim sent at monotonic ``sent`` returned."""
        assert row.lease_token is not None, "a claimed row carries its lease token"
        saga_id, store = row.id, deps.store

        async def renew(token: uuid.UUID) -> float | None:
            return await store.saga_renew_lease(saga_id, token)

        length = deps.settings.execution_lease.total_seconds()
        lease = Lease(
            row.lease_token,
            length,
            sent=sent,
            renew=renew,
            expire_unanswered=store.dialect != "sqlite",
        )
        return cls(
            row=row,
            definition=definition,
            deps=deps,
            lease=lease,
            clock=DbClock(row.updated_at),
            log=log,
        )

    # --- small facts -------------------------------------------------------------------------

    @property
    def saga_id(self) -> uuid.UUID:
        return self.row.id

    @functools.cached_property
    def saga_id_text(self) -> str:
        return str(self.row.id)

    @property
    def worker(self) -> str:
        return self.deps.settings.worker_id

    def at(self) -> str:
        """Now by the database clock, for history entries."""
        return self.clock.iso()

    def db_now(self) -> datetime:
        return self.clock.now()

    def should_stop(self) -> bool:
        """Stop between steps and hand the saga over (shutdown, or a suspect waits)."""
        flags = self.deps.flags
        return flags.draining or (flags.yielding and not self.isolated)

    def spec(self, index: int) -> StepSpec:
        return self.definition.steps[index]

    def step_token(self, index: int) -> uuid.UUID:
        return parse_token(str(self.steps[index]["token"]))

    def entry(self, spec: StepSpec, phase: str, attempt: int) -> dict[str, Any]:
        return h.attempt(
            at=self.at(),
            phase=phase,
            step_id=spec.step_id,
            step_class=spec.step_class,
            attempt=attempt,
            worker=self.worker,
        )

    def interrupted_note(self, reason: str, traceback: str | None = None) -> dict[str, Any]:
        state = self.state
        idx = state.cursor
        step_id = str(self.steps[idx]["step_id"]) if 0 <= idx < len(self.steps) else None
        return h.interrupted(
            at=self.at(),
            phase=state.phase.value,
            step_id=step_id,
            worker=self.worker,
            reason=reason,
            traceback=traceback,
        )

    # --- events the engine's listeners see ------------------------------------------------------

    def emit_step(self, entry: dict[str, Any]) -> None:
        self.deps.emit(
            "step",
            saga_name=self.row.saga_name,
            step_id=entry["step_id"],
            phase=entry["phase"],
            status=entry["status"],
            duration=entry.get("duration_ms", 0.0) / 1000,
        )

    def finished(self, state: m.MachineState, was: m.SagaStatus | None = None) -> None:
        """Log (and tell listeners) how a transition from status ``was`` to ``state`` ended
        the saga, or that it started rolling back."""
        if was is m.SagaStatus.RUNNING and state.status is m.SagaStatus.COMPENSATING:
            self.log.bind(status=state.status.value).warning(
                "saga rolls back: compensating its completed steps, newest first"
            )
        status = state.status
        if status.is_terminal or status is m.SagaStatus.FAILED:
            self.deps.emit("finished", saga_name=self.row.saga_name, status=status._value_)
            if status is m.SagaStatus.FAILED:
                self.log.bind(status=status._value_).error(
                    "saga FAILED: an operator must act (%s)", self.row.saga_name
                )
            elif self.log.isEnabledFor(logging.INFO):  # most sagas: not logged, no bind
                log = self.log.bind(status=status._value_)
                if status is m.SagaStatus.COMPENSATED:
                    log.info("saga compensated (rolled back)")
                else:
                    log.info("saga %s", status._value_.lower())

    # --- writes ----------------------------------------------------------------------------------

    async def checkpoint(
        self,
        t: m.Transition,
        history: list[dict[str, Any]],
        *,
        last_error: str | None = None,
        set_last_error: bool = False,
        succeeded: bool = False,
        in_flight: frozenset[int] = frozenset(),
    ) -> waits.Settled | None:
        """Persist transition ``t`` with ``history``, fenced by the lease; LeaseLost when
        the token no longer matches. The checkpoint of a transactional step that
        ``succeeded`` commits with the step's own transaction. Events that arrived meanwhile
        for steps not running now (``in_flight``) are then settled: what that decided, or
        None."""
        written = self._written
        upd = update_for(
            t,
            self.steps,
            at=self.at() if t.notes else None,  # the time of the transition's own notes
            history=history,
            context=self.context,
            last_error=last_error,
            set_last_error=set_last_error,
            # Unchanged since this run's last checkpoint: only the steps that moved are redone.
            written=written[1] if written and written[0] is self.steps else None,
        )
        sent = monotonic()
        res = await self.deps.tx.commit(
            self, Checkpoint(self.saga_id, self.lease.token, upd), succeeded
        )
        if res is None:
            raise LeaseLost()
        self.lease.confirm(sent, res.lease_left)
        self.steps = upd.steps_state or self.steps
        self.state = t.state
        self._written = (self.steps, t.state)
        if not res.inbox:
            return None
        try:
            return await self.settle_inbox(in_flight)
        except LeaseLost:
            if t.schedule.kind in (m.ScheduleKind.HOLD, m.ScheduleKind.RETRY_IN_PLACE):
                raise
            # Released by this checkpoint and changed since (an event consumed, an
            # operator): whoever changed it settled the inbox.
            return None

    async def write(self, upd: RowUpdate) -> Applied:
        """A fenced update through the checkpoint writer; LeaseLost when fenced out."""
        sent = monotonic()
        res = await self.deps.writer.write(Checkpoint(self.saga_id, self.lease.token, upd))
        if res is None:
            raise LeaseLost()
        self.lease.confirm(sent, res.lease_left)
        return res

    async def locked(self, fn: Callable[[SagaRow, datetime], RowUpdate | None]) -> SagaRow:
        """Lock the saga's row, compute an update from it (``fn``, pure) and write it, fenced
        by the lease (LeaseLost otherwise); the run adopts the row as written."""
        conflicts, backoff = 0, 0.05
        while True:
            sent = monotonic()
            try:
                row, written = await self.deps.store.saga_update_locked(
                    self.saga_id, fn, lease_token=self.lease.token, tell_unapplied=True
                )
                break
            except SagaConflictError:
                # SQLite: another process (a delivery) wrote between the read and the write;
                # ``fn`` is pure: decide again on the row as it is now.
                conflicts += 1
                if conflicts == 5:
                    raise
            except NotApplied as exc:
                # The database went away before the write committed (a killed connection, a
                # restart): nothing was written. Like a checkpoint, try again while the lease
                # is known to hold; past it, another worker may have the saga.
                self.lease.check()
                if self.lease.left() <= 0:
                    raise LeaseLost() from exc.cause
                self.log.warning(
                    "database unavailable for a locked write, retrying in %.2fs: %s",
                    backoff,
                    exc.cause,
                )
                await asyncio.sleep(min(backoff, max(self.lease.left(), 0.01)))
                backoff = min(backoff * 2, 1.0)
        self.context = dict(row.context)
        steps = [dict(s) for s in row.steps_state]
        if not all("token" in s for s in steps):
            # A row stored by an earlier version, not rewritten yet (the write changed
            # nothing): its steps keep the tokens this run gave them.
            steps = with_tokens(row)
        self.steps = steps
        self.state = machine_state(row)
        if written and row.lease_owner is not None and row.deadline_at is not None:
            # Only a row this write changed tells the lease: its updated_at is the write's
            # database time. An unchanged row's updated_at dates from its last write, while
            # renewals (which leave updated_at alone) have moved deadline_at on since: their
            # difference would overstate the lease by the row's age, and the keeper would stop
            # renewing a lease that is about to run out.
            self.lease.confirm(sent, (row.deadline_at - row.updated_at).total_seconds())
        return row

    async def settle_inbox(self, in_flight: frozenset[int] = frozenset()) -> waits.Settled | None:
        """Consume the events of the inbox whose steps are not running now (``in_flight``);
        drop those whose steps finished without waiting. The settled result, or None when
        there was nothing to do."""
        result: list[waits.Settled] = []

        def settle(row: SagaRow, now: datetime) -> RowUpdate | None:
            result.clear()  # decided again if the write must be retried
            state = self.state
            out = waits.settle_inbox(
                state,
                self.shape,
                self.context,
                self.steps,
                list(row.inbox or []),
                at=now.isoformat(),
                now=now,
                in_flight=in_flight,
            )
            if not out.changed:
                return None
            result.append(out)
            upd = RowUpdate(
                context=out.context,
                steps_state=out.steps,
                history=out.history,
                inbox=out.inbox,
                set_inbox=True,
            )
            if out.released and row.lease_owner is None and state.status is m.SagaStatus.SUSPENDED:
                # Released by the checkpoint just written: nobody holds it; due now.
                t = m.notified(state)
                upd.status = t.state.status.value
                upd.deadline = DeadlineChange.AFTER
            return upd

        await self.locked(settle)
        return result[0] if result else None

    async def release(
        self,
        note: dict[str, Any] | None,
        *,
        delay: timedelta = timedelta(0),
        after_error: bool = False,
    ) -> None:
        """Give the saga up: due after ``delay`` for any worker. ``after_error``: the run
        stopped on an unexpected error: the lease token is rotated (a renewal in flight
        cannot extend it) but the owner is kept, so the next claim counts a recovery and a
        saga whose runs keep failing this way is quarantined (``max_recoveries``)."""
        upd = RowUpdate(
            deadline=DeadlineChange.AFTER,
            delay=delay,
            lease=LeaseChange.KEEP if after_error else LeaseChange.RELEASE,
            history=[note] if note else [],
            new_lease_token=uuid.uuid4() if after_error else None,
        )
        try:
            # Through the writer: a checkpoint of this saga still queued there lands first.
            await self.deps.writer.write(Checkpoint(self.saga_id, self.lease.token, upd))
        except Exception as exc:  # the lease will expire; another worker takes over then
            self.log.warning("could not release lease: %s", exc)
        self.lease.mark_lost()

    async def fail_for_operator(self, label: str, step_id: str | None, reason: str) -> None:
        """Set the saga FAILED without running anything, with ``reason`` as its last error
        and a ``label`` history entry: it waits for an operator."""
        upd = RowUpdate(
            status=m.SagaStatus.FAILED.value,
            last_error=reason,
            history=[
                h.admin(
                    at=self.at(), step_id=step_id, status=label, reason=reason, worker=self.worker
                )
            ],
            deadline=DeadlineChange.CLEAR,
            lease=LeaseChange.RELEASE,
        )
        await self.write(upd)
        self.span.failed_for_operator(label, reason)
        self.log.error("%s", reason)
        self.deps.emit("finished", saga_name=self.row.saga_name, status=m.SagaStatus.FAILED.value)

    def store_output(self, spec: StepSpec, output: dict[str, Any] | None, inp: Any) -> None:
        """Keep a successful step's input and output in the context (for the steps after it
        and for its compensation)."""
        outputs = dict(self.context.get(STEP_OUTPUTS_KEY) or {})
        inputs = dict(self.context.get(STEP_INPUTS_KEY) or {})
        outputs[spec.step_id] = output
        inputs[spec.step_id] = inp
        self.context = {**self.context, STEP_OUTPUTS_KEY: outputs, STEP_INPUTS_KEY: inputs}
