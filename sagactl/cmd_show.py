"""``sagactl show``: one saga (by id or by aggregation id), every saga of an aggregation
id, or one saga followed until it finishes."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from sagactl.errors import CliError
from sagactl.exitcodes import ExitCode
from sagactl.runtime import OutputFormat, Runtime, Session
from sagactl.timeparse import parse_duration

if TYPE_CHECKING:
    from saga_core.snapshot import SagaAdminSnapshot

# saga_core and the rendering are imported when the command runs (see ``runtime``).

__all__ = ["ALL_LIMIT", "show_cmd"]

ALL_LIMIT = 100
"""``show --aggregation-id X --all`` shows at most this many sagas (the newest)."""


def show_cmd(
    ctx: typer.Context,
    saga_id: Annotated[
        str | None,
        typer.Argument(help="Saga id, or an unambiguous prefix of one (or --aggregation-id)."),
    ] = None,
    aggregation_id: Annotated[
        str | None,
        typer.Option(
            "--aggregation-id",
            "-a",
            help="Instead of SAGA_ID: the newest saga of this aggregation id.",
        ),
    ] = None,
    all_sagas: Annotated[
        bool,
        typer.Option(
            "--all",
            help=f"With --aggregation-id: every saga of it, newest first (at most {ALL_LIMIT}).",
        ),
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Then print each new timeline entry and status change as it happens, until "
            "the saga finishes (COMPLETED, COMPENSATED or ABORTED); a FAILED or SUSPENDED "
            "saga is followed on, since an operator or an event moves it again. Ctrl-C stops "
            "(exit 130). With -o json/jsonl: the saga as one JSON line each time it changes.",
        ),
    ] = False,
    interval: Annotated[
        str, typer.Option("--interval", "-i", help="With --follow: time between reads.")
    ] = "1s",
    context: Annotated[
        bool, typer.Option("--context", help="Also print the full context JSON.")
    ] = False,
    history: Annotated[
        bool, typer.Option("--history", help="Also print the full history JSON.")
    ] = False,
    tracebacks: Annotated[
        bool,
        typer.Option(
            "--tracebacks",
            help="Print the traceback of every failed attempt (by default only the latest "
            "one's; the others get a one-line note in the timeline). -o json has them all.",
        ),
    ] = False,
) -> None:
    """Show one saga: header (status, ids, times, lease, due time, token), its steps, a timeline of every attempt, compensation, event and operator action, and the traceback of the latest failed attempt."""
    rt: Runtime = ctx.obj

    async def work() -> int:
        if (saga_id is None) == (aggregation_id is None):
            raise CliError("give a SAGA_ID or --aggregation-id, one of the two", ExitCode.USAGE)
        if all_sagas and aggregation_id is None:
            raise CliError("--all goes with --aggregation-id", ExitCode.USAGE)
        if all_sagas and follow:
            raise CliError("--follow follows one saga: not with --all", ExitCode.USAGE)
        every = parse_duration(interval).total_seconds() if follow else 0.0
        if follow and every <= 0:
            raise CliError("--interval must be positive", ExitCode.USAGE)
        async with rt.connect() as s:
            if aggregation_id is not None:
                snaps = await _by_aggregation(s, aggregation_id, ALL_LIMIT if all_sagas else 1)
            else:
                assert saga_id is not None
                snaps = [await s.admin.get_saga(saga_id)]
            now = await s.now()
            if all_sagas:
                _print_all(rt, snaps, now, context=context, history=history, tracebacks=tracebacks)
                return 0
            snap = snaps[0]
            if not follow:
                _print_one(rt, snap, now, context=context, history=history, tracebacks=tracebacks)
                return 0
            return await _follow(
                rt, s, snap, every, context=context, history=history, tracebacks=tracebacks
            )

    # Ctrl-C is how --follow ends before the saga does: exit 130 without a message.
    rt.run(work, quiet_interrupt=follow)


async def _by_aggregation(s: Session, aggregation_id: str, limit: int) -> list[SagaAdminSnapshot]:
    from saga_core.errors import SagaNotFoundError

    found = await s.admin.list_sagas(aggregation_id=aggregation_id, limit=limit)
    if not found:
        raise SagaNotFoundError(f"no saga with aggregation id {aggregation_id!r}", aggregation_id)
    return [await s.admin.get_saga(x.id) for x in found]


def _print_one(
    rt: Runtime,
    snap: SagaAdminSnapshot,
    now: datetime,
    *,
    context: bool,
    history: bool,
    tracebacks: bool,
) -> None:
    from sagactl.render_json import saga_json
    from sagactl.render_show import show_page

    if rt.text:
        rt.out.print(show_page(snap, now, context=context, history=history, tracebacks=tracebacks))
    elif rt.output is OutputFormat.JSONL:
        rt.emit_lines([saga_json(snap)])
    else:
        rt.emit(saga_json(snap))


def _print_all(
    rt: Runtime,
    snaps: list[SagaAdminSnapshot],
    now: datetime,
    *,
    context: bool,
    history: bool,
    tracebacks: bool,
) -> None:
    from sagactl.render_json import saga_json
    from sagactl.render_show import show_page

    if rt.output is OutputFormat.JSONL:
        rt.emit_lines(saga_json(x) for x in snaps)
    elif rt.output is OutputFormat.JSON:
        rt.emit({"sagas": [saga_json(x) for x in snaps], "total": len(snaps)})
    else:
        for i, snap in enumerate(snaps):
            if i:
                rt.out.print()
            rt.out.print(
                show_page(snap, now, context=context, history=history, tracebacks=tracebacks)
            )
        more = " (the newest; there may be more)" if len(snaps) >= ALL_LIMIT else ""
        rt.info(f"{len(snaps)} saga(s) of aggregation id {snaps[0].aggregation_id!r}{more}")


async def _follow(
    rt: Runtime,
    s: Session,
    snap: SagaAdminSnapshot,
    every: float,
    *,
    context: bool,
    history: bool,
    tracebacks: bool,
) -> int:
    """Print the saga, then what changes, until it reaches a final status. New entries'
    tracebacks are printed with ``tracebacks`` only (a note says they are there)."""
    import asyncio

    from sagactl.render_json import saga_json
    from sagactl.render_show import follow_rows, show_page, status_change

    if rt.text:
        page = show_page(
            snap,
            await s.now(),
            context=context,
            history=history,
            follow=True,
            tracebacks=tracebacks,
        )
        rt.out.print(page)
    else:
        rt.emit_lines([saga_json(snap)])
    seen = len(snap.step_history)
    while not snap.status.is_terminal:
        await asyncio.sleep(every)
        before, snap = snap, await s.admin.get_saga(snap.id)
        if snap.updated_at == before.updated_at and len(snap.step_history) == seen:
            continue
        if not rt.text:
            rt.emit_lines([saga_json(snap)])
        else:
            start = min(seen, len(snap.step_history))
            rows = follow_rows(snap, start, tracebacks=tracebacks)
            if rows is not None:
                rt.out.print(rows)
            if snap.status is not before.status:
                rt.out.print(status_change(before, snap, await s.now()))
        seen = len(snap.step_history)
    if rt.text:
        rt.info(f"saga {snap.id} finished: {snap.status.value}")
    return 0
