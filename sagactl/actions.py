"""The repair actions on one saga: retry, skip, compensate, abort, notify."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text

from saga_core import SagaAdminSnapshot, SagaSnapshot, SagaStateError, SagaStatus
from sagactl.confirm import confirm
from sagactl.errors import CliError
from sagactl.exitcodes import ExitCode
from sagactl.fmt import clean, short_id
from sagactl.render_json import saga_json
from sagactl.render_text import step_cell
from sagactl.runtime import Runtime, Session

__all__ = [
    "ACTIONS",
    "ActionSpec",
    "act_one",
    "allowed_text",
    "apply_action",
    "check_reason",
    "notify_by_correlation",
    "notify_one",
    "read_json_arg",
]

S = SagaStatus
ACTIVE = frozenset(s for s in SagaStatus if not s.is_terminal)


@dataclass(frozen=True)
class ActionSpec:
    verb: str
    done: str
    allowed: frozenset[SagaStatus]
    hint: str


ACTIONS: dict[str, ActionSpec] = {
    "retry": ActionSpec(
        "retry",
        "retried",
        frozenset({S.SUSPENDED, S.FAILED}),
        "run the failed step (or compensation) again now, retry counter reset",
    ),
    "skip": ActionSpec(
        "skip",
        "skipped",
        frozenset({S.SUSPENDED, S.FAILED}),
        "mark the current step (or compensation) done and continue",
    ),
    "compensate": ActionSpec(
        "compensate",
        "compensating",
        frozenset({S.SUSPENDED, S.FAILED, S.RUNNING}),
        "roll back from the newest completed step",
    ),
    "abort": ActionSpec("abort", "aborted", ACTIVE, "stop now without rollback"),
    "notify": ActionSpec(
        "notify",
        "notified",
        frozenset({S.SUSPENDED, S.RUNNING}),
        "deliver an event; the step that waits for it runs again and sees it",
    ),
}

_STATUS_HINT = {
    S.RUNNING: "a worker is running it or will claim it shortly",
    S.COMPENSATING: "it is rolling back",
    S.COMPLETED: "it finished",
    S.COMPENSATED: "it was rolled back",
    S.ABORTED: "it was aborted",
}


def allowed_text(statuses: frozenset[SagaStatus]) -> str:
    return ", ".join(s.value for s in SagaStatus if s in statuses)


def precheck(action: str, snap: SagaSnapshot) -> None:
    """Refuse early, with the reason, what the status plainly does not allow (saga_core
    decides for real; this only spares the operator a confirmation that cannot succeed)."""
    spec = ACTIONS[action]
    if snap.status in spec.allowed:
        return
    why = _STATUS_HINT.get(snap.status)
    raise SagaStateError(
        f"cannot {spec.verb} saga {snap.id}: its status is {snap.status.value}"
        f"{' (' + why + ')' if why else ''}; {spec.verb} is allowed from {allowed_text(spec.allowed)}",
        status=snap.status.value,
    )


def check_reason(reason: str | None, dry_run: bool) -> str | None:
    if dry_run:
        return reason
    if reason is None or not reason.strip():
        raise CliError(
            "--reason is required: say why (it is recorded in the saga's history with your OS user)",
            ExitCode.USAGE,
        )
    return reason.strip()


def read_json_arg(text: str | None, file: Path | None, what: str) -> Any:
    """JSON from an option value or a file (``-`` reads stdin); ``None`` when neither."""
    if text is not None and file is not None:
        raise CliError(f"give {what} inline or as a file, not both", ExitCode.USAGE)
    if file is not None:
        try:
            import sys

            text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read {what} from {file}: {exc}", ExitCode.USAGE) from None
        except UnicodeDecodeError as exc:
            raise CliError(
                f"{what} from {file} is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                ExitCode.USAGE,
            ) from None
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}", ExitCode.USAGE) from None


async def apply_action(
    s: Session, action: str, seen: SagaSnapshot, reason: str | None, mock_output: Any = None
) -> SagaAdminSnapshot:
    """Act on the saga ``seen`` as the operator saw it (listed or shown before the
    confirmation): a compare-and-set on its status and ``updated_at``, so a saga that
    changed meanwhile is refused with SagaConflictError and left alone."""
    admin = s.admin
    cas: dict[str, Any] = {"expected_status": seen.status, "expected_updated_at": seen.updated_at}
    if action == "retry":
        return await admin.retry_step(seen.id, reason=reason, **cas)
    if action == "skip":
        return await admin.skip_step(seen.id, mock_output=mock_output, reason=reason, **cas)
    if action == "compensate":
        return await admin.compensate_step(seen.id, reason=reason, **cas)
    if action == "abort":
        return await admin.abort(seen.id, reason=reason, **cas)
    raise ValueError(action)


def describe(snap: SagaSnapshot) -> str:
    return f"saga {snap.id} ({clean(snap.saga_name)}, {snap.status.value}, step {step_cell(snap)})"


def _dry_run(rt: Runtime, action: str, snap: SagaSnapshot) -> int:
    spec = ACTIONS[action]
    allowed = snap.status in spec.allowed
    if rt.text:
        verdict = "would" if allowed else "would refuse to"
        rt.out.print(f"dry run: {verdict} {spec.verb} {describe(snap)}; nothing changed")
    else:
        rt.emit({"action": action, "dry_run": True, "allowed": allowed, "saga": saga_json(snap)})
    return 0


def _result(rt: Runtime, action: str, before: SagaSnapshot, after: SagaSnapshot) -> None:
    spec = ACTIONS[action]
    if rt.text:
        rt.out.print(
            Text.assemble(
                ("✔", "green"),
                f" {spec.done} {short_id(after.id)} ({clean(after.saga_name)}): "
                f"{before.status.value} → {after.status.value}, step {step_cell(after)}",
            )
        )
    else:
        rt.emit(
            {
                "action": action,
                "ok": True,
                "id": str(after.id),
                "from_status": before.status.value,
                "status": after.status.value,
                "saga": saga_json(after),
            }
        )


async def act_one(
    rt: Runtime,
    s: Session,
    action: str,
    saga_id: str,
    *,
    reason: str | None,
    yes: bool,
    dry_run: bool,
    mock_output: Any = None,
) -> int:
    snap = await s.admin.get_saga(saga_id)
    if dry_run:
        return _dry_run(rt, action, snap)
    precheck(action, snap)
    rt.info(f"{ACTIONS[action].verb}: {describe(snap)}")
    confirm(
        rt,
        f"{ACTIONS[action].verb.capitalize()} saga {short_id(snap.id)} ({clean(snap.saga_name)})?",
        yes=yes,
    )
    after = await apply_action(s, action, snap, reason, mock_output)
    _result(rt, action, snap, after)
    return 0


async def notify_one(
    rt: Runtime,
    s: Session,
    saga_id: str,
    *,
    token: str,
    event: Any,
    reason: str | None,
    yes: bool,
    dry_run: bool,
) -> int:
    try:
        tok = uuid.UUID(token.strip())
    except ValueError:
        raise CliError(
            f"--token {token!r} is not a UUID (see `sagactl show`)", ExitCode.USAGE
        ) from None
    snap = await s.admin.get_saga(saga_id)
    if dry_run:
        return _dry_run(rt, "notify", snap)
    precheck("notify", snap)
    rt.info(f"notify: {describe(snap)}")
    confirm(
        rt, f"Deliver the event to saga {short_id(snap.id)} ({clean(snap.saga_name)})?", yes=yes
    )
    result = await s.orchestrator.deliver(
        saga_id=snap.id, token=tok, event=event, actor=s.admin.actor, reason=reason
    )
    after = await s.admin.get_saga(snap.id)
    if not result.accepted:
        why = str(result.reason)
        if why.startswith("stale token"):
            why = (
                f"{why}: token {tok} names no wait of a pending step; the current step's "
                f"token is {after.step_execution_token} (a token is spent when its wait "
                "consumes an event or times out, or an operator acts)"
            )
        raise SagaStateError(
            f"event not delivered (the refusal is recorded in the saga's history): {why}",
            status=result.status.value,
        )
    _result(rt, "notify", snap, after)
    return 0


async def notify_by_correlation(
    rt: Runtime,
    s: Session,
    aggregation_id: str,
    event_name: str,
    *,
    event: Any,
    reason: str | None,
    yes: bool,
    dry_run: bool,
) -> int:
    """Deliver to the active saga of ``aggregation_id`` waiting for ``event_name`` (a named
    wait); saga_core decides, and records a refusal in the saga's history."""
    preview = await s.admin.preview_delivery(aggregation_id=aggregation_id, event_name=event_name)
    snap = await s.admin.get_saga(preview.saga_id)
    why = preview.reason
    if dry_run:
        if rt.text:
            verdict = "would deliver" if why is None else f"would be refused ({why})"
            rt.out.print(
                clean(f"dry run: event {event_name!r} {verdict}: {describe(snap)}; nothing changed")
            )
        else:
            rt.emit(
                {
                    "action": "notify",
                    "dry_run": True,
                    "allowed": why is None,
                    "reason": why,
                    "saga": saga_json(snap),
                }
            )
        return 0
    if preview.status.is_terminal:
        # Spares a confirmation that cannot succeed, as for every action; nothing recorded.
        raise SagaStateError(f"cannot notify: {why}", status=snap.status.value)
    rt.info(f"notify {event_name!r}: {describe(snap)}")
    confirm(
        rt,
        f"Deliver event {event_name!r} to saga {short_id(snap.id)} ({clean(snap.saga_name)})?",
        yes=yes,
    )
    result = await s.orchestrator.deliver(
        aggregation_id=aggregation_id,
        event_name=event_name,
        event=event,
        actor=s.admin.actor,
        reason=reason,
    )
    after = await s.admin.get_saga(result.saga_id)
    if not result.accepted:
        raise SagaStateError(
            f"event {event_name!r} not delivered to saga {result.saga_id} (the refusal is "
            f"recorded in its history): {result.reason}",
            status=result.status.value,
        )
    _result(rt, "notify", snap, after)
    return 0
