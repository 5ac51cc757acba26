"""Operator actions and queries: what ``sagactl`` does, callable from application code.

Every action takes the saga's row lock for the length of one short transaction, applies a
pure state-machine transition, records who did it and why in the history, and rotates the
fencing token (so a worker still running the old step cannot overwrite the result).

Every action is also a compare-and-set when asked: given ``expected_status`` and/or
``expected_updated_at`` (the saga as the caller saw it, e.g. as listed before a confirmation
prompt), it checks them on the locked row and, when the saga has changed meanwhile, changes
nothing and raises :class:`~saga_core.errors.SagaConflictError` carrying the saga's status and
``updated_at`` as they are now.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from saga_core import history as h
from saga_core import machine as m
from saga_core import waits
from saga_core.context import check_event_name
from saga_core.engine import SagaEngine
from saga_core.errors import SagaConflictError, SagaInputError, SagaNotFoundError, SagaStateError
from saga_core.payload import check_note_text, check_size, to_json_data
from saga_core.rows import (
    STEP_OUTPUTS_KEY,
    machine_state,
    rotate_token,
    shape_of,
    update_for,
    waits_of,
    with_tokens,
    without_holds,
)
from saga_core.snapshot import SagaAdminSnapshot, SagaSnapshot
from saga_core.state import SagaStateMixin
from saga_core.store import RowUpdate, SagaFilter, SagaRow, WorkerRow
from saga_core.versioning import ORPHAN_STATUSES, OrphanGroup, find_orphans, live_workers

__all__ = ["SagaAdmin"]

M = TypeVar("M", bound=SagaStateMixin)

DEFAULT_PURGE_BATCH = 500
"""Rows deleted per statement (and transaction) by ``SagaAdmin.purge``."""


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _expected_status(status: m.SagaStatus | str | None) -> str | None:
    if status is None:
        return None
    if not isinstance(status, str):
        raise SagaInputError(f"expected_status must be one status, got {status!r}")
    found = _statuses(status)
    assert found is not None
    return found[0]


def _expected_time(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise SagaInputError(f"expected_updated_at must be a datetime, got {value!r}")
    return _utc(value)


def _check_expected(
    row: SagaRow, status: str | None, updated_at: datetime | None, sid: uuid.UUID
) -> None:
    """Raise SagaConflictError when ``row`` is no longer the saga the caller saw."""
    moved = status is not None and row.status != status
    moved = moved or (updated_at is not None and _utc(row.updated_at) != updated_at)
    if not moved:
        return
    saw = []
    if status is not None:
        saw.append(status)
    if updated_at is not None:
        saw.append(f"updated {updated_at.isoformat()}")
    raise SagaConflictError(
        f"saga {sid} changed since you looked: now {row.status}, updated "
        f"{_utc(row.updated_at).isoformat()} (you saw {', '.join(saw)}); nothing was "
        "changed, look again",
        status=row.status,
        updated_at=_utc(row.updated_at),
    )


def _statuses(status: m.SagaStatus | str | Sequence[m.SagaStatus | str] | None) -> list[str] | None:
    if status is None:
        return None
    items = [status] if isinstance(status, str) else list(status)
    out: list[str] = []
    for s in items:
        try:
            out.append(m.SagaStatus(str(s).upper()).value)
        except ValueError:
            names = ", ".join(x.value for x in m.SagaStatus)
            raise SagaInputError(f"unknown status {s!r}; use one of {names}") from None
    return out


class SagaAdmin(Generic[M]):
    """Inspect and repair sagas.

    Args:
        engine: ``orchestrator.engine``; its registered definitions are used to validate
            ``skip_step(mock_output=...)``.
        actor: recorded with each action (default: the OS user).

    Raises:
        SagaInputError: an ``actor`` that cannot be stored (NUL, lone surrogates, too long).
    """

    DEFAULT_PURGE_BATCH = DEFAULT_PURGE_BATCH
    """Rows deleted per statement (and transaction) by :meth:`purge` unless told."""

    def __init__(self, *, engine: SagaEngine[M], actor: str | None = None) -> None:
        check_note_text(actor, "actor")
        self.engine = engine
        self.store = engine.store
        self.actor = actor or _default_actor()

    # --- reads ---------------------------------------------------------------------------

    async def get_saga(self, saga_id: uuid.UUID | str) -> SagaAdminSnapshot:
        """The saga with its context, per-step state and history. Raises SagaNotFoundError."""
        sid = await self.resolve_id(saga_id)
        row = await self.store.saga_get(sid)
        if row is None:
            raise SagaNotFoundError(f"no saga with id {saga_id}", saga_id)
        return SagaAdminSnapshot.from_row(row)

    async def resolve_id(self, saga_id: uuid.UUID | str) -> uuid.UUID:
        """A full id, from a UUID or an unambiguous prefix of one (as ``sagactl`` accepts)."""
        if isinstance(saga_id, uuid.UUID):
            return saga_id
        text = str(saga_id).strip()
        try:
            return uuid.UUID(text)
        except ValueError:
            pass
        matches = await self.store.saga_find_by_prefix(text, limit=2)
        if not matches:
            raise SagaNotFoundError(f"no saga id starts with {text!r}", text)
        if len(matches) > 1:
            raise SagaNotFoundError(
                f"id prefix {text!r} is ambiguous (matches {matches[0]}, {matches[1]}, ...); type more of it",
                text,
            )
        return matches[0]

    def _filter(
        self,
        status: Any,
        saga_name: str | Sequence[str] | None,
        aggregation_id: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
    ) -> SagaFilter:
        names = (
            [saga_name] if isinstance(saga_name, str) else (list(saga_name) if saga_name else None)
        )
        return SagaFilter(
            statuses=_statuses(status),
            saga_names=names,
            aggregation_id=aggregation_id,
            created_after=created_after,
            created_before=created_before,
        )

    async def list_sagas(
        self,
        *,
        status: m.SagaStatus | str | Sequence[m.SagaStatus | str] | None = None,
        saga_name: str | Sequence[str] | None = None,
        aggregation_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
        oldest_first: bool = False,
        definition_version: int | None = None,
    ) -> list[SagaSnapshot]:
        """Sagas matching every given filter, newest first; ``limit`` is honoured as given."""
        if limit < 0 or offset < 0:
            raise SagaInputError("limit and offset must not be negative")
        flt = self._filter(status, saga_name, aggregation_id, created_after, created_before)
        if definition_version is not None:
            flt = dataclasses.replace(flt, definition_version=definition_version)
        rows = await self.store.saga_list(
            flt, limit=limit, offset=offset, oldest_first=oldest_first
        )
        return [SagaSnapshot.from_row(r) for r in rows]

    async def count_sagas(
        self,
        *,
        status: m.SagaStatus | str | Sequence[m.SagaStatus | str] | None = None,
        saga_name: str | Sequence[str] | None = None,
        aggregation_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> int:
        flt = self._filter(status, saga_name, aggregation_id, created_after, created_before)
        return await self.store.saga_count(flt)

    async def stats(self) -> list[tuple[str, str, int]]:
        """(saga_name, status, count) for every pair present."""
        return await self.store.saga_stats()

    async def due_summary(self) -> tuple[int, datetime | None]:
        """(sagas due now, the oldest due time among them)."""
        return await self.store.saga_due_summary()

    async def finished_since(self, since: datetime) -> list[tuple[str, str, int]]:
        return await self.store.saga_finished_since(since)

    async def workers(self) -> list[WorkerRow]:
        """The ``sagad`` worker registry (live and stale entries)."""
        return await self.store.worker_list()

    async def version_summary(
        self, status: m.SagaStatus | str | Sequence[m.SagaStatus | str] = ORPHAN_STATUSES
    ) -> list[tuple[str, int, int, datetime]]:
        """(saga_name, definition_version, count, oldest created_at) of the sagas in
        ``status`` (default: RUNNING, SUSPENDED, COMPENSATING)."""
        return await self.store.saga_version_summary(_statuses(status) or [])

    async def orphans(self, *, stale_after: float = 30.0) -> list[OrphanGroup]:
        """Active sagas (RUNNING, SUSPENDED, COMPENSATING) whose (name, definition version)
        no live ``sagad`` worker runs, grouped by (name, version): they wait until a worker
        registering that version starts. A worker is live when not stopped and its heartbeat
        is at most ``stale_after`` seconds old (by the database clock)."""
        if isinstance(stale_after, bool) or not isinstance(stale_after, int | float):
            raise SagaInputError(f"stale_after must be a number of seconds, got {stale_after!r}")
        summary = await self.version_summary()
        if not summary:
            return []
        now = await self.store.db_now()
        live = live_workers(await self.store.worker_list(), now, float(stale_after))
        return find_orphans(summary, live, table=self.store.table_name)

    async def orphan_sagas(self, group: OrphanGroup, *, limit: int = 100) -> list[SagaSnapshot]:
        """The sagas of one group of :meth:`orphans` (as they are now), oldest first."""
        return await self.list_sagas(
            status=list(ORPHAN_STATUSES),
            saga_name=group.saga_name,
            definition_version=group.definition_version,
            limit=limit,
            oldest_first=True,
        )

    async def db_now(self) -> datetime:
        return await self.store.db_now()

    async def preview_delivery(
        self,
        *,
        saga_id: uuid.UUID | str | None = None,
        token: uuid.UUID | str | None = None,
        aggregation_id: str | None = None,
        event_name: str | None = None,
        event: dict[str, Any] | None = None,
    ) -> waits.Delivery:
        """What ``SagaOrchestrator.notify`` would do now with the same arguments, without
        writing anything (no event stored, no refusal recorded): ``accepted`` (and whether
        the event would wait in the inbox, ``queued``), or the ``reason`` it would be
        refused for, the saga concerned and its status.

        By ``saga_id`` and ``token``, or by correlation (``aggregation_id`` and
        ``event_name``: the active saga of that aggregation id, else its newest). A plain
        read: a delivery made later decides again on the locked row.

        Raises:
            SagaInputError: not exactly one of the two forms; a malformed token or event name.
            SagaNotFoundError: no such saga; no saga ever had that aggregation id.
        """
        token_form = (saga_id is not None, token is not None)
        name_form = (aggregation_id is not None, event_name is not None)
        if sorted([token_form, name_form]) != [(False, False), (True, True)]:
            raise SagaInputError(
                "preview_delivery needs saga_id and token, or aggregation_id and event_name"
            )
        row: SagaRow | None
        if saga_id is not None:
            if not isinstance(token, uuid.UUID):
                try:
                    token = uuid.UUID(str(token))
                except ValueError:
                    raise SagaInputError(f"token must be a UUID, got {token!r}") from None
            row = await self.store.saga_get(await self.resolve_id(saga_id), with_history=False)
            if row is None:
                raise SagaNotFoundError(f"no saga with id {saga_id}", saga_id)
        else:
            check_event_name(event_name, "event_name")
            active = SagaFilter(
                aggregation_id=aggregation_id, statuses=sorted(s.value for s in m.ACTIVE_STATUSES)
            )
            found = await self.store.saga_list(active, limit=1) or await self.store.saga_list(
                SagaFilter(aggregation_id=aggregation_id), limit=1
            )
            if not found:
                raise SagaNotFoundError(
                    f"no saga with aggregation_id {aggregation_id!r}", aggregation_id
                )
            row = found[0]
        decide = waits.Delivering(
            event=event,
            token=token if isinstance(token, uuid.UUID) else None,
            aggregation_id=aggregation_id,
            event_name=event_name,
            max_inbox_bytes=4 * self.engine.max_payload_bytes,
        )
        return decide.preview(row, await self.store.db_now())

    # --- retention -------------------------------------------------------------------------

    async def purge(
        self,
        older_than: timedelta | float,
        *,
        statuses: m.SagaStatus | str | Sequence[m.SagaStatus | str] | None = None,
        dry_run: bool = False,
        batch_size: int = DEFAULT_PURGE_BATCH,
        pause: float = 0.0,
    ) -> int:
        """Delete finished sagas (COMPLETED, COMPENSATED, ABORTED; or only ``statuses``,
        which must be among them) that finished more than ``older_than`` (a ``timedelta``
        or seconds) ago by the database clock; how many were deleted (with ``dry_run``:
        how many would be, nothing deleted).

        Deletes in batches of ``batch_size`` rows, each its own short transaction (never a
        long one), sleeping ``pause`` seconds between batches. Active and FAILED sagas are
        never deleted. A deleted saga's ``idempotency_key`` can start a new saga again.

        Raises:
            SagaInputError: a status that is not final, a negative age, a batch below 1.
        """
        if isinstance(older_than, bool) or not isinstance(older_than, timedelta | int | float):
            raise SagaInputError(f"older_than must be a timedelta or seconds, got {older_than!r}")
        age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
        if age < timedelta(0):
            raise SagaInputError(f"older_than must not be negative, got {age}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SagaInputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        chosen = _statuses(statuses) or sorted(s.value for s in m.TERMINAL_STATUSES)
        not_final = [s for s in chosen if not m.SagaStatus(s).is_terminal]
        if not_final:
            final = ", ".join(sorted(s.value for s in m.TERMINAL_STATUSES))
            raise SagaInputError(
                f"only finished sagas can be purged ({final}); not {', '.join(not_final)}"
            )
        before = await self.store.db_now() - age
        if dry_run:
            return await self.store.saga_count(SagaFilter(statuses=chosen, finished_before=before))
        total = 0
        while True:
            n = await self.store.saga_purge(chosen, before, batch_size)
            total += n
            if n < batch_size:
                return total
            await asyncio.sleep(pause)

    # --- actions ---------------------------------------------------------------------------

    async def _act(
        self,
        saga_id: uuid.UUID | str,
        action: str,
        compute: Callable[[SagaRow, datetime], tuple[m.Transition, dict[str, Any] | None]],
        reason: str | None,
        actor: str | None,
        extra: dict[str, Any] | None = None,
        *,
        expected_status: m.SagaStatus | str | None = None,
        expected_updated_at: datetime | None = None,
    ) -> SagaAdminSnapshot:
        check_note_text(reason, "reason")
        check_note_text(actor, "actor")
        want_status = _expected_status(expected_status)
        want_time = _expected_time(expected_updated_at)
        sid = await self.resolve_id(saga_id)
        who = actor or self.actor

        def apply(row: SagaRow, now: datetime) -> RowUpdate:
            # On the locked row, before the transition: a saga that changed since the caller
            # looked is refused as such, not judged by a state nobody confirmed.
            _check_expected(row, want_status, want_time, sid)
            t, context = compute(row, now)
            base = row.context if context is None else context
            # An operator ends every event wait (its token is spent) and the retry waits of
            # parallel branches: what runs next runs now.
            steps = with_tokens(row)
            for step_id in waits_of(base):
                index = next((i for i, s in enumerate(steps) if s["step_id"] == step_id), None)
                if index is not None:
                    steps = rotate_token(steps, index)
            ctx = without_holds(base)
            at = now.isoformat()
            idx = row.current_step_index
            entry = h.admin(
                at=at,
                step_id=str(steps[idx]["step_id"]) if idx < len(steps) else None,
                status=action,
                reason=reason,
                actor=who,
                from_status=row.status,
                to_status=t.state.status.value,
                **(extra or {}),
            )
            # Events waiting in the inbox for steps this action finished are dropped.
            settled = waits.settle_inbox(
                t.state,
                shape_of(row),
                ctx,
                steps,
                list(row.inbox or []),
                at=at,
                now=now,
                consume_events=False,
            )
            upd = update_for(
                t,
                steps,
                at=at,
                history=[entry, *settled.history],
                context=None if ctx is row.context else ctx,
            )
            upd.new_lease_token = uuid.uuid4()
            if settled.history:
                upd.inbox, upd.set_inbox = settled.inbox, True
            if action == "RETRY":
                upd.set_last_error = False
            return upd

        row, _ = await self.store.saga_update_locked(sid, apply)
        return SagaAdminSnapshot.from_row(row)

    async def retry_step(
        self,
        saga_id: uuid.UUID | str,
        *,
        reason: str | None = None,
        actor: str | None = None,
        expected_status: m.SagaStatus | str | None = None,
        expected_updated_at: datetime | None = None,
    ) -> SagaAdminSnapshot:
        """Run the failed step (or failed compensation) again now, retry counter reset.
        Allowed from SUSPENDED and FAILED; raises SagaStateError otherwise.

        With ``expected_status`` and/or ``expected_updated_at`` (the saga as you saw it),
        the action is a compare-and-set: if the locked row differs, nothing is changed and
        SagaConflictError (a SagaStateError) is raised with the saga's current ``status``
        and ``updated_at``. A worker's checkpoint changes ``updated_at``; a lease renewal
        does not.
        """
        return await self._act(
            saga_id,
            "RETRY",
            lambda row, now: (m.admin_retry(machine_state(row), shape_of(row)), None),
            reason,
            actor,
            expected_status=expected_status,
            expected_updated_at=expected_updated_at,
        )

    async def skip_step(
        self,
        saga_id: uuid.UUID | str,
        *,
        mock_output: Any = None,
        reason: str | None = None,
        actor: str | None = None,
        expected_status: m.SagaStatus | str | None = None,
        expected_updated_at: datetime | None = None,
    ) -> SagaAdminSnapshot:
        """Mark the current step (or compensation) done and continue.

        A forward skip stores ``mock_output`` as the step's output, validated against the
        step's output model (the saga's definition must be registered on this engine); a
        skipped step is not compensated by a later rollback. Allowed from SUSPENDED and
        FAILED.

        With ``expected_status`` and/or ``expected_updated_at`` (the saga as you saw it),
        the action is a compare-and-set: if the locked row differs, nothing is changed and
        SagaConflictError (a SagaStateError) is raised with the saga's current ``status``
        and ``updated_at``. A worker's checkpoint changes ``updated_at``; a lease renewal
        does not.

        Raises:
            SagaInputError: ``mock_output`` does not fit the output model (nothing changed).
            SagaStateError: the status does not allow a skip.
            SagaConflictError: the saga is not as expected, or moved on meanwhile.
        """
        want_status = _expected_status(expected_status)
        want_time = _expected_time(expected_updated_at)
        sid = await self.resolve_id(saga_id)
        row = await self.store.saga_get(sid, with_history=False)
        if row is None:
            raise SagaNotFoundError(f"no saga with id {saga_id}", saga_id)
        _check_expected(row, want_status, want_time, sid)
        state = machine_state(row)
        if state.status not in m.RETRYABLE:
            raise SagaStateError(
                f"cannot skip the current step of a saga in status {row.status}; allowed from: SUSPENDED, FAILED",
                status=row.status,
            )
        out_json: dict[str, Any] | None = None
        step_id = str(row.steps_state[state.cursor]["step_id"])
        if state.phase is m.Phase.EXECUTE:
            definition = self.engine.definition_for(row.saga_name, row.definition_version)
            if definition is None:
                raise SagaInputError(
                    f"skipping a step of {row.saga_name!r} needs its definition (version "
                    f"{row.definition_version}) to validate the output; register that version "
                    "of the saga on this engine (sagactl: pass --app module:orchestrator)"
                )
            try:
                spec = definition.step(step_id)
            except KeyError:
                raise SagaInputError(
                    f"step {step_id!r} is not in the registered definition of {row.saga_name!r}"
                ) from None
            data = to_json_data({} if mock_output is None else mock_output, "mock_output")
            if not isinstance(data, dict):
                raise SagaInputError(
                    f"mock_output must be a JSON object for {spec.output_model.__name__}"
                )
            try:
                out_json = spec.output_model.model_validate(data).model_dump(mode="json")
            except ValidationError as exc:
                raise SagaInputError(
                    f"mock_output does not fit {spec.output_model.__name__} of step {step_id!r}: {exc}"
                ) from None
            check_size(out_json, "mock_output", self.engine.max_payload_bytes)
        elif mock_output is not None:
            raise SagaInputError(
                "mock_output only applies to a forward step, not to a compensation"
            )
        expected = (state.phase, state.cursor, row.lease_token)

        def compute(current: SagaRow, _now: datetime) -> tuple[m.Transition, dict[str, Any] | None]:
            cs = machine_state(current)
            if (cs.phase, cs.cursor, current.lease_token) != expected:
                raise SagaConflictError(
                    f"saga {sid} moved on while the skip was being prepared; look again"
                )
            t = m.admin_skip(cs, shape_of(current))
            ctx = None
            if out_json is not None:
                outputs = dict(current.context.get(STEP_OUTPUTS_KEY) or {})
                outputs[step_id] = out_json
                ctx = {**current.context, STEP_OUTPUTS_KEY: outputs}
            return t, ctx

        extra = {"mock_output": out_json} if out_json is not None else None
        return await self._act(
            sid,
            "SKIP",
            compute,
            reason,
            actor,
            extra,
            expected_status=want_status,
            expected_updated_at=want_time,
        )

    async def compensate_step(
        self,
        saga_id: uuid.UUID | str,
        *,
        reason: str | None = None,
        actor: str | None = None,
        expected_status: m.SagaStatus | str | None = None,
        expected_updated_at: datetime | None = None,
    ) -> SagaAdminSnapshot:
        """Start (or resume) the rollback from the newest completed step; with none
        completed the saga ends COMPENSATED. Allowed from SUSPENDED, FAILED, and RUNNING
        when no worker holds a live lease.

        With ``expected_status`` and/or ``expected_updated_at`` (the saga as you saw it),
        the action is a compare-and-set: if the locked row differs, nothing is changed and
        SagaConflictError (a SagaStateError) is raised with the saga's current ``status``
        and ``updated_at``. A worker's checkpoint changes ``updated_at``; a lease renewal
        does not.
        """

        def compute(row: SagaRow, now: datetime) -> tuple[m.Transition, None]:
            live = (
                row.lease_owner is not None
                and row.deadline_at is not None
                and row.deadline_at > now
            )
            return m.admin_compensate(machine_state(row), shape_of(row), lease_live=live), None

        return await self._act(
            saga_id,
            "COMPENSATE",
            compute,
            reason,
            actor,
            expected_status=expected_status,
            expected_updated_at=expected_updated_at,
        )

    async def abort(
        self,
        saga_id: uuid.UUID | str,
        *,
        reason: str | None = None,
        actor: str | None = None,
        expected_status: m.SagaStatus | str | None = None,
        expected_updated_at: datetime | None = None,
    ) -> SagaAdminSnapshot:
        """Stop now without rollback (ABORTED). An in-flight step's late result is rejected.
        Allowed from any non-terminal status.

        With ``expected_status`` and/or ``expected_updated_at`` (the saga as you saw it),
        the action is a compare-and-set: if the locked row differs, nothing is changed and
        SagaConflictError (a SagaStateError) is raised with the saga's current ``status``
        and ``updated_at``. A worker's checkpoint changes ``updated_at``; a lease renewal
        does not.
        """
        return await self._act(
            saga_id,
            "ABORT",
            lambda row, now: (m.admin_abort(machine_state(row)), None),
            reason,
            actor,
            expected_status=expected_status,
            expected_updated_at=expected_updated_at,
        )
