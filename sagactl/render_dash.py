"""Text output of ``stats``, ``workers``, ``db`` and the ``watch`` dashboard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from saga_core.machine import SagaStatus
from saga_core.store import WorkerRow
from sagactl.fmt import STATUS_STYLE, age, clock, duration, short_id, shorten, status_text
from sagactl.render_text import step_cell
from sagactl.stats import Dashboard, Stats, WorkerView

__all__ = ["dashboard", "db_report", "stats_view", "workers_table"]

STATUS_ORDER = [s.value for s in SagaStatus]


def counts_table(st: Stats) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="sagas by name and status", title_justify="left")
    table.add_column("NAME", no_wrap=True)
    present = [s for s in STATUS_ORDER if st.count(None, s)]
    for s in present:
        table.add_column(s, justify="right", header_style=STATUS_STYLE[s], no_wrap=True)
    table.add_column("TOTAL", justify="right", style="bold")
    for name in st.names:
        cells = [_n(st.count(name, s), s) for s in present]
        table.add_row(name, *cells, str(st.count(name, None)))
    if len(st.names) > 1 or not st.names:
        table.add_section()
        table.add_row(
            Text("all", style="bold"),
            *[_n(st.count(None, s), s) for s in present],
            str(st.count(None, None)),
        )
    return table


def _n(count: int, status: str) -> Text:
    if not count:
        return Text("·", style="dim")
    style = STATUS_STYLE[status] if status in ("FAILED", "SUSPENDED", "COMPENSATING") else ""
    return Text(str(count), style=style)


def summary_lines(st: Stats) -> Text:
    text = Text()
    text.append("due now: ", style="bold")
    text.append(str(st.due_now), style="yellow" if st.due_now else "")
    if st.oldest_due is not None:
        lag = st.at - st.oldest_due
        text.append(f"   oldest due since {clock(st.oldest_due)} (waiting {duration(lag)})")
    text.append("\n")
    text.append(f"throughput (last {duration(st.window)}): ", style="bold")
    text.append(f"{st.finished_total} finished, {st.per_minute:.1f}/min")
    by_status: dict[str, int] = {}
    for _, s, c in st.finished:
        by_status[s] = by_status.get(s, 0) + c
    if by_status:
        text.append("  (")
        for i, (s, c) in enumerate(sorted(by_status.items())):
            if i:
                text.append(", ")
            text.append(f"{s.lower()} {c}", style=STATUS_STYLE.get(s, ""))
        text.append(")")
    return text


def orphans_line(st: Stats) -> Text | None:
    """A warning when active sagas wait for a definition version no live worker runs."""
    if not st.orphans:
        return None
    groups = ", ".join(f"{g.saga_name} v{g.definition_version} ({g.count})" for g in st.orphans)
    return Text(
        f"warning: {st.orphaned} active saga(s) of a version no live worker runs: {groups}; "
        "see `sagactl orphans`",
        style="bold yellow",
    )


def stats_view(st: Stats) -> Group:
    parts: list[RenderableType] = [counts_table(st), summary_lines(st)]
    line = orphans_line(st)
    if line is not None:
        parts.append(line)
    return Group(*parts)


WORKER_STYLE = {"live": "green", "stale": "yellow", "stopped": "dim"}


def sagas_cell(w: WorkerRow) -> str:
    """The saga names a worker runs, each with its definition versions (``order v1,2``)
    when the worker advertises them (a worker from before versioning does not)."""
    versions: dict[str, set[int]] = {}
    for by_name in w.saga_versions.values():
        if isinstance(by_name, dict):
            for name, vs in by_name.items():
                if isinstance(vs, list):
                    versions.setdefault(str(name), set()).update(
                        v for v in vs if isinstance(v, int)
                    )
    if not versions:
        return ", ".join(w.saga_names) or "-"
    return ", ".join(
        f"{name} v{','.join(str(v) for v in sorted(vs))}" for name, vs in sorted(versions.items())
    )


def workers_table(workers: list[WorkerView], now: datetime) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="workers", title_justify="left")
    for col in ("ID", "HOST", "PID", "VERSION", "STATE", "UP", "HEARTBEAT"):
        table.add_column(col, no_wrap=True)
    table.add_column("IN FLIGHT", justify="right")
    table.add_column("SAGAS", overflow="fold")
    for v in workers:
        w = v.row
        table.add_row(
            w.id,
            w.host,
            str(w.pid),
            w.version,
            Text(v.state, style=WORKER_STYLE[v.state]),
            age(w.started_at, now)
            if v.state != "stopped"
            else f"stopped {age(w.stopped_at, now)} ago",
            f"{duration(v.heartbeat_age)} ago",
            f"{w.in_flight}/{w.concurrency}",
            sagas_cell(w),
        )
    if not workers:
        table.add_row("(no sagad worker has registered)", *[""] * 8)
    return table


def failures_table(d: Dashboard) -> Table:
    now = d.stats.at
    table = Table(box=box.SIMPLE_HEAD, title="latest failures", title_justify="left")
    table.add_column("ID", style="bold", no_wrap=True)
    table.add_column("NAME", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("STEP", no_wrap=True)
    table.add_column("UPDATED", justify="right", no_wrap=True)
    table.add_column("LAST ERROR", style="red", no_wrap=True, overflow="ellipsis", ratio=1)
    for s in d.failures:
        table.add_row(
            short_id(s.id),
            s.saga_name,
            status_text(s.status),
            step_cell(s),
            f"{age(s.updated_at, now)} ago",
            shorten(s.last_error, 100),
        )
    if not d.failures:
        table.add_row("", "", Text("none", style="green"), "", "", "")
    return table


def dashboard(d: Dashboard, *, source: str, interval: float) -> Group:
    """One frame of ``watch``: title, sagas by status, workers, latest failures."""
    title = Text.assemble(
        ("sagactl watch", "bold"),
        f"  {source}  ·  {clock(d.stats.at)}  ·  every {duration(interval)}  ·  Ctrl-C to quit",
    )
    notes: list[RenderableType] = [Text(n, style="yellow") for n in d.notes]
    return Group(
        Panel(title, box=box.HEAVY),
        Panel(stats_view(d.stats), title="sagas", title_align="left"),
        Panel(
            Group(workers_table(d.workers, d.stats.at), *notes),
            title="workers",
            title_align="left",
        ),
        Panel(failures_table(d), title="failures", title_align="left"),
    )


def db_report(report: dict[str, Any], *, changes: list[str] | None = None) -> Group:
    parts: list[RenderableType] = []
    if changes is not None:
        if changes:
            parts.extend(Text(f"✔ {c}", style="green") for c in changes)
        else:
            parts.append(Text("nothing to do: the schema was already up to date", style="green"))
    table = Table(box=box.SIMPLE_HEAD, title="schema", title_justify="left")
    for col in ("TABLE", "EXISTS", "VERSION", "MISSING", "UP TO DATE"):
        table.add_column(col, no_wrap=col != "MISSING")
    for name, entry in report["tables"].items():
        missing = [
            *entry.get("missing_columns", []),
            *entry.get("missing_indexes", []),
            *entry.get("missing_constraints", []),
            *(f"{c} (outdated)" for c in entry.get("outdated_constraints", [])),
        ]
        ok = bool(entry.get("up_to_date"))
        table.add_row(
            name,
            "yes" if entry.get("exists") else Text("no", style="red"),
            str(entry.get("version") or "-"),
            ", ".join(missing) or "-",
            Text("yes", style="green") if ok else Text("no", style="bold red"),
        )
    parts.append(table)
    verdict = (
        Text(f"database matches schema version {report['expected_version']}", style="green")
        if report["up_to_date"]
        else Text(
            f"database does not match schema version {report['expected_version']}: "
            "run `sagactl db upgrade`",
            style="bold red",
        )
    )
    parts.append(verdict)
    return Group(*parts)
