"""The ``show`` page for people: a header, the steps and a timeline of the saga's history,
and the lines ``show --follow`` adds as the saga moves on (rich). Stored text is shown
literally (``fmt.lit``/``fmt.clean``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.highlighter import JSONHighlighter
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from saga_core import SagaStatus
from saga_core.snapshot import REFUSALS_UNRECORDED, REFUSED, SagaAdminSnapshot, SagaSnapshot
from sagactl.fmt import (
    STATUS_STYLE,
    age,
    clean,
    clock,
    duration,
    lit,
    outcome_text,
    relative,
    shorten,
    status_text,
)
from sagactl.render_json import history_json, json_text
from sagactl.render_text import attempt_cell, lease_live, scheduled, step_cell
from sagactl.render_tracebacks import expanded, traceback_blocks, traceback_note

__all__ = [
    "entry_detail",
    "follow_rows",
    "header",
    "show_page",
    "status_change",
    "step_states",
    "steps_table",
    "timeline_table",
]

S = SagaStatus
LAST_ERROR_CHARS = 2000
"""The header shows this much of the last error (all of it: ``-o json``)."""


# --- step states ---------------------------------------------------------------------------

_FAILED_OUTCOMES = ("ERROR", "TIMEOUT")
_GAVE_UP = (S.FAILED, S.COMPENSATING, S.COMPENSATED, S.ABORTED)
"""Statuses in which a step that did not succeed will not be run again by itself."""


def _last_attempt(s: SagaAdminSnapshot, step_id: object, phase: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = None
    for e in s.step_history:
        if e.get("step_id") == step_id and e.get("phase") == phase:
            found = e
    return found


def step_states(s: SagaAdminSnapshot) -> list[str]:
    """What each step is, for people. The stored per-step status says only whether a step
    succeeded; a step that was tried and did not succeed stays ``PENDING`` there. Here it
    is ``FAILED`` once the saga gave up on it (FAILED, rolled back or aborted after its last
    attempt failed), ``RETRY WAIT`` while a retry is scheduled, ``WAITING`` while it waits
    for an event; a compensation that failed for an operator is ``COMPENSATION FAILED``."""
    out: list[str] = []
    for i, st in enumerate(s.steps_state):
        stored = str(st.get("status", ""))
        current = i == s.current_step_index
        if s.phase == "compensate" and current and stored == "SUCCEEDED":
            if s.status is S.FAILED:
                out.append("COMPENSATION FAILED")
                continue
            if s.status is S.COMPENSATING:
                out.append("COMPENSATING")
                continue
        if stored != "PENDING" or not st.get("attempts"):
            out.append(stored)
            continue
        last = _last_attempt(s, st.get("step_id"), "execute")
        failed = last is not None and last.get("status") in _FAILED_OUTCOMES
        if s.status in _GAVE_UP:
            if failed or (s.status is S.FAILED and current):
                out.append("FAILED")
            elif s.status is S.ABORTED:
                out.append("ABORTED")
            else:
                out.append(stored)
        elif last is not None and last.get("status") == "WAITING":
            out.append("WAITING")
        elif failed:
            out.append("RETRY WAIT")
        else:
            out.append(stored)
    return out


STATE_STYLE = {
    "SUCCEEDED": "green",
    "SKIPPED": "yellow",
    "COMPENSATED": "blue",
    "COMPENSATING": "magenta",
    "FAILED": "bold red",
    "COMPENSATION FAILED": "bold red",
    "RETRY WAIT": "yellow",
    "WAITING": "cyan",
    "ABORTED": "dim",
}


# --- header --------------------------------------------------------------------------------


def _where(s: SagaSnapshot, index: int, steps: Sequence[dict[str, Any]]) -> str:
    step_id = steps[index].get("step_id") if 0 <= index < len(steps) else None
    return f"{index + 1}/{s.total_steps} {shorten(str(step_id), 60)}"


def step_summary(s: SagaAdminSnapshot) -> Text:
    """The header's ``step`` line: where the saga is, or how it ended."""
    steps, states = s.steps_state, step_states(s)
    failed = [i for i, state in enumerate(states) if state == "FAILED"]
    if s.status is S.COMPLETED:
        return Text(f"{s.total_steps}/{s.total_steps} (every step done)", style="green")
    if s.status is S.COMPENSATED:
        why = f" after step {_where(s, failed[0], steps)} failed" if failed else ""
        return Text(f"- (rolled back{why})", style=STATUS_STYLE[S.COMPENSATED])
    if s.status is S.ABORTED:
        where = _where(s, s.current_step_index, steps)
        if s.phase == "compensate":
            return Text(f"- (aborted while compensating step {where})", style="dim")
        return Text(f"- (aborted at step {where})", style="dim")
    text = Text(step_cell(s))
    index = s.current_step_index
    st = steps[index] if 0 <= index < len(steps) else {}
    if s.status is S.FAILED:
        compensating = s.phase == "compensate"
        tries = int(st.get("compensation_attempts" if compensating else "attempts") or 0)
        what = "its compensation failed" if compensating else "failed"
        plural = "" if tries == 1 else "s"
        text.append(f"  ({what} after {tries} attempt{plural})", style="red")
        return text
    attempt = "next attempt" if s.status is S.SUSPENDED else "attempt"
    text.append(f"  ({s.phase}, {attempt} {attempt_cell(s)})")
    return text


