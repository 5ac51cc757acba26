"""Operator actions: what ``sagactl`` repairs, callable from application code (the reads are
in ``queries``, which ``SagaAdmin`` extends).

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

import getpass
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from saga_core import history as h
from saga_core import machine as m
from saga_core import waits
from saga_core.engine import SagaEngine
from saga_core.errors import SagaConflictError, SagaInputError, SagaNotFoundError, SagaStateError
from saga_core.payload import check_note_text, check_size, to_json_data
from saga_core.queries import SagaQueries, status_values
from saga_core.rows import (
    STEP_OUTPUTS_KEY,
    machine_state,
    rotate_token,
    shape_of,
    update_for,
    with_tokens,
    without_holds,
)
from saga_core.snapshot import SagaAdminSnapshot
from saga_core.state import SagaStateMixin
from saga_core.store import RowUpdate, SagaRow

__all__ = ["SagaAdmin"]

M = TypeVar("M", bound=SagaStateMixin)


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
    found = status_values(status)
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


class SagaAdmin(SagaQueries[M]):
    """Inspect and repair sagas.

    Args:
        engine: ``orchestrator.engine``; its registered definitions are used to validate
            ``skip_step(mock_output=...)``.
        actor: recorded with each action (default: the OS user).

    Raises:
        SagaInputError: an ``actor`` that cannot be stored (NUL, lone surrogates, too long).
    """

    def __init__(self, *, engine: SagaEngine[M], actor: str | None = None) -> None:
        check_note_text(actor, "actor")
        super().__init__(engine=engine)
        self.actor = actor or _default_actor()

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
            # An operator ends every event wait and the retry waits of parallel branches
            # (what runs next runs now) and spends every step's token: a token handed out
            # by an execution the operator overruled (waiting for an event, or failed and
            # waiting for its retry time) is refused from now on, and the step hands out a
            # new one when it runs again. A plain new claim keeps the tokens.
            steps = with_tokens(row)
            for index in range(len(steps)):
                steps = rotate_token(steps, index)
            ctx = without_holds(base)
            at = now.isoformat()
            # Events kept in the inbox for one of those tokens are dropped with them.
            inbox: list[dict[str, Any]] = []
            spent: list[dict[str, Any]] = []
            for e in row.inbox or []:
                (spent if e.get("token") is not None else inbox).append(e)
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
            dropped = [
                h.unused(
                    at=at,
                    step_id=e.get("step_id"),
                    event_id=str(e.get("event_id")),
                    reason=f"an operator action ({action}) spent the token it was sent to",
                )
                for e in spent
            ]
            # Events by name waiting in the inbox for steps this action finished are dropped.
            settled = waits.settle_inbox(
                t.state,
                shape_of(row),
                ctx,
                steps,
                inbox,
                at=at,
                now=now,
                consume_events=False,
            )
            upd = update_for(
                t,
                steps,
                at=at,
                history=[entry, *dropped, *settled.history],
                context=None if ctx is row.context else ctx,
            )
            upd.new_lease_token = uuid.uuid4()
            if dropped or settled.history:
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
