"""Stored rows and the pure state machine: conversions both ways, the context keys, the step
tokens, and the one definition of which rows a worker may claim.

Shared by the executor, event delivery, operator actions and every store query.
"""

from __future__ import annotations

import functools
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from saga_core import history as h
from saga_core import machine as m
from saga_core.frozen import make
from saga_core.store.base import DeadlineChange, LeaseChange, RowUpdate, SagaRow

if TYPE_CHECKING:
    from saga_core.definition import SagaDefinition

__all__ = [
    "CLAIMABLE_SQL",
    "CLAIMABLE_STATUSES",
    "EVENTS_KEY",
    "LATEST_EVENT_KEY",
    "RETRY_AT_KEY",
    "STEP_INPUTS_KEY",
    "STEP_OUTPUTS_KEY",
    "SUSPECT_SQL",
    "WAITS_KEY",
    "Wait",
    "machine_state",
    "new_saga_values",
    "shape_of",
    "update_for",
]

# --- which rows a worker claims ----------------------------------------------------------

CLAIMABLE_STATUSES: tuple[str, ...] = (
    m.SagaStatus.RUNNING.value,
    m.SagaStatus.SUSPENDED.value,
    m.SagaStatus.COMPENSATING.value,
)
"""Statuses of rows a worker may claim once their ``deadline_at`` has passed (the due time,
or the expiry of the lease of the worker holding it). FAILED waits for an operator."""

_IN = ", ".join(f"'{s}'" for s in CLAIMABLE_STATUSES)
CLAIMABLE_SQL = f"status IN ({_IN}) AND deadline_at IS NOT NULL"
"""The rows of the due index: claimable once ``deadline_at <= now()``."""

SUSPECT_MIN_RECOVERIES = 1
SUSPECT_SQL = f"(lease_owner IS NOT NULL AND recovery_count >= {SUSPECT_MIN_RECOVERIES})"
"""A *suspect*: due because its lease expired (its worker was lost while it ran) after an
earlier recovery that recorded nothing, i.e. lost at least twice in a row. It may be the
poison that kills its workers, or a bystander that shared the dead workers with it: workers
run suspects on their own, so only the poison keeps being lost (and is quarantined)."""


def is_suspect(row: SagaRow) -> bool:
    return row.lease_owner is not None and row.recovery_count >= SUSPECT_MIN_RECOVERIES


# --- context keys --------------------------------------------------------------------------

INITIAL_DATA_KEY = "initial_data"
STEP_OUTPUTS_KEY = "step_outputs"
STEP_INPUTS_KEY = "step_inputs"
EVENTS_KEY = "events"
LATEST_EVENT_KEY = "latest_event"
OPTIONS_KEY = "options"
NOTED_FINGERPRINT_KEY = "noted_fingerprint"
WAITS_KEY = "waits"
"""Steps waiting for an event: step id -> ``{"since", "until", "name"}`` (times by the
database clock; ``until`` None: no timeout; ``name``: also deliverable by correlation).
Deliveries and operator actions remove a step's entry; a claim that finds one past its
``until`` records the wait's timeout as a failed attempt of the step."""
LEGACY_WAITING_KEY = "waiting"
"""The single wait marker of earlier versions (read, converted, never written)."""
RETRY_AT_KEY = "retry_at"
"""Parallel sagas: when each branch that failed may run again (step id -> ISO time by the
database clock), so that a saga woken for one branch does not run another one early.
Operator actions remove it."""


class Wait:
    """One step's wait for an event, as stored under ``WAITS_KEY``."""

    __slots__ = ("name", "since", "until")

    def __init__(self, since: str | None, until: str | None, name: str | None) -> None:
        self.since = since
        self.until = until
        self.name = name

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "name": self.name}

    def until_dt(self) -> datetime | None:
        return _parse(self.until)

    def since_dt(self) -> datetime | None:
        return _parse(self.since)

    def timed_out(self, now: datetime) -> bool:
        until = self.until_dt()
        return until is not None and until <= now


def _parse(at: Any) -> datetime | None:
    if not isinstance(at, str):
        return None
    try:
        return datetime.fromisoformat(at)
    except ValueError:
        return None


