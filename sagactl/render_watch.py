"""One frame of ``sagactl watch``: a title line, then sagas by name and status with the
totals, the workers and the latest failures, fitted to the terminal (80x24 included):
status names are never cut, and the totals and failures stay on screen however many saga
names, workers or failures there are (the rest is counted in a ``… N more`` row)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from sagactl.fmt import STATUS_STYLE, age, clock, duration, lit, short_id, shorten
from sagactl.render_dash import (
    WORKER_STYLE,
    counts_table,
    finished_line,
    orphans_line,
    sagas_cell,
)
from sagactl.render_text import step_cell
from sagactl.stats import Dashboard, Stats, WorkerView

__all__ = ["dashboard"]

MIN_FAILURE_ROWS = 3
"""Failure rows kept on screen before saga names and workers get theirs."""


def _line(*parts: str | tuple[str, str]) -> Text:
    text = Text.assemble(*parts)
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def _cut(text: Text) -> Text:
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def _title(d: Dashboard, source: str, interval: float) -> Text:
    return _line(
        ("sagactl watch", "bold"),
        f"  {clock(d.stats.at)} · every {duration(interval)} · Ctrl-C to quit · ",
        (source, "dim"),
    )


def _sagas_heading(st: Stats) -> Text:
    text = _line(("sagas", "bold"), f"  {st.count(None, None)} in all · due now ")
    text.append(str(st.due_now), style="yellow" if st.due_now else "")
    if st.oldest_due is not None:
        text.append(f", oldest {duration(st.at - st.oldest_due)}")
    text.append(
        f" · last {duration(st.window)}: {st.finished_total} finished, {st.per_minute:.1f}/min"
    )
    return text


def _more(n: int, what: str, hint: str) -> Text:
    return _line((f"… {n} more {what}", "dim"), (f" ({hint})", "dim"))


def _workers_heading(workers: list[WorkerView]) -> Text:
    counts = {state: sum(v.state == state for v in workers) for state in WORKER_STYLE}
    text = _line(("workers", "bold"), " ")
    if not workers:
        text.append(" (no sagad worker has registered)", style="dim")
        return text
    for i, (state, n) in enumerate(counts.items()):
        text.append(" ·" if i else "")
        text.append(f" {n} {state}", style=WORKER_STYLE[state] if n else "dim")
    return text


def _workers(views: list[WorkerView], d: Dashboard, wide: bool) -> Table:
    now = d.stats.at
    # Borderless tables: every line counts at 80x24.
    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = ["ID", "HOST", "PID", "STATE", "HEARTBEAT", "IN FLIGHT", "SAGAS"]
    if not wide:  # the id is host:pid:random already
        columns = ["ID", "STATE", "HEARTBEAT", "IN FLIGHT", "SAGAS"]
    for col in columns:
        flexible = col == "SAGAS"  # gives way to the others (cut, not wrapped)
        table.add_column(
            col,
            no_wrap=not flexible,
            overflow="ellipsis",
            justify="right" if col in ("PID", "IN FLIGHT") else "left",
            ratio=1 if flexible else None,
            max_width=None if flexible else 40,
        )
    for v in views:
        w = v.row
        cells: dict[str, RenderableType] = {
            "ID": lit(w.id),
            "HOST": lit(w.host),
            "PID": str(w.pid),
            "STATE": Text(v.state, style=WORKER_STYLE[v.state]),
            "HEARTBEAT": f"{duration(v.heartbeat_age)} ago",
            "IN FLIGHT": f"{w.in_flight}/{w.concurrency}",
            "SAGAS": _cut(sagas_cell(w)),
        }
        if v.state == "stopped":
            cells["HEARTBEAT"] = f"stopped {age(w.stopped_at, now)} ago"
        table.add_row(*(cells[c] for c in columns))
    return table


def _failures_heading(d: Dashboard) -> Text:
    text = _line(("failures", "bold"), " ")
    failed = d.stats.count(None, "FAILED")
    if not failed:
        text.append(" none FAILED", style="green")
    else:
        text.append(f" {failed} FAILED", style=STATUS_STYLE["FAILED"])
        text.append(", the latest first", style="dim")
    return text


def _failures(d: Dashboard, rows: int) -> Table:
    now = d.stats.at
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", style="bold", no_wrap=True)
    table.add_column("NAME", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("STEP", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("UPDATED", justify="right", no_wrap=True)
    # The error column is the one that gives way (its text is cut, not wrapped).
    table.add_column("LAST ERROR", style="red", ratio=1)
    for s in d.failures[:rows]:
        table.add_row(
            short_id(s.id),
            lit(s.saga_name),
            Text(step_cell(s)),
            f"{age(s.updated_at, now)} ago",
            _cut(Text(shorten(s.last_error, 200))),
        )
    return table


@dataclass
class _Budget:
    names: int
    workers: int
    failures: int


# Rows handed out in rounds: a few of each list first, then the rest in this order.
_ROUNDS: tuple[tuple[str, int], ...] = (
    ("failures", MIN_FAILURE_ROWS),
    ("names", 3),
    ("workers", 2),
    ("names", 10**9),
    ("workers", 10**9),
    ("failures", 10**9),
)


def _budget(lines: int, names: int, workers: int, failures: int, failed: int) -> _Budget:
    """How many rows of each list fit in ``lines``. A list cut short takes one more line
    (``… N more``); the workers and failures tables take a header line when they show a
    row (the counts table's header is counted with the fixed lines). ``failures`` rows are
    at hand of ``failed`` FAILED sagas."""
    at_hand = {"names": names, "workers": workers, "failures": failures}
    total = {"names": names, "workers": workers, "failures": failed}
    shown = dict.fromkeys(at_hand, 0)

    def cost() -> int:
        used = 0
        for k, n in shown.items():
            used += n + (1 if n < total[k] else 0) + (1 if n and k != "names" else 0)
        return used

    for key, upto in _ROUNDS:
        while shown[key] < min(upto, at_hand[key]):
            shown[key] += 1
            if cost() > lines:
                shown[key] -= 1
                break
    return _Budget(shown["names"], shown["workers"], shown["failures"])


def _busiest(st: Stats, n: int) -> list[str]:
    """The ``n`` saga names with the most active or failed sagas (then the most sagas), in
    name order."""

    def weight(name: str) -> tuple[int, int]:
        active = sum(st.count(name, s) for s in ("RUNNING", "SUSPENDED", "COMPENSATING", "FAILED"))
        return (-active, -st.count(name, None))

    return sorted(sorted(st.names, key=weight)[:n])


def dashboard(
    d: Dashboard,
    *,
    source: str,
    interval: float,
    width: int = 100,
    height: int | None = None,
) -> Group:
    """One frame of ``watch`` in ``width`` columns and at most ``height`` lines (``None``:
    as many as it takes, for output that is not a terminal)."""
    st = d.stats
    wide = width >= 120
    names = st.names
    failures = d.failures
    workers = d.workers
    failed = max(st.count(None, "FAILED"), len(failures))
    table_probe = counts_table(st, width=width, title=None, compact=True)
    split_finished = "FINISHED" in [c.header for c in table_probe.columns]
    warning = orphans_line(st)
    # Lines that do not depend on how many rows are shown: titles, table headers, totals.
    fixed = 1 + 1 + 1 + 1  # title line, sagas heading, counts header, "all" row
    fixed += 1 if split_finished else 0
    fixed += 0 if warning is None else 1
    fixed += len(d.notes)
    fixed += 2  # workers and failures headings
    if height is None:
        budget = _Budget(len(names), len(workers), len(failures))
    else:
        budget = _budget(height - 1 - fixed, len(names), len(workers), len(failures), failed)
    shown = names if budget.names >= len(names) else _busiest(st, budget.names)

    parts: list[RenderableType] = [_title(d, source, interval), _sagas_heading(st)]
    parts.append(counts_table(st, width=width, names=shown, title=None, compact=True))
    if len(shown) < len(names):
        parts.append(_more(len(names) - len(shown), "saga names", "sagactl stats"))
    if split_finished:
        parts.append(finished_line(st))
    if warning is not None:
        warning.no_wrap, warning.overflow = True, "ellipsis"
        parts.append(warning)
    parts.append(_workers_heading(workers))
    for note in d.notes:
        parts.append(lit(note, "yellow"))
    if budget.workers:
        parts.append(_workers(workers[: budget.workers], d, wide))
    if budget.workers < len(workers):
        parts.append(_more(len(workers) - budget.workers, "workers", "sagactl workers"))
    parts.append(_failures_heading(d))
    if budget.failures:
        parts.append(_failures(d, budget.failures))
    if budget.failures < failed:
        more = failed - budget.failures
        parts.append(_more(more, "failures", "sagactl list -s FAILED"))
    return Group(*parts)