def _due(s: SagaAdminSnapshot, now: datetime) -> Text:
    wait = s.waiting_event
    name = None if wait is None else wait.get("event_name")
    # A named wait can also be notified by --aggregation-id and --event-name.
    how = "the token below" if name is None else f"the token below or by name {clean(repr(name))}"
    if wait is not None and s.status is S.SUSPENDED and s.deadline_at is not None:
        return Text(
            f"{clock(s.deadline_at)} ({relative(s.deadline_at, now)}: waiting for an event, "
            f"notify with {how}; the wait times out then)",
            style="yellow",
        )
    if s.status.is_terminal:
        return Text("- (finished)", style="dim")
    if s.status is S.FAILED:
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
        return lit(f"{s.lease_owner}, {expiry}")
    return lit(f"{s.lease_owner}, {expiry} (expired)", "yellow")


def _last_error(text: str) -> Text:
    shown = lit(text[:LAST_ERROR_CHARS], "red")
    if len(text) > LAST_ERROR_CHARS:
        shown.append(f"… ({len(text) - LAST_ERROR_CHARS} more characters: -o json)", style="dim")
    return shown


def header(s: SagaAdminSnapshot, now: datetime) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, RenderableType]] = [
        ("status", status_text(s.status)),
        ("name", lit(s.saga_name)),
        ("aggregation id", lit(s.aggregation_id)),
        ("trace id", lit(s.trace_id or "-")),
        ("step", step_summary(s)),
        ("retry counter", Text(f"{s.retry_counter}   takeovers {s.takeover_count}")),
        ("created", Text(f"{clock(s.created_at)} ({age(s.created_at, now)} ago)")),
        ("updated", Text(f"{clock(s.updated_at)} ({age(s.updated_at, now)} ago)")),
        ("finished", Text(clock(s.finished_at) if s.finished_at else "-")),
        ("lease", _lease(s, now)),
        ("due", _due(s, now)),
        ("token", Text(str(s.step_execution_token))),
        (
            "definition",
            lit(f"version {s.definition_version}, fingerprint {s.definition_fingerprint}"),
        ),
    ]
    if s.idempotency_key is not None:
        rows.insert(4, ("idempotency key", lit(s.idempotency_key)))
    if s.last_error:
        rows.append(("last error", _last_error(s.last_error)))
    for key, value in rows:
        grid.add_row(key, value)
    title = Text.assemble(("saga ", "bold"), (str(s.id), "bold cyan"))
    return Panel(grid, title=title, title_align="left", box=box.ROUNDED)