def waits_of(context: dict[str, Any]) -> dict[str, Wait]:
    """The waits recorded in ``context`` (earlier versions' single marker converted)."""
    out: dict[str, Wait] = {}
    raw = context.get(WAITS_KEY)
    if isinstance(raw, dict):
        for step_id, w in raw.items():
            if isinstance(w, dict):
                out[str(step_id)] = Wait(w.get("since"), w.get("until"), w.get("name"))
    legacy = context.get(LEGACY_WAITING_KEY)
    if isinstance(legacy, dict):
        since = legacy.get("since")
        timeout = legacy.get("timeout_s")
        until = None
        start = _parse(since)
        if start is not None and isinstance(timeout, int | float):
            from datetime import timedelta

            until = (start + timedelta(seconds=float(timeout))).isoformat()
        names = legacy.get("branch_event_names") or {}
        for step_id in legacy.get("branches") or [legacy.get("step_id")]:
            if isinstance(step_id, str) and step_id not in out:
                name = names.get(step_id) if names else legacy.get("event_name")
                out[step_id] = Wait(since if isinstance(since, str) else None, until, name)
    return out


def with_waits(context: dict[str, Any], waits: dict[str, Wait]) -> dict[str, Any]:
    """``context`` recording exactly ``waits`` (the legacy marker dropped)."""
    ctx = {k: v for k, v in context.items() if k not in (WAITS_KEY, LEGACY_WAITING_KEY)}
    if waits:
        ctx[WAITS_KEY] = {sid: w.to_json() for sid, w in sorted(waits.items())}
    return ctx


def without_holds(context: dict[str, Any]) -> dict[str, Any]:
    """``context`` with every event wait and retry wait ended (operator actions)."""
    drop = (WAITS_KEY, LEGACY_WAITING_KEY, RETRY_AT_KEY)
    if not any(k in context for k in drop):
        return context
    return {k: v for k, v in context.items() if k not in drop}


# --- step tokens ----------------------------------------------------------------------------


def new_token() -> str:
    return str(uuid.uuid4())


def with_tokens(row: SagaRow) -> list[dict[str, Any]]:
    """The row's per-step state, every step carrying its token. Sagas stored by earlier
    versions had one token, the ``step_execution_token`` column, rotated by every claim:
    every step that ran in the last claim handed it out. The steps that version's wait
    marker lists as waiting (else the step at the cursor) keep it; the others get one
    derived from it and their step id, so that every reader of the row (a delivery, the
    worker running the saga) gives a step the same token until a write stores them."""
    steps = row.steps_state
    if all("token" in s for s in steps):
        return [dict(s) for s in steps]
    legacy = str(row.step_execution_token)
    marker = row.context.get(LEGACY_WAITING_KEY)
    waiting: set[str] = set()
    if isinstance(marker, dict):
        listed = marker.get("branches") or [marker.get("step_id")]
        waiting = (
            {str(x) for x in listed if isinstance(x, str)} if isinstance(listed, list) else set()
        )
    out = []
    for i, s in enumerate(steps):
        s = dict(s)
        if "token" not in s:
            sid = str(s.get("step_id"))
            keeps = sid in waiting if waiting else i == row.current_step_index
            derived = uuid.uuid5(row.step_execution_token, sid)
            s["token"] = legacy if keeps else str(derived)
        out.append(s)
    return out


@functools.lru_cache(maxsize=4096)
def parse_token(text: str) -> uuid.UUID:
    """A step token's text as a UUID (ValueError if it is none). Cached: a run parses the
    same few tokens for every step, checkpoint and event."""
    return uuid.UUID(text)


def token_of(steps: list[dict[str, Any]], index: int) -> uuid.UUID | None:
    if not 0 <= index < len(steps):
        return None
    raw = steps[index].get("token")
    try:
        return parse_token(str(raw)) if raw is not None else None
    except ValueError:
        return None


def step_with_token(steps: list[dict[str, Any]], token: uuid.UUID) -> int | None:
    text = str(token)
    for i, s in enumerate(steps):
        if s.get("token") == text:
            return i
    return None


