"""``sagactl watch``: a live dashboard (rich Live) refreshing until Ctrl-C."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from sagactl.errors import CliError
from sagactl.exitcodes import ExitCode
from sagactl.runtime import Runtime
from sagactl.timeparse import parse_duration

# saga_core and the rendering are imported when the command runs (see ``runtime``).

__all__ = ["watch_cmd"]


def watch_cmd(
    ctx: typer.Context,
    interval: Annotated[
        str, typer.Option("--interval", "-i", help="Time between refreshes (e.g. 2s).")
    ] = "2s",
    window: Annotated[
        str, typer.Option("--window", "-w", help="Throughput over this last period.")
    ] = "5m",
    count: Annotated[
        int | None, typer.Option("--count", "-c", min=1, help="Stop after this many refreshes.")
    ] = None,
) -> None:
    """A live dashboard of the sagas by name and status, the workers and the latest failures, until Ctrl-C (or --count refreshes); it fits the terminal, 80x24 included. With -o json or -o jsonl: one JSON document per refresh."""
    rt: Runtime = ctx.obj

    async def work() -> int:
        import asyncio

        from rich.live import Live

        from saga_core.settings import mask_url
        from sagactl.render_json import dashboard_json
        from sagactl.render_watch import dashboard
        from sagactl.stats import gather_dashboard

        every = parse_duration(interval).total_seconds()
        span = parse_duration(window)
        if every <= 0:
            raise CliError("--interval must be positive", ExitCode.USAGE)
        async with rt.connect() as s:
            source = f"{mask_url(s.settings.database_url)} · {s.orchestrator.engine.table_name}"
            done = 0
            if not rt.text:
                while True:
                    rt.emit_lines([dashboard_json(await gather_dashboard(s, span))])
                    done += 1
                    if count is not None and done >= count:
                        return 0
                    await asyncio.sleep(every)
            with Live(console=rt.out, auto_refresh=False, redirect_stderr=False) as live:
                while True:
                    data = await gather_dashboard(s, span)
                    width, height = _size(rt)
                    frame = dashboard(
                        data, source=source, interval=every, width=width, height=height
                    )
                    live.update(frame, refresh=True)
                    done += 1
                    if count is not None and done >= count:
                        return 0
                    await asyncio.sleep(every)

    rt.run(work, on_interrupt=0)


def _size(rt: Runtime) -> tuple[int, int | None]:
    """The frame's size: the terminal's (read every time: it may be resized); for output
    that is not a terminal, the width sagactl uses there and $LINES if set."""
    console = rt.out
    if console.is_terminal:
        return console.size.width, console.size.height
    lines = os.environ.get("LINES", "")
    return console.width, int(lines) if lines.isdigit() and int(lines) > 0 else None