# --- steps ---------------------------------------------------------------------------------

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
    states = step_states(s)
    for i in order:
        st = s.steps_state[i]
        if parallel:  # every branch that may run now (or runs)
            running = (
                s.status in (S.RUNNING, S.SUSPENDED)
                and st.get("status") == "PENDING"
                and all(str(d) in done for d in st.get("after") or [])
            )
        else:
            running = i == s.current_step_index and not s.status.is_terminal
        marker = "▶ " if running else ""
        row: list[RenderableType] = [
            Text(f"{marker}{i + 1}"),
            Text(glyphs[i]) + lit(st.get("step_id")),
            Text(states[i], style=STATE_STYLE.get(states[i], "")),
        ]
        if parallel:
            row.append(lit(", ".join(str(d) for d in st.get("after") or []) or "-"))
        row += [Text(str(st.get("attempts", 0))), Text(str(st.get("compensation_attempts", 0)))]
        table.add_row(*row)
    return table


# --- timeline ------------------------------------------------------------------------------


def _compact(value: Any, width: int) -> str:
    # json.dumps escapes control characters; shorten() escapes what it leaves (bidi marks).
    return shorten(json.dumps(value, separators=(",", ":"), default=str), width)


def _refusal_detail(e: dict[str, Any]) -> Text:
    """A refused event delivery: why, the name and event delivered, who delivered it; or the
    entry counting refusals beyond those recorded."""
    if e.get("status") == REFUSALS_UNRECORDED:
        return lit(
            f"{e.get('count')} more refused deliveries, counted only "
            f"(last {_short_clock(e.get('last_at'))}: {e.get('last_reason')})",
            "yellow",
        )
    text = lit(f"refused: {e.get('reason')}", "yellow")
    if e.get("event_name") is not None:
        text.append(f" · name {clean(repr(e['event_name']))}")
    if e.get("actor"):
        text.append(" · by ")
        text.append(clean(e["actor"]), style="bold")
        if e.get("note"):
            text.append(f": {clean(e['note'])}")
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
        text.append(f"{' ' if text else ''}{clean(e['from_status'])}→{clean(e.get('to_status'))} ")
    if e.get("actor"):
        text.append(f"by {clean(e['actor'])}", style="bold")
        if e.get("reason"):
            text.append(f": {clean(e['reason'])}")
    elif e.get("reason"):
        text.append(f"{' ' if text else ''}{clean(e['reason'])}", style="dim")
    if "mock_output" in e and e["mock_output"] is not None:
        text.append(f" output {_compact(e['mock_output'], 60)}", style="dim")
    if phase == "event":
        name = "" if e.get("event_name") is None else f"{clean(repr(e['event_name']))} "
        text.append(f"{' ' if text else ''}event {name}{_compact(e.get('event'), 80)}")
    elif e.get("status") == "WAITING" and e.get("event_name") is not None:
        text.append(f"{' ' if text else ''}for event {clean(repr(e['event_name']))}", style="cyan")
    if e.get("retry_in_s") is not None:
        text.append(f" · retry in {duration(float(e['retry_in_s']))}", style="yellow")
    if not text and e.get("worker"):
        text.append(f"worker {clean(e['worker'])}", style="dim")
    return text


def _short_clock(value: Any) -> str:
    text = clean(clock(value))
    return text[5:] if len(text) > 10 else text


def _took(e: dict[str, Any]) -> str:
    took = e.get("duration_ms")
    try:
        return duration(float(took) / 1000) if took is not None else ""
    except (TypeError, ValueError):
        return clean(took)


def _cells(i: int, e: dict[str, Any], shown: frozenset[int]) -> list[RenderableType]:
    """The timeline row of entry number ``i`` (1-based); ``shown``: the 0-based indexes of
    the entries whose traceback is printed below the table."""
    detail = entry_detail(e)
    note = traceback_note(e, i - 1 in shown)
    if note is not None:
        detail.append(" · " if detail else "")
        detail.append_text(note)
    return [
        Text(str(i)),
        Text(_short_clock(e.get("at"))),
        lit(e.get("phase", "")),
        Text(shorten(str(e.get("step_id") or "-"), 40)),
        lit(e.get("attempt") or "-"),
        outcome_text(str(e.get("status", ""))),
        Text(_took(e)),
        detail,
    ]


# Fixed widths, so the rows ``show --follow`` prints one by one line up with the table.
_WIDTHS = {"#": 3, "AT (UTC)": 15, "PHASE": 10, "STEP": 12, "ATT": 3, "OUTCOME": 11, "TOOK": 6}