def rotate_token(steps: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """``steps`` with a new token for step ``index`` (its old one is spent)."""
    out = list(steps)
    out[index] = {**out[index], "token": new_token()}
    return out


# --- new sagas --------------------------------------------------------------------------------


def initial_steps_state(definition: SagaDefinition) -> list[dict[str, Any]]:
    """Per-step state at start; carries what admin actions (and ``sagactl show``) need
    without the definition: whether a step compensates, its token and, in a parallel saga,
    the steps it waits for (``after``)."""
    out = []
    for s in definition.steps:
        entry = {
            **m.StepState().to_json(s.step_id),
            "compensates": s.has_compensation,
            "token": new_token(),
        }
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
    steps = initial_steps_state(definition)
    return {
        "id": uuid.uuid4(),
        "saga_name": saga_name,
        "aggregation_id": aggregation_id,
        "status": m.SagaStatus.RUNNING.value,
        "phase": m.Phase.EXECUTE.value,
        "current_step_index": 0,
        "steps_state": steps,
        "step_execution_token": uuid.UUID(steps[0]["token"]),
        "context": {
            INITIAL_DATA_KEY: initial_data,
            STEP_OUTPUTS_KEY: {},
            STEP_INPUTS_KEY: {},
            EVENTS_KEY: [],
            LATEST_EVENT_KEY: None,
            OPTIONS_KEY: {
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


# --- rows <-> machine ----------------------------------------------------------------------


_SAGA_STATUSES: dict[str, m.SagaStatus] = {s.value: s for s in m.SagaStatus}
_PHASES: dict[str, m.Phase] = {p.value: p for p in m.Phase}


def machine_state(row: SagaRow) -> m.MachineState:
    # The enums by dictionary (their own lookup is slower); an unknown text raises as before.
    return make(
        m.MachineState,
        status=_SAGA_STATUSES.get(row.status) or m.SagaStatus(row.status),
        phase=_PHASES.get(row.phase) or m.Phase(row.phase),
        cursor=row.current_step_index,
        steps=tuple(m.StepState.from_json(s) for s in row.steps_state),
        retry_counter=row.retry_counter,
    )


def shape_of(row: SagaRow) -> m.Shape:
    options = row.context.get(OPTIONS_KEY) or {}
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


def steps_json(
    row_steps: list[dict[str, Any]],
    state: m.MachineState,
    written: m.MachineState | None = None,
) -> list[dict[str, Any]]:
    """``row_steps`` updated to ``state``. ``written``: the state ``row_steps`` were made from
    by this very function; its steps that ``state`` still holds (the same objects) keep
    their entries as they are."""
    kept = written.steps if written is not None else ()
    # The counters StepState leaves out when zero must not survive from the old entry.
    return [
        old
        if i < len(kept) and kept[i] is st
        else {
            **(
                {k: v for k, v in old.items() if k not in _OPTIONAL_STEP_KEYS}
                if "failures" in old or "seq" in old
                else old
            ),
            **st.to_json(str(old["step_id"])),
        }
        for i, (old, st) in enumerate(zip(row_steps, state.steps, strict=True))
    ]


_OPTIONAL_STEP_KEYS = frozenset({"failures", "seq"})


def update_for(
    t: m.Transition,
    row_steps: list[dict[str, Any]],
    *,
    at: str | None = None,
    history: list[dict[str, Any]],
    context: dict[str, Any] | None = None,
    last_error: str | None = None,
    set_last_error: bool = False,
    written: m.MachineState | None = None,
) -> RowUpdate:
    """The row update that persists transition ``t`` (``at``: the time of the notes the
    transition itself produces; ``written``: see :func:`steps_json`)."""
    notes: list[dict[str, Any]] = []
    if t.notes:
        stamp = at or h.now_iso()
        notes = [{"at": stamp, **n} for n in t.notes]
    steps = steps_json(row_steps, t.state, written)
    upd = RowUpdate(
        status=t.state.status._value_,
        phase=t.state.phase._value_,
        current_step_index=t.state.cursor,
        steps_state=steps,
        retry_counter=t.state.retry_counter,
        context=context,
        history=[*history, *notes],
        last_error=last_error,
        set_last_error=set_last_error,
        step_token=token_of(steps, t.state.cursor),
    )
    kind = t.schedule.kind
    if kind in (m.ScheduleKind.HOLD, m.ScheduleKind.RETRY_IN_PLACE):
        upd.deadline = DeadlineChange.HOLD
    elif kind is m.ScheduleKind.DUE:
        upd.deadline = DeadlineChange.AFTER
        upd.delay = t.schedule.delay
        upd.lease = LeaseChange.RELEASE
    else:
        upd.deadline = DeadlineChange.CLEAR
        upd.lease = LeaseChange.RELEASE
        upd.finished = t.state.status.is_terminal
    return upd
