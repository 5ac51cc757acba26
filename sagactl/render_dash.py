"""Text output of ``stats``, ``workers``, ``orphans`` and ``db`` (the ``watch`` frame is in
``render_watch``). Stored text goes into ``Text`` through ``fmt.lit``, never into markup."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from saga_core import SagaStatus
from saga_core.snapshot import OrphanGroup, WorkerRow
from sagactl.fmt import STATUS_STYLE, age, clock, duration, lit
from sagactl.stats import Stats, WorkerView

__all__ = [
    "STATUS_ORDER",
    "WORKER_STYLE",
    "counts_table",
    "db_report",
    "finished_line",
    "orphans_line",
    "orphans_view",
    "sagas_cell",
    "stats_view",
    "summary_lines",
    "workers_table",
]

STATUS_ORDER = [s.value for s in SagaStatus]


ACTIVE_ORDER = ["RUNNING", "SUSPENDED", "COMPENSATING", "FAILED"]
FINISHED = ("COMPLETED", "COMPENSATED", "ABORTED")
NAME_MIN = 12


def _columns(st: Stats, width: int | None) -> list[str]:
    """One column per status present; when they do not fit in ``width`` (80 columns, say),
    the active statuses and FAILED, and the finished ones summed up in ``FINISHED``."""
    present = [s for s in STATUS_ORDER if st.count(None, s)]
    need = NAME_MIN + sum(len(s) + 3 for s in present) + 8
    if width is None or need <= width:
        return present
    return [*ACTIVE_ORDER, "FINISHED"]


def _count(st: Stats, name: str | None, column: str) -> int:
    if column == "FINISHED":
        return sum(st.count(name, s) for s in FINISHED)
    return st.count(name, column)


def counts_table(
    st: Stats,
    *,
    width: int | None = None,
    names: list[str] | None = None,
    title: str | None = "sagas by name and status",
    compact: bool = False,
) -> Table:
    """Counts by saga name (``names``: those rows only, default all) and status, with the
    totals row. Status names are never cut: past ``width`` finished statuses share a column."""
    table = Table(
        box=None if compact else box.SIMPLE_HEAD,
        title=title,
        title_justify="left",
        show_edge=not compact,
        header_style="bold",
        pad_edge=not compact,
    )
    # NAME gives way when the status columns need the room: cut with an ellipsis.
    table.add_column("NAME", no_wrap=False, min_width=4, overflow="ellipsis")
    columns = _columns(st, width)
    for s in columns:
        table.add_column(s, justify="right", header_style=STATUS_STYLE.get(s, ""), no_wrap=True)
    table.add_column("TOTAL", justify="right", style="bold", no_wrap=True)
    shown = st.names if names is None else names
    for name in shown:
        cells = [_n(_count(st, name, s), s) for s in columns]
        cell = lit(name)
        cell.no_wrap, cell.overflow = True, "ellipsis"
        table.add_row(cell, *cells, str(st.count(name, None)))
    if len(shown) != 1 or len(st.names) != 1:
        if not compact:
            table.add_section()
        table.add_row(
            Text("all", style="bold"),
            *[_n(_count(st, None, s), s) for s in columns],
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
    return lit(
        f"warning: {st.orphaned} active saga(s) of a version no live worker runs: {groups}; "
        "see `sagactl orphans`",
        "bold yellow",
    )


def finished_line(st: Stats) -> Text:
    """The finished statuses one by one, for when they share the FINISHED column."""
    text = Text.assemble(("finished", "bold"), ": ")
    text.no_wrap, text.overflow = True, "ellipsis"
    for i, s in enumerate(FINISHED):
        text.append(" · " if i else "")
        text.append(s, style=STATUS_STYLE.get(s, ""))
        text.append(f" {st.count(None, s)}")
    return text


def stats_view(st: Stats, *, width: int | None = None) -> Group:
    table = counts_table(st, width=width)
    parts: list[RenderableType] = [table]
    if "FINISHED" in [c.header for c in table.columns]:
        parts.append(finished_line(st))
    parts.append(summary_lines(st))
    line = orphans_line(st)
    if line is not None:
        parts.append(line)
    return Group(*parts)


WORKER_STYLE = {"live": "green", "stale": "yellow", "stopped": "dim"}


def sagas_cell(w: WorkerRow) -> Text:
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
        return lit(", ".join(w.saga_names) or "-")
    return lit(
        ", ".join(
            f"{name} v{','.join(str(v) for v in sorted(vs))}"
            for name, vs in sorted(versions.items())
        )
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
            lit(w.id),
            lit(w.host),
            str(w.pid),
            lit(w.version),
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


def db_report(report: dict[str, Any], *, changes: list[str] | None = None) -> Group:
    parts: list[RenderableType] = []
    if changes is not None:
        if changes:
            parts.extend(lit(f"✔ {c}", "green") for c in changes)
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
            lit(name),
            "yes" if entry.get("exists") else Text("no", style="red"),
            lit(entry.get("version") or "-"),
            lit(", ".join(missing) or "-"),
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


def orphans_view(
    groups: list[OrphanGroup],
    listed: dict[tuple[str, int], list[str]] | None,
    now: datetime,
) -> RenderableType:
    table = Table(
        box=box.SIMPLE_HEAD,
        title="active sagas no live worker runs",
        title_justify="left",
        pad_edge=False,
    )
    for col, justify in (
        ("NAME", "left"),
        ("VERSION", "left"),
        ("COUNT", "right"),
        ("OLDEST", "left"),
        ("LIVE WORKERS RUN", "left"),
    ):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for g in groups:
        table.add_row(
            lit(g.saga_name),
            f"v{g.definition_version}",
            str(g.count),
            f"{clock(g.oldest_created_at)} ({age(g.oldest_created_at, now)} ago)",
            ", ".join(f"v{v}" for v in g.live_versions) or Text("no version", style="red"),
        )
    parts: list[RenderableType] = [table]
    if listed is not None:
        for g in groups:
            key = (g.saga_name, g.definition_version)
            shown = listed.get(key, [])
            more = g.count - len(shown)
            parts.append(
                lit(
                    f"{g.saga_name} v{g.definition_version}"
                    + (f" (oldest {len(shown)} of {g.count})" if more > 0 else ""),
                    "bold",
                )
            )
            parts.extend(lit(f"  {i}") for i in shown)
    return Group(*parts)
