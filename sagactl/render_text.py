"""Text output for people: the saga list, the ``show`` page and action results (rich)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.json import JSON
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from saga_core import SagaStatus
from saga_core.snapshot import REFUSALS_UNRECORDED, REFUSED, SagaAdminSnapshot, SagaSnapshot
from sagactl.fmt import (
    age,
    clock,
    duration,
    outcome_text,
    relative,
    short_id,
    shorten,
    status_text,
)

__all__ = [
    "attempt_cell",
    "saga_table",
    "show_page",
    "step_cell",
    "worker_cell",
]

ACTIVE_LEASE = (SagaStatus.RUNNING, SagaStatus.COMPENSATING)


def step_cell(s: SagaSnapshot) -> str:
    """``i/n step_id``; ``↩`` marks a step being compensated."""
    n = s.total_steps
    if s.current_step_id is None:
        return f"{n}/{n}" if s.status is SagaStatus.COMPLETED else "-"
    arrow = "↩ " if s.phase == "compensate" else ""
    return f"{arrow}{s.current_step_index + 1}/{n} {s.current_step_id}"


def attempt_cell(s: SagaSnapshot) -> str:
    """The current (or next) attempt of the current step; for FAILED, the attempts made."""
    if s.status.is_terminal:
        return "-"
    if s.status is SagaStatus.FAILED:
        return str(max(s.retry_counter, 1))
    return str(s.retry_counter + 1)


def lease_live(s: SagaSnapshot, now: datetime) -> bool:
    return (
        s.lease_owner is not None
        and s.status in ACTIVE_LEASE
        and s.deadline_at is not None
        and s.deadline_at > now
    )


def scheduled(s: SagaSnapshot, now: datetime) -> bool:
    """A RUNNING saga no worker holds whose due time is still ahead: a delayed start
    (``start(run_at=...)``), waiting to become due."""
    return (
        s.status is SagaStatus.RUNNING
        and s.lease_owner is None
        and s.deadline_at is not None
        and s.deadline_at > now
    )


def worker_cell(s: SagaSnapshot, now: datetime) -> Text:
    if s.lease_owner is None:
        if scheduled(s, now) and s.deadline_at is not None:
            return Text(f"starts {relative(s.deadline_at, now)}", style="dim")
        return Text("-", style="dim")
    if lease_live(s, now):
        return Text(s.lease_owner)
    return Text(f"{s.lease_owner} (expired)", style="yellow")


OPTIONAL_COLUMNS = ("AGE", "WORKER", "ATT", "UPDATED")
"""Dropped in this order when the terminal is too narrow for them and a useful error."""


def saga_table(
    sagas: Sequence[SagaSnapshot], now: datetime, *, width: int = 160, title: str | None = None
) -> Table:
    """The saga list; the last error gets whatever width the other columns leave."""
    cells: dict[str, list[str | Text]] = {
        "ID": [short_id(s.id) for s in sagas],
        "NAME": [s.saga_name for s in sagas],
    }
    if any(s.definition_version != 1 for s in sagas):
        # Definition versions in use: the one each saga runs with (see `sagactl orphans`).
        cells["VER"] = [f"v{s.definition_version}" for s in sagas]
    cells.update(
        {
            "STATUS": [status_text(s.status) for s in sagas],
            "STEP": [step_cell(s) for s in sagas],
            "ATT": [attempt_cell(s) for s in sagas],
            "AGE": [age(s.created_at, now) for s in sagas],
            "UPDATED": [f"{age(s.updated_at, now)} ago" for s in sagas],
            "WORKER": [worker_cell(s, now) for s in sagas],
        }
    )

    def used() -> int:  # each column costs its text plus 3 (padding and separator)
        return sum(max([len(h), *(len(str(c)) for c in col)]) + 3 for h, col in cells.items())

    for optional in OPTIONAL_COLUMNS:
        if width - used() >= 28:
            break
        del cells[optional]
    budget = max(12, width - used() - 4)
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
    for h in cells:
        justify = "right" if h in ("ATT", "AGE", "UPDATED") else "left"
        table.add_column(h, no_wrap=True, justify=justify, style="bold" if h == "ID" else None)  # type: ignore[arg-type]
    table.add_column("LAST ERROR", style="red", no_wrap=True, overflow="ellipsis")
    for i, s in enumerate(sagas):
        table.add_row(*(col[i] for col in cells.values()), shorten(s.last_error, budget))
    return table


# --- show --------------------------------------------------------------------------------


def _due(
    s: SagaSnapshot, now: datetime, *, waiting: bool = False, event_name: str | None = None
) -> Text:
    # A named wait can also be notified by --aggregation-id and --event-name.
    how = "the token below" if event_name is None else f"the token below or by name {event_name!r}"
    if waiting and s.status is SagaStatus.SUSPENDED and s.deadline_at is not None:
        return Text(
            f"{clock(s.deadline_at)} ({relative(s.deadline_at, now)}: waiting for an event, "
            f"notify with {how}; the wait times out then)",
            style="yellow",
        )
    if s.status.is_terminal:
        return Text("- (finished)", style="dim")
    if s.status is SagaStatus.FAILED:
        return Text("- (waits for an operator: retry, skip, compensate or abort)", style="red")
    if s.deadline_at is None:
        return Text(f"- (waiting for an event: notify with {how})", style="yellow")
    if lease_live(s, now):
        return Text("- (held by a worker)")
    if scheduled(s, now):
        return Text(
            f"{clock(s.deadline_at)} ({relative(s.deadline_at, now)}: delayed start, "
            "no worker takes it before then)",
            style="cyan",
        )
    if s.deadline_at <= now:
        return Text(f"{clock(s.deadline_at)} (due now, for {duration(now - s.deadline_at)})")
    return Text(f"{clock(s.deadline_at)} ({relative(s.deadline_at, now)})")


def _lease(s: SagaSnapshot, now: datetime) -> Text:
    if s.lease_owner is None:
        return Text("none", style="dim")
    expiry = f"expires {clock(s.deadline_at)} ({relative(s.deadline_at, now)})"
    if lease_live(s, now):
        return Text(f"{s.lease_owner}, {expiry}")
    return Text(f"{s.lease_owner}, {expiry} (expired)", style="yellow")


def _wait_name(s: SagaAdminSnapshot) -> str | None:
    marker = s.waiting
    name = marker.get("event_name") if marker is not None else None
    return name if isinstance(name, str) else None


def header(s: SagaAdminSnapshot, now: datetime) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, RenderableType]] = [
        ("status", status_text(s.status)),
        ("name", s.saga_name),
        ("aggregation id", s.aggregation_id),
        ("trace id", s.trace_id or "-"),
        ("step", f"{step_cell(s)}  (phase {s.phase}, attempt {attempt_cell(s)})"),
        ("retry counter", f"{s.retry_counter}   takeovers {s.takeover_count}"),
        ("created", f"{clock(s.created_at)} ({age(s.created_at, now)} ago)"),
        ("updated", f"{clock(s.updated_at)} ({age(s.updated_at, now)} ago)"),
        ("finished", clock(s.finished_at) if s.finished_at else "-"),
        ("lease", _lease(s, now)),
        ("due", _due(s, now, waiting=s.waiting is not None, event_name=_wait_name(s))),
        ("token", str(s.step_execution_token)),
        ("definition", f"version {s.definition_version}, fingerprint {s.definition_fingerprint}"),
    ]
    if s.idempotency_key is not None:
        rows.insert(4, ("idempotency key", s.idempotency_key))
    if s.last_error:
        rows.append(("last error", Text(s.last_error, style="red")))
    for key, value in rows:
        grid.add_row(key, value)
    title = Text.assemble(("saga ", "bold"), (str(s.id), "bold cyan"))
    return Panel(grid, title=title, title_align="left", box=box.ROUNDED)


_DONE = ("SUCCEEDED", "SKIPPED")


def stages(steps: Sequence[dict[str, Any]]) -> list[int]:
    """Stage of each step of a parallel saga: 1 for a step that depends on nothing, else one
    more than the latest stage it waits for (steps of a stage may run side by side)."""
    index = {str(st.get("step_id")): i for i, st in enumerate(steps)}
    out: list[int | None] = [None] * len(steps)

    def stage(i: int, seen: frozenset[int]) -> int:
        known = out[i]
        if known is not None:
            return known
        deps = [index[str(d)] for d in steps[i].get("after") or [] if str(d) in index]
        value = 1 + max((stage(d, seen | {i}) for d in deps if d not in seen), default=0)
        out[i] = value
        return value

    return [stage(i, frozenset()) for i in range(len(steps))]


def steps_table(s: SagaAdminSnapshot) -> Table:
    parallel = any("after" in st for st in s.steps_state)
    table = Table(box=box.SIMPLE_HEAD, title="steps", title_justify="left", pad_edge=False)
    for col, justify in (("#", "right"), ("STEP", "left"), ("STATE", "left")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    if parallel:
        table.add_column("AFTER", justify="left")
    table.add_column("ATTEMPTS", justify="right")
    table.add_column("COMPENSATIONS", justify="right")
    order = list(range(len(s.steps_state)))
    glyphs = [""] * len(order)
    if parallel:
        # Branches: steps grouped by stage; a stage of several steps is drawn as a fork.
        stage_of = stages(s.steps_state)
        order.sort(key=lambda i: (stage_of[i], i))
        for pos, i in enumerate(order):
            same = [j for j in order if stage_of[j] == stage_of[i]]
            first = pos == 0 or stage_of[order[pos - 1]] != stage_of[i]
            label = f"{stage_of[i]}" if first else ""
            if len(same) > 1:
                fork = "┬" if i == same[0] else ("└" if i == same[-1] else "├")
                glyphs[i] = f"{label:>2} {fork} "
            else:
                glyphs[i] = f"{label:>2}   "
    done = {str(st.get("step_id")) for st in s.steps_state if st.get("status") in _DONE}
    for i in order:
        st = s.steps_state[i]
        if parallel:  # every branch that may run now (or runs)
            running = (
                s.status in (SagaStatus.RUNNING, SagaStatus.SUSPENDED)
                and st.get("status") == "PENDING"
                and all(str(d) in done for d in st.get("after") or [])
            )
        else:
            running = i == s.current_step_index and not s.status.is_terminal
        marker = "▶ " if running else ""
        step = f"{glyphs[i]}{st.get('step_id')}"
        row = [f"{marker}{i + 1}", step, str(st.get("status", ""))]
        if parallel:
            row.append(", ".join(str(d) for d in st.get("after") or []) or "-")
        row += [str(st.get("attempts", 0)), str(st.get("compensation_attempts", 0))]
        table.add_row(*row)
    return table


def _compact(value: Any, width: int) -> str:
    return shorten(json.dumps(value, separators=(",", ":"), default=str), width)


def _refusal_detail(e: dict[str, Any]) -> Text:
    """A refused event delivery: why, the name and event delivered, who delivered it; or the
    entry counting refusals beyond those recorded."""
    if e.get("status") == REFUSALS_UNRECORDED:
        return Text(
            f"{e.get('count')} more refused deliveries, counted only "
            f"(last {_short_clock(e.get('last_at'))}: {e.get('last_reason')})",
            style="yellow",
        )
    text = Text(f"refused: {e.get('reason')}", style="yellow")
    if e.get("event_name") is not None:
        text.append(f" · name {e['event_name']!r}")
    if e.get("actor"):
        text.append(" · by ")
        text.append(str(e["actor"]), style="bold")
        if e.get("note"):
            text.append(f": {e['note']}")
    if e.get("event") is not None:
        text.append(f" · event {_compact(e['event'], 80)}", style="dim")
    return text


def entry_detail(e: dict[str, Any]) -> Text:
    """What one history entry says beyond its outcome: error, actor and reason, event."""
    phase = e.get("phase")
    if phase == "event" and e.get("status") in (REFUSED, REFUSALS_UNRECORDED):
        return _refusal_detail(e)
    text = Text()
    if e.get("error"):
        text.append(shorten(str(e["error"]), 160), style="red")
    if e.get("from_status"):
        text.append(f"{' ' if text else ''}{e['from_status']}→{e.get('to_status')} ")
    if e.get("actor"):
        text.append(f"by {e['actor']}", style="bold")
        if e.get("reason"):
            text.append(f": {e['reason']}")
    elif e.get("reason"):
        text.append(f"{' ' if text else ''}{e['reason']}", style="dim")
    if "mock_output" in e and e["mock_output"] is not None:
        text.append(f" output {_compact(e['mock_output'], 60)}", style="dim")
    if phase == "event":
        name = "" if e.get("event_name") is None else f"{e['event_name']!r} "
        text.append(f"{' ' if text else ''}event {name}{_compact(e.get('event'), 80)}")
    elif e.get("status") == "WAITING" and e.get("event_name") is not None:
        text.append(f"{' ' if text else ''}for event {e['event_name']!r}", style="cyan")
    if e.get("retry_in_s") is not None:
        text.append(f" · retry in {duration(float(e['retry_in_s']))}", style="yellow")
    if not text and e.get("worker"):
        text.append(f"worker {e['worker']}", style="dim")
    return text


def _short_clock(value: Any) -> str:
    text = clock(value)
    return text[5:] if len(text) > 10 else text


def timeline_table(history: Sequence[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="timeline", title_justify="left", pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("AT (UTC)", no_wrap=True)  # month-day time: the header has the year
    table.add_column("PHASE", no_wrap=True)
    table.add_column("STEP", no_wrap=True)
    table.add_column("ATT", justify="right")
    table.add_column("OUTCOME", no_wrap=True)
    table.add_column("TOOK", justify="right", no_wrap=True)
    table.add_column("DETAIL", overflow="fold", ratio=1, min_width=20)
    for i, e in enumerate(history, 1):
        took = e.get("duration_ms")
        table.add_row(
            str(i),
            _short_clock(e.get("at")),
            str(e.get("phase", "")),
            str(e.get("step_id") or "-"),
            str(e.get("attempt") or "-"),
            outcome_text(str(e.get("status", ""))),
            duration(float(took) / 1000) if took is not None else "",
            entry_detail(e),
        )
    if not history:
        table.add_row("", "", "", "(nothing has run yet)", "", "", "", "")
    return table


def show_page(
    s: SagaAdminSnapshot, now: datetime, *, context: bool = False, history: bool = False
) -> Group:
    parts: list[RenderableType] = [header(s, now), steps_table(s), timeline_table(s.step_history)]
    if context:
        parts.append(Text("context", style="bold"))
        parts.append(JSON.from_data(s.context, default=str))
    if history:
        parts.append(Text("history", style="bold"))
        parts.append(JSON.from_data(s.step_history, default=str))
    return Group(*parts)
