"""Read-only commands: list, stats, workers (``show`` is in ``cmd_show``)."""

from __future__ import annotations

from typing import Annotated

import typer

from sagactl.options import (
    MAX_OFFSET,
    MAX_ROWS,
    AggregationOpt,
    NameOpt,
    SinceOpt,
    StatusOpt,
    UntilOpt,
)
from sagactl.runtime import OutputFormat, Runtime, iso
from sagactl.timeparse import parse_duration

# Rendering and saga_core modules are imported inside the commands (see ``runtime``).

__all__ = ["list_cmd", "stats_cmd", "workers_cmd"]


def list_cmd(
    ctx: typer.Context,
    status: StatusOpt = None,
    name: NameOpt = None,
    aggregation_id: AggregationOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[
        int, typer.Option("--limit", "-l", min=0, max=MAX_ROWS, help="Rows per page.")
    ] = 50,
    offset: Annotated[
        int, typer.Option("--offset", min=0, max=MAX_OFFSET, help="Skip this many rows.")
    ] = 0,
    page: Annotated[
        int | None,
        typer.Option("--page", "-p", min=1, max=MAX_OFFSET, help="Page number (sets --offset)."),
    ] = None,
) -> None:
    """List sagas, newest first: id, name, status, step, attempt, age, last update, worker holding it, last error."""
    rt: Runtime = ctx.obj

    async def work() -> int:
        from sagactl.filters import SagaFilters
        from sagactl.render_json import saga_json
        from sagactl.render_text import saga_table

        flt = SagaFilters.parse(
            status=status, name=name, aggregation_id=aggregation_id, since=since, until=until
        )
        first = (page - 1) * limit if page else offset
        async with rt.listing() as s:
            now = await s.now()
            query = flt.query(now)
            sagas = await s.list_sagas(**query, limit=limit, offset=first)
            total = await s.count_sagas(**query)
        nxt = first + len(sagas) if first + len(sagas) < total else None
        if rt.output is OutputFormat.JSONL:
            rt.emit_lines(saga_json(x) for x in sagas)
        elif rt.output is OutputFormat.JSON:
            rt.emit(
                {
                    "sagas": [saga_json(x) for x in sagas],
                    "total": total,
                    "offset": first,
                    "limit": limit,
                    "next_offset": nxt,
                }
            )
        elif not sagas:
            rt.info(
                f"no sagas match ({flt.describe()})"
                if total == 0
                else f"no rows past {first} (of {total})"
            )
        else:
            rt.out.print(saga_table(sagas, now, width=rt.out.width))
            more = ""
            if nxt is not None:
                more = (
                    f"; next page: --page {nxt // limit + 1}"
                    if limit and nxt % limit == 0
                    else f"; next: --offset {nxt}"
                )
            rt.info(f"showing {first + 1}-{first + len(sagas)} of {total}{more}")
        return 0

    rt.run(work)


def stats_cmd(
    ctx: typer.Context,
    window: Annotated[
        str, typer.Option("--window", "-w", help="Throughput over this last period (e.g. 5m, 1h).")
    ] = "5m",
) -> None:
    """Counts by saga name and status, sagas due now and the oldest of them, throughput."""
    rt: Runtime = ctx.obj

    async def work() -> int:
        from sagactl.render_dash import stats_view
        from sagactl.render_json import stats_json
        from sagactl.stats import gather_stats

        span = parse_duration(window)
        async with rt.connect() as s:
            st = await gather_stats(s.admin, await s.now(), span, s.settings.worker_stale_after)
        if rt.text:
            rt.out.print(stats_view(st, width=rt.out.width))
        else:
            rt.emit(stats_json(st))
        return 0

    rt.run(work)


def workers_cmd(ctx: typer.Context) -> None:
    """The sagad worker registry: live, stale (no recent heartbeat) and stopped processes."""
    rt: Runtime = ctx.obj

    async def work() -> int:
        from sagactl.render_dash import workers_table
        from sagactl.render_json import worker_json
        from sagactl.stats import workers_view

        async with rt.connect() as s:
            now = await s.now()
            views = workers_view(await s.admin.workers(), now, s.settings.worker_stale_after)
        if rt.output is OutputFormat.JSONL:
            rt.emit_lines(worker_json(v) for v in views)
        elif rt.output is OutputFormat.JSON:
            rt.emit({"at": iso(now), "workers": [worker_json(v) for v in views]})
        else:
            rt.out.print(workers_table(views, now))
            live = sum(v.state == "live" for v in views)
            rt.info(
                f"{live} live, {sum(v.state == 'stale' for v in views)} stale, "
                f"{sum(v.state == 'stopped' for v in views)} stopped"
            )
        return 0

    rt.run(work)
