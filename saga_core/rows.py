"""Conversions between stored rows and the pure state machine, shared by the executor and
the admin and notify paths."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from saga_core import machine as m
from saga_core.definition import SagaDefinition
from saga_core.store.base import DeadlineChange, LeaseChange, RowUpdate, SagaRow


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def initial_steps_state(definition: SagaDefinition) -> list[dict[str, Any]]:
    """Per-step state at start; carries what admin actions (and ``sagactl show``) need
    without the definition: whether a step compensates and, in a parallel saga, the steps it
    waits for (``after``)."""
    out = []
    for s in definition.steps:
        entry = {**m.StepState().to_json(s.step_id), "compensates": s.has_compensation}
        if definition.parallel:
            entry["after"] = list(s.dependencies)
        out.append(entry)
    return out


def new_saga_values(
    definition: SagaDefinition,
    saga_name: str,
    aggregation_id: str,
    initial_data: dict[str, Any],
    trace_id: str | None,
) -> dict[str, Any]:
    """The row of a new saga, due now (the store sets the due time by the database clock)."""
    return {
        "id": uuid.uuid4(),
        "saga_name": saga_name,
        "aggregation_id": aggregation_id,
        "status": m.SagaStatus.RUNNING.value,
        "phase": m.Phase.EXECUTE.value,
        "current_step_index": 0,
        "steps_state": initial_steps_state(definition),
        "step_execution_token": uuid.uuid4(),
        "context": {
            "initial_data": initial_data,
            "step_outputs": {},
            "step_inputs": {},
            "events": [],
            "latest_event": None,
            "options": {
                "compensate_on_failure": definition.compensate_on_failure,
                **({"parallel": True} if definition.parallel else {}),
            },
        },
        "step_history": [],
        "lease_owner": None,
        "retry_counter": 0,
        "takeover_count": 0,
        "recovery_count": 0,
        "last_error": None,
        "definition_fingerprint": definition.fingerprint,
        "trace_id": trace_id,
    }


def machine_state(row: SagaRow) -> m.MachineState:
    return m.MachineState(
        status=m.SagaStatus(row.status),
        phase=m.Phase(row.phase),
        cursor=row.current_step_index,
        steps=tuple(m.StepState.from_json(s) for s in row.steps_state),
        retry_counter=row.retry_counter,
    )


def shape_of(row: SagaRow) -> m.Shape:
    options = row.context.get("options") or {}
    step_ids = tuple(str(s["step_id"]) for s in row.steps_state)
    deps: tuple[tuple[int, ...], ...] | None = None
    if options.get("parallel"):
        index = {sid: i for i, sid in enumerate(step_ids)}
        deps = tuple(
            tuple(index[str(d)] for d in (s.get("after") or []) if str(d) in index)
            for s in row.steps_state
        )
    return m.Shape(
        step_ids=step_ids,
        has_compensation=tuple(bool(s.get("compensates", True)) for s in row.steps_state),
        compensate_on_failure=bool(options.get("compensate_on_failure", True)),
        deps=deps,
    )


def steps_json(row_steps: list[dict[str, Any]], state: m.MachineState) -> list[dict[str, Any]]:
    # The counters StepState leaves out when zero must not survive from the old entry.
    return [
        {
            **(
                {k: v for k, v in old.items() if k not in _OPTIONAL_STEP_KEYS}
                if "failures" in old or "seq" in old
                else old
            ),
            **st.to_json(str(old["step_id"])),
        }
        for old, st in zip(row_steps, state.steps, strict=True)
    ]


_OPTIONAL_STEP_KEYS = frozenset({"failures", "seq"})


def update_for(
    t: m.Transition,
    row_steps: list[dict[str, Any]],
    *,
    history: list[dict[str, Any]],
    context: dict[str, Any] | None = None,
    last_error: str | None = None,
    set_last_error: bool = False,
    renew_lease: bool = False,
) -> RowUpdate:
    """The row update that persists transition ``t``."""
    at = now_iso()
    notes = [{"at": at, **n} for n in t.notes]
    upd = RowUpdate(
        status=t.state.status.value,
        phase=t.state.phase.value,
        current_step_index=t.state.cursor,
        steps_state=steps_json(row_steps, t.state),
        retry_counter=t.state.retry_counter,
        context=context,
        history=[*history, *notes],
        last_error=last_error,
        set_last_error=set_last_error,
    )
    kind = t.schedule.kind
    if kind in (m.ScheduleKind.HOLD, m.ScheduleKind.RETRY_IN_PLACE):
        upd.deadline = DeadlineChange.LEASE if renew_lease else DeadlineChange.KEEP
    elif kind is m.ScheduleKind.DUE:
        upd.deadline = DeadlineChange.AFTER
        upd.delay = t.schedule.delay
        upd.lease = LeaseChange.RELEASE
    else:
        upd.deadline = DeadlineChange.CLEAR
        upd.lease = LeaseChange.RELEASE
        upd.finished = t.state.status.is_terminal
    return upd