def _timeline(*, title: bool, header: bool, step_width: int | None) -> Table:
    """The timeline's columns; with ``step_width``, fixed minimum widths (``--follow``)."""
    table = Table(
        box=box.SIMPLE_HEAD,
        title="timeline" if title else None,
        title_justify="left",
        pad_edge=False,
        show_header=header,
        show_edge=header,
    )
    for col, width in _WIDTHS.items():
        justify = "right" if col in ("#", "ATT", "TOOK") else "left"
        table.add_column(
            col,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=True,
            min_width=None if step_width is None else (step_width if col == "STEP" else width),
        )
    table.add_column("DETAIL", overflow="fold", ratio=1, min_width=20)
    return table


def _step_width(s: SagaAdminSnapshot) -> int:
    longest = max((len(str(st.get("step_id"))) for st in s.steps_state), default=4)
    return max(_WIDTHS["STEP"], min(longest, 40))


def timeline_table(
    history: Sequence[dict[str, Any]],
    *,
    step_width: int | None = None,
    shown: frozenset[int] = frozenset(),
) -> Table:
    """Every history entry; ``step_width`` fixes the column widths (see ``follow_rows``);
    ``shown``: the entries whose traceback follows the table (the others get a note)."""
    table = _timeline(title=True, header=True, step_width=step_width)
    for i, e in enumerate(history, 1):
        table.add_row(*_cells(i, e, shown))
    if not history:
        table.add_row("", "", "", "", "", "", "", Text("(nothing has run yet)", style="dim"))
    return table


def follow_rows(
    s: SagaAdminSnapshot, start: int, *, tracebacks: bool = False
) -> RenderableType | None:
    """The history entries of ``s`` from index ``start`` on, as rows lined up with the
    timeline of ``show_page`` (no header), then their tracebacks with ``tracebacks`` (else
    a note says they are there); ``None`` when there are none."""
    entries = s.step_history[start:]
    if not entries:
        return None
    shown = expanded(s.step_history, True) if tracebacks else frozenset()
    # show_edge=False drops the left border column: pad the first column by one instead.
    table = _timeline(title=False, header=False, step_width=_step_width(s))
    table.columns[0].min_width = _WIDTHS["#"] + 1
    for i, e in enumerate(entries, start + 1):
        table.add_row(*_cells(i, e, shown))
    blocks = traceback_blocks(entries, shown, start=start)
    return Group(table, *blocks) if blocks else table


def status_change(before: SagaSnapshot, after: SagaSnapshot, now: datetime) -> Text:
    """``status RUNNING → COMPLETED`` (and the step) for ``show --follow``."""
    text = Text(f"{clock(now)}  status ", style="bold")
    text.append_text(status_text(before.status))
    text.append(" → ")
    text.append_text(status_text(after.status))
    if not after.status.is_terminal:
        text.append(f"  step {step_cell(after)}")
    if after.status is S.FAILED and after.last_error:
        text.append(f"  {shorten(after.last_error, 120)}", style="red")
    return text


def _json_block(title: str, data: Any) -> list[RenderableType]:
    text = Text(json_text(data, indent=2))
    JSONHighlighter().highlight(text)
    return [Text(title, style="bold"), text]


def show_page(
    s: SagaAdminSnapshot,
    now: datetime,
    *,
    context: bool = False,
    history: bool = False,
    follow: bool = False,
    tracebacks: bool = False,
) -> Group:
    """The page of ``show``; ``follow``: its timeline lined up with ``follow_rows``;
    ``tracebacks``: every traceback in full (else the latest one, the others noted)."""
    shown = expanded(s.step_history, tracebacks)
    parts: list[RenderableType] = [
        header(s, now),
        steps_table(s),
        timeline_table(s.step_history, step_width=_step_width(s) if follow else None, shown=shown),
        *traceback_blocks(s.step_history, shown),
    ]
    if context:
        parts.extend(_json_block("context", s.context))
    if history:
        parts.extend(_json_block("history", history_json(s.step_history)))
    return Group(*parts)
