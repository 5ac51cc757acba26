"""``SagaOrchestrator``: the application's entry point (register, start, notify, run_due,
wait). The runtime underneath it is ``SagaEngine`` (``orchestrator.engine``)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from saga_core import machine as m
from saga_core.context import check_event_name
from saga_core.definition import SagaDefinition
from saga_core.engine import SagaEngine
from saga_core.errors import (
    SagaConflictError,
    SagaDefinitionError,
    SagaError,
    SagaInputError,
    SagaNotFoundError,
)
from saga_core.lease import monotonic
from saga_core.payload import DEFAULT_MAX_PAYLOAD_BYTES, check_note_text, check_text, json_object
from saga_core.rows import new_saga_values
from saga_core.snapshot import SagaSnapshot
from saga_core.state import SagaState, SagaStateMixin
from saga_core.versioning import DEFAULT_VERSION, check_version
from saga_core.waits import REFUSALS_KEPT, Delivering, Delivery

__all__ = ["SagaEngine", "SagaOrchestrator"]

M = TypeVar("M", bound=SagaStateMixin)

WAIT_STATUSES = frozenset(
    {
        m.SagaStatus.COMPLETED,
        m.SagaStatus.COMPENSATED,
        m.SagaStatus.ABORTED,
        m.SagaStatus.FAILED,
        m.SagaStatus.SUSPENDED,
    }
)


def _as_timedelta(value: timedelta | float | int, name: str) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise SagaError(f"{name} must be a timedelta or a number of seconds, got {value!r}")
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


class SagaOrchestrator(Generic[M]):
    """Registers saga definitions, starts sagas and runs them.

    Args:
        model_class: the SQLAlchemy model holding the sagas (mixes in ``SagaStateMixin``);
            ``SagaState`` (table ``saga_state``) by default.
        session_maker: an ``async_sessionmaker`` bound to the application's ``AsyncEngine``
            (``postgresql+asyncpg://`` or ``sqlite+aiosqlite://``).
        execution_lease: how long a claim lasts without renewal (at least 1 s). A worker
            that dies is replaced after this long; long steps renew it.
        in_place_retry_max: retry waits up to this long are spent by the worker holding
            the saga; longer ones suspend it until its due time.
        max_payload_bytes: the largest JSON accepted for initial data, events, step outputs
            and mock outputs.
        worker_id: identifies this process in leases and history (default host:pid:random).
        max_recoveries: a step whose worker was lost (crash, kill, host loss) this many times
            in a row is not run again: the next claim quarantines the saga as FAILED with the
            reason (a poison saga). ``None``: retry such a step forever.
        tracer_provider: an OpenTelemetry ``TracerProvider`` (the application's own): spans
            for every saga run, step attempt and compensation, in the trace current at
            ``start`` (see ``saga_core.tracing``). Needs ``saga-core[otel]``. ``None``: off.
    """

    def __init__(
        self,
        *,
        model_class: type[M] = SagaState,  # type: ignore[assignment]
        session_maker: async_sessionmaker[AsyncSession],
        execution_lease: timedelta | float = timedelta(minutes=5),
        in_place_retry_max: timedelta | float = timedelta(seconds=1),
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        worker_id: str | None = None,
        max_recoveries: int | None = 5,
        tracer_provider: Any = None,
    ) -> None:
        self.engine: SagaEngine[M] = SagaEngine(
            model_class=model_class,
            session_maker=session_maker,
            execution_lease=_as_timedelta(execution_lease, "execution_lease"),
            in_place_retry_max=_as_timedelta(in_place_retry_max, "in_place_retry_max"),
            max_payload_bytes=max_payload_bytes,
            worker_id=worker_id,
            max_recoveries=max_recoveries,
            tracer_provider=tracer_provider,
        )

    @classmethod
    def on_engine(cls, engine: SagaEngine[Any]) -> SagaOrchestrator[Any]:
        """An orchestrator over an engine built elsewhere (``SagaEngine.on_store``: what
        ``saga_core.testing`` runs on its in-memory store)."""
        orchestrator: SagaOrchestrator[Any] = cls.__new__(cls)
        orchestrator.engine = engine
        return orchestrator

    # --- definitions ----------------------------------------------------------------------

    def register(
        self, name: str, definition: SagaDefinition, *, version: int = DEFAULT_VERSION
    ) -> None:
        """Register ``definition`` as ``version`` of ``name`` (each pair once per
        orchestrator). New sagas start under the highest version registered; a saga runs
        with the version it started under, so keep registering an older version while
        sagas of it are in flight.

        Raises:
            SagaDefinitionError: a bad name, definition or version (a positive int), or a
                (name, version) already registered.
        """
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise SagaDefinitionError(
                f"saga name must be a non-empty string of at most 200 characters, got {name!r}"
            )
        try:
            check_text(name, "saga name")  # storable: no NUL, no lone surrogates
        except SagaInputError as exc:
            raise SagaDefinitionError(str(exc)) from None
        if not isinstance(definition, SagaDefinition):
            raise SagaDefinitionError(
                f"register({name!r}, ...) needs a SagaDefinition (from SagaBuilder.build()), got {definition!r}"
            )
        self.engine.definitions.add(name, check_version(version, name), definition)

    @property
    def saga_names(self) -> list[str]:
        return sorted(self.engine.definitions)

    async def create_tables(self) -> list[str]:
        """Create or upgrade this orchestrator's saga table and the worker registry."""
        return await self.engine.store.schema_upgrade()

    # --- running ---------------------------------------------------------------------------

    async def start(
        self,
        *,
        saga_name: str,
        initial_data: Any,
        aggregation_id: str,
        trace_id: str | None = None,
        session: AsyncSession | None = None,
        inline: bool = False,
        idempotency_key: str | None = None,
        run_at: datetime | timedelta | None = None,
    ) -> uuid.UUID:
        """Start a saga; returns its id.

        Args:
            saga_name: a registered name; the saga starts under (and always runs with) the
                highest version registered for it.
            initial_data: a dict (or pydantic model) of JSON data, given to input maps.
            aggregation_id: the business key; at most one active saga per value.
            trace_id: carried through history and ``current_step()``; generated if omitted
                (with tracing on: the trace id of the span current here, if any).
            session: add the row to this session: it commits with the caller's transaction.
            inline: drive the saga in this task until it completes, suspends or ends.
            idempotency_key: a start repeated with the same key (1 to 200 characters)
                returns the id of the saga the first one created, whatever its status,
                instead of starting another, even under concurrent starts; nothing is
                written and the repeated call's data and ``run_at`` are ignored.
            run_at: when the saga becomes due: an aware ``datetime``, or a ``timedelta``
                from now by the database clock. Until then it is ``RUNNING`` with no
                worker and a due time in the future.

        Raises:
            SagaInputError: unknown saga name, data that is not a JSON object, oversize;
                an ``idempotency_key`` already used by a saga with another ``saga_name``
                or ``aggregation_id``; a naive ``run_at`` or a negative delay.
            ActiveSagaAlreadyExistsError: another saga for ``aggregation_id`` is active
                (not raised for a repeated ``idempotency_key``: its saga is returned).
            SagaError: ``inline=True`` with ``session=``, or with a ``run_at`` in the future.
        """
        eng = self.engine
        if inline and session is not None:
            raise SagaError(
                "start(inline=True) cannot be combined with session=: the row is not committed "
                "until your transaction commits; start it without inline and let a worker run it"
            )
        definition = eng.definitions.get(saga_name) if isinstance(saga_name, str) else None
        if definition is None:
            known = ", ".join(self.saga_names) or "none"
            raise SagaInputError(f"unknown saga name {saga_name!r}; registered: {known}")
        check_text(aggregation_id, "aggregation_id")
        data = json_object(initial_data, "initial_data", eng.max_payload_bytes)
        if trace_id is not None:
            check_text(trace_id, "trace_id", max_chars=128)
        trace_entries: dict[str, str] = {}
        if eng.tracing is not None:
            trace_id, trace_entries = eng.tracing.capture(trace_id)
        if trace_id is None:
            trace_id = uuid.uuid4().hex
        if idempotency_key is not None:
            check_text(idempotency_key, "idempotency_key")
        due_in: timedelta | None = None
        due_at: datetime | None = None
        if run_at is not None:
            if isinstance(run_at, datetime):
                if run_at.tzinfo is None or run_at.utcoffset() is None:
                    raise SagaInputError(
                        f"run_at must be a timezone-aware datetime (datetime.now(UTC) + ...), got {run_at!r}"
                    )
                due_at = run_at.astimezone(UTC)
                future = due_at > datetime.now(UTC)
            elif isinstance(run_at, timedelta):
                if run_at < timedelta(0):
                    raise SagaInputError(f"run_at must not be a negative delay, got {run_at}")
                due_in = run_at
                future = run_at > timedelta(0)
            else:
                raise SagaInputError(
                    f"run_at must be a datetime or a timedelta, got {type(run_at).__name__}"
                )
            if inline and future:
                raise SagaError(
                    "start(inline=True) cannot be combined with a run_at in the future: the saga "
                    "is not due yet; start it without inline and let a worker run it when due"
                )
        values = new_saga_values(definition, saga_name, aggregation_id, data, trace_id)
        values["definition_version"] = eng.definitions.latest_version(saga_name)
        values["context"].update(trace_entries)
        if idempotency_key is not None:
            values["idempotency_key"] = idempotency_key
        if due_at is not None:
            values["deadline_at"] = due_at
        saga_id: uuid.UUID = values["id"]
        existing = await eng.store.saga_insert(values, session=session, due_in=due_in)
        if existing is not None:
            if existing.saga_name != saga_name or existing.aggregation_id != aggregation_id:
                raise SagaInputError(
                    f"idempotency_key {idempotency_key!r} was already used to start saga "
                    f"{existing.id} ({existing.saga_name!r}, aggregation_id "
                    f"{existing.aggregation_id!r}); a key may not be reused for another saga "
                    f"name or aggregation id (got {saga_name!r}, {aggregation_id!r})"
                )
            # The saga the first start created: returned as it is (never driven here).
            return existing.id
        eng.emit("started", saga_name=saga_name)
        if inline:
            rows = await eng.claim(1, saga_ids=[saga_id])
            for row in rows:
                await eng.drive(row)
        return saga_id

    async def run_due(self, *, limit: int = 100) -> int:
        """Claim up to ``limit`` due sagas and drive them concurrently; how many it claimed.

        A saga whose worker was lost at least twice in a row while it ran (a *suspect*: it
        may be the one killing its workers) is not run beside others: when nothing else is
        due, one suspect is claimed and run on its own (within this call; calls running
        concurrently in one process do not isolate it from each other)."""
        eng = self.engine
        rows = await eng.claim(limit, suspects=False)
        if rows:
            await asyncio.gather(*(eng.drive(r) for r in rows))
            return len(rows)
        suspects = await eng.claim(1, suspects=True)
        for row in suspects:
            await eng.drive(row, isolated=True)
        return len(suspects)

    async def notify(
        self,
        *,
        saga_id: uuid.UUID | None = None,
        token: uuid.UUID | None = None,
        aggregation_id: str | None = None,
        event_name: str | None = None,
        event: Any = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Deliver an event; ``True`` when it was accepted. Two forms, exactly one of them:

        - ``saga_id`` and ``token``: the token a step handed out (``current_step().token``).
          It names that step's wait and stays valid across claims, worker takeovers,
          retries of the step and sibling branches, until the wait consumes an event or
          times out, the step finishes, or an operator acts on the saga;
        - ``aggregation_id`` and ``event_name`` (correlation, no token needed): for the
          active saga of that aggregation id, to a step that waits for an event of exactly
          that name (``wait_for_event(name=...)``).

        Accepted when that step is pending in forward execution (RUNNING or SUSPENDED, for
        an event wait or a retry wait) and no other event for it is pending. When no worker
        holds the saga, the event is consumed at once: appended to ``events``, it becomes
        ``latest_event``, the step's wait ends (its token is replaced) and the saga is
        RUNNING and due now, so the step runs again and sees it (the retry counter is kept).
        When a worker holds the saga (the step is still running: the other side answered
        before the step began to wait; or a sibling branch runs), the event is kept in the
        saga's inbox and consumed, exactly once, the moment the step waits; a step that
        finishes without waiting leaves it ``UNUSED``. History: ``RECEIVED`` (``queued``
        for the inbox), then ``CONSUMED`` or ``UNUSED``. The decision and its write are one
        locked transaction: of concurrent deliveries to one wait exactly one is accepted.

        Anything else is refused: ``False``, and the only change is a ``REFUSED`` history
        entry on the saga concerned (for correlation: the active saga of the aggregation id,
        else its newest saga), a bounded summary with the reason (never the whole event).
        After 100 recorded refusals a saga counts further ones in one
        ``REFUSALS_UNRECORDED`` entry. ``actor`` and ``reason``, when given, are recorded
        with the delivery (an operator delivering it by hand, as ``sagactl notify`` does);
        see :meth:`deliver` for why a delivery was refused.

        Raises:
            SagaInputError: not exactly one of the two forms; a malformed id, token,
                aggregation id or event name; an event that is not a JSON object, not
                storable text, or too large.
            SagaNotFoundError: no saga with that id, or no saga ever had that aggregation id.
        """
        result = await self.deliver(
            saga_id=saga_id,
            token=token,
            aggregation_id=aggregation_id,
            event_name=event_name,
            event=event,
            actor=actor,
            reason=reason,
        )
        return result.accepted

    async def deliver(
        self,
        *,
        saga_id: uuid.UUID | None = None,
        token: uuid.UUID | None = None,
        aggregation_id: str | None = None,
        event_name: str | None = None,
        event: Any = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> Delivery:
        """:meth:`notify`, returning the outcome: accepted or not, the saga concerned, its
        status as found and why a refused delivery was refused."""
        eng = self.engine
        by_token = saga_id is not None or token is not None
        by_name = aggregation_id is not None or event_name is not None
        if by_token == by_name or (by_token and (saga_id is None or token is None)):
            raise SagaInputError(_FORMS_MESSAGE)
        if by_name and (aggregation_id is None or event_name is None):
            raise SagaInputError(_FORMS_MESSAGE)
        check_note_text(actor, "actor")
        check_note_text(reason, "reason")
        ev = None if event is None else json_object(event, "event", eng.max_payload_bytes)
        if by_token:
            decide = Delivering(
                event=ev,
                token=_as_uuid(token, "token"),
                actor=actor,
                note=reason,
                max_inbox_bytes=4 * eng.max_payload_bytes,
            )
            target: dict[str, Any] = {"saga_id": _as_uuid(saga_id, "saga_id")}
        else:
            check_text(aggregation_id, "aggregation_id")
            decide = Delivering(
                event=ev,
                aggregation_id=aggregation_id,
                event_name=check_event_name(event_name, "event_name"),
                actor=actor,
                note=reason,
                max_inbox_bytes=4 * eng.max_payload_bytes,
            )
            target = {"aggregation_id": aggregation_id}
        for attempt in range(3):
            try:
                await eng.store.saga_deliver(decide, refusals_kept=REFUSALS_KEPT, **target)
            except SagaConflictError:
                # SQLite only: another process changed the saga between the read and the
                # accepting write. Decide again on the row as it is now.
                if attempt == 2:
                    raise
                continue
            break
        return decide.result()

    async def get_snapshot(self, saga_id: uuid.UUID) -> SagaSnapshot:
        """The saga as stored now (a plain read). Raises SagaNotFoundError."""
        sid = _as_uuid(saga_id, "saga_id")
        row = await self.engine.store.saga_get(sid, with_history=False)
        if row is None:
            raise SagaNotFoundError(f"no saga with id {saga_id}", saga_id)
        return SagaSnapshot.from_row(row)

    async def wait(
        self, saga_id: uuid.UUID, *, timeout: timedelta | float | None = None
    ) -> SagaSnapshot:
        """Return once the saga is COMPLETED, COMPENSATED, ABORTED, FAILED or SUSPENDED.

        Raises:
            TimeoutError: ``timeout`` (seconds or a timedelta) passed first.
        """
        limit = None if timeout is None else _as_timedelta(timeout, "timeout").total_seconds()
        deadline = None if limit is None else monotonic() + limit
        pause = 0.01
        while True:
            snap = await self.get_snapshot(saga_id)
            if snap.status in WAIT_STATUSES:
                return snap
            if deadline is not None:
                left = deadline - monotonic()
                if left <= 0:
                    raise TimeoutError(f"saga {saga_id} still {snap.status.value} after {limit:g}s")
                await asyncio.sleep(min(pause, left))
            else:
                await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.5)


_FORMS_MESSAGE = (
    "notify needs exactly one of two forms: saga_id= and token= (the token from "
    "current_step().token), or aggregation_id= and event_name= (delivery by correlation to "
    "a wait_for_event(name=...))"
)


def _as_uuid(value: Any, name: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise SagaInputError(f"{name} must be a UUID, got {value!r}") from None
