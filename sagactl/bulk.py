"""Bulk actions: the same filters as ``list``, a dry run, progress and a per-saga result."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from saga_core import SagaConflictError, SagaSnapshot, SagaStateError
from sagactl.actions import ACTIONS, allowed_text, apply_action
from sagactl.confirm import confirm
from sagactl.errors import classify
from sagactl.exitcodes import ExitCode
from sagactl.filters import SagaFilters
from sagactl.fmt import clean, lit, short_id, status_text
from sagactl.render_json import saga_json
from sagactl.render_text import saga_table
from sagactl.runtime import Runtime, Session

__all__ = ["DEFAULT_BULK_LIMIT", "run_bulk"]

DEFAULT_BULK_LIMIT = 1000
SAMPLE = 10


@dataclass(frozen=True)
class Outcome:
    saga: SagaSnapshot
    """The saga as listed before the confirmation."""
    ok: bool
    status: str | None = None
    code: ExitCode = ExitCode.OK
    message: str | None = None
    found: str | None = None
    """The status the saga had when the action was refused (it may have changed since it
    was listed); ``None``: as listed."""

    changed: bool = False
    """Refused because the saga changed after it was listed (compare-and-set)."""

    @property
    def from_status(self) -> str:
        """The status the action really met: with the compare-and-set on what was listed,
        the listed one when it succeeded."""
        return self.found or self.saga.status.value

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.saga.id),
            "saga_name": self.saga.saga_name,
            "ok": self.ok,
            "from_status": self.from_status,
            "listed_status": self.saga.status.value,
            "status": self.status,
            "error": None
            if self.ok
            else {"code": int(self.code), "kind": self.code.name.lower(), "message": self.message},
        }


@contextmanager
def _progress(rt: Runtime, label: str, total: int) -> Iterator[Any]:
    """A progress bar on a terminal; a no-op advance function elsewhere."""
    if not rt.interactive:
        yield lambda: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=rt.err,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


def _dry_run(
    rt: Runtime, action: str, flt: SagaFilters, total: int, targets: list[SagaSnapshot], now: Any
) -> int:
    spec = ACTIONS[action]
    refused = Counter(t.status.value for t in targets if t.status not in spec.allowed)
    if not rt.text:
        rt.emit(
            {
                "action": action,
                "dry_run": True,
                "filters": flt.describe(),
                "matched": total,
                "selected": len(targets),
                "would_refuse": sum(refused.values()),
                "sample": [saga_json(t) for t in targets[:SAMPLE]],
            }
        )
        return 0
    rt.out.print(
        Text.assemble(
            f"dry run: {spec.verb} would act on ",
            (str(len(targets)), "bold"),
            f" saga(s) matching {clean(flt.describe())} ({total} match); nothing changed",
        )
    )
    if refused:
        detail = ", ".join(f"{n} {s}" for s, n in sorted(refused.items()))
        rt.out.print(
            Text.assemble(
                (f"{sum(refused.values())} would be refused", "yellow"),
                f" ({detail}): {spec.verb} is allowed from {allowed_text(spec.allowed)}",
            )
        )
    if targets:
        title = f"sample (first {min(SAMPLE, len(targets))} of {len(targets)}, oldest first)"
        rt.out.print(saga_table(targets[:SAMPLE], now, width=rt.out.width, title=title))
    return 0


def _report(rt: Runtime, action: str, total: int, outcomes: list[Outcome]) -> None:
    spec = ACTIONS[action]
    failed = [o for o in outcomes if not o.ok]
    if rt.output.value == "jsonl":
        rt.emit_lines(o.to_json() for o in outcomes)
    elif not rt.text:
        rt.emit(
            {
                "action": action,
                "dry_run": False,
                "matched": total,
                "selected": len(outcomes),
                "succeeded": len(outcomes) - len(failed),
                "failed": len(failed),
                "results": [o.to_json() for o in outcomes],
            }
        )
    else:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("ID", "NAME", "BEFORE", "AFTER", "RESULT"):
            table.add_column(col, no_wrap=col != "RESULT", overflow="fold")
        for o in outcomes:
            table.add_row(
                short_id(o.saga.id),
                lit(o.saga.saga_name),
                status_text(o.from_status),
                status_text(o.status) if o.status else Text("-", style="dim"),
                Text(spec.done, style="green") if o.ok else lit(o.message or "", "red"),
            )
        rt.out.print(table)
    summary = f"{spec.done} {len(outcomes) - len(failed)} of {len(outcomes)} saga(s)"
    if failed:
        moved = sum(o.changed for o in failed)
        note = f", {moved} of them changed since listed and left alone" if moved else ""
        rt.warn(f"{summary}; {len(failed)} failed{note} (exit {int(ExitCode.PARTIAL)})")
    else:
        rt.info(summary)


async def run_bulk(
    rt: Runtime,
    s: Session,
    action: str,
    flt: SagaFilters,
    *,
    reason: str | None,
    yes: bool,
    dry_run: bool,
    limit: int | None,
    mock_output: Any = None,
) -> int:
    now = await s.now()
    query = flt.query(now)
    total = await s.admin.count_sagas(**query)
    targets = await s.admin.list_sagas(
        **query, limit=limit or DEFAULT_BULK_LIMIT, oldest_first=True
    )
    if dry_run:
        return _dry_run(rt, action, flt, total, targets, now)
    spec = ACTIONS[action]
    if not targets:
        rt.info(f"no saga matches {flt.describe()}; nothing to do")
        _report(rt, action, total, [])
        return 0
    if total > len(targets):
        rt.warn(
            f"{total} sagas match; acting on the oldest {len(targets)} (raise --limit for more)"
        )
    question = f"{spec.verb.capitalize()} {len(targets)} saga(s) matching {flt.describe()}?"
    confirm(rt, clean(question), yes=yes)
    outcomes: list[Outcome] = []
    stop: ExitCode | None = None
    with _progress(rt, spec.verb, len(targets)) as advance:
        for target in targets:
            try:
                # A compare-and-set on the saga as listed: one that changed while the
                # operator read the prompt is skipped and reported, never acted on.
                after = await apply_action(s, action, target, reason, mock_output)
                outcomes.append(Outcome(target, True, after.status.value))
            except Exception as exc:
                code, message = classify(exc)
                found = exc.status if isinstance(exc, SagaStateError) else None
                changed = isinstance(exc, SagaConflictError)
                outcomes.append(Outcome(target, False, None, code, message, found, changed))
                if code is ExitCode.UNREACHABLE:
                    stop = code
                    break
            advance()
    _report(rt, action, total, outcomes)
    if stop is not None:
        rt.error(f"stopped after {len(outcomes)} saga(s): the database became unreachable", stop)
        return int(stop)
    return int(ExitCode.PARTIAL) if any(not o.ok for o in outcomes) else 0
