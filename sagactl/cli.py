"""The ``sagactl`` command: global options and command wiring. The commands live in
``cmd_read``, ``cmd_repair``, ``watch`` and ``cmd_db``."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Annotated

import typer

from sagactl.argv import hoist_global_options, output_format, undecodable
from sagactl.cmd_db import db_app
from sagactl.cmd_orphans import orphans_cmd
from sagactl.cmd_purge import purge_cmd
from sagactl.cmd_read import list_cmd, stats_cmd, workers_cmd
from sagactl.cmd_repair import abort_cmd, compensate_cmd, notify_cmd, retry_cmd, skip_cmd
from sagactl.cmd_show import show_cmd
from sagactl.exitcodes import EXIT_CODES_HELP, ExitCode
from sagactl.helpfmt import Command, Group
from sagactl.logs import route_standard_logging
from sagactl.runtime import ColorMode, GlobalOptions, OutputFormat, Runtime, pause_gc
from sagactl.watch import watch_cmd

__all__ = ["app", "main"]

HELP = (
    "Inspect and repair sagas: list, show, retry, skip, compensate, abort, notify, watch, purge, "
    "orphans.\n\n"
    "Settings come from flags, then SAGA_* environment variables, then the TOML file "
    "(--config or $SAGA_CONFIG), like sagad. Global options may be given before or after "
    "the command. Text output is for people; -o json / -o jsonl print a stable shape for "
    "scripts on stdout (times in ISO-8601 UTC); messages go to stderr. NO_COLOR is honoured."
)

app = typer.Typer(
    name="sagactl",
    cls=Group,
    help=HELP,
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

GLOBAL = "Global options (before or after the command)"


@app.callback()
def global_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML settings file (default: $SAGA_CONFIG).", rich_help_panel=GLOBAL
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="postgresql+asyncpg://… or sqlite+aiosqlite:///… (default: $SAGA_DATABASE_URL).",
            rich_help_panel=GLOBAL,
        ),
    ] = None,
    app_target: Annotated[
        list[str] | None,
        typer.Option(
            "--app",
            help="module:attribute of the application's SagaOrchestrator (or a factory taking "
            "the database URL); needed only to validate `skip --output`.",
            rich_help_panel=GLOBAL,
        ),
    ] = None,
    table: Annotated[
        str | None,
        typer.Option(
            "--table", help="Saga table to work on (default saga_state).", rich_help_panel=GLOBAL
        ),
    ] = None,
    output: Annotated[
        OutputFormat,
        typer.Option("--output", "-o", help="Output format.", rich_help_panel=GLOBAL),
    ] = OutputFormat.TEXT,
    color: Annotated[
        ColorMode,
        typer.Option(
            "--color", help="Colour: auto honours NO_COLOR and terminals.", rich_help_panel=GLOBAL
        ),
    ] = ColorMode.AUTO,
) -> None:
    ctx.obj = Runtime(
        GlobalOptions(
            config=config,
            database_url=database_url,
            app=list(app_target or []),
            table=table,
            output=output,
            color=color,
        )
    )


READ = "Inspect"
REPAIR = "Repair (each needs --reason; asks to confirm unless --yes)"
OPERATE = "Operate"

app.command("list", cls=Command, rich_help_panel=READ)(list_cmd)
app.command("show", cls=Command, rich_help_panel=READ)(show_cmd)
app.command("stats", cls=Command, rich_help_panel=READ)(stats_cmd)
app.command("workers", cls=Command, rich_help_panel=READ)(workers_cmd)
app.command("orphans", cls=Command, rich_help_panel=READ)(orphans_cmd)
app.command("watch", cls=Command, rich_help_panel=READ)(watch_cmd)
app.command("retry", cls=Command, rich_help_panel=REPAIR)(retry_cmd)
app.command("skip", cls=Command, rich_help_panel=REPAIR)(skip_cmd)
app.command("compensate", cls=Command, rich_help_panel=REPAIR)(compensate_cmd)
app.command("abort", cls=Command, rich_help_panel=REPAIR)(abort_cmd)
app.command("notify", cls=Command, rich_help_panel=REPAIR)(notify_cmd)
app.command("purge", cls=Command, rich_help_panel=OPERATE)(purge_cmd)
app.add_typer(db_app, rich_help_panel=OPERATE)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sagactl`` console script."""
    pause_gc()
    route_standard_logging()
    raw = sys.argv[1:] if argv is None else argv
    args = hoist_global_options(raw)
    problem = undecodable(raw)
    if problem is not None:
        fmt = output_format(args)
        output = OutputFormat(fmt) if fmt in OutputFormat._value2member_map_ else OutputFormat.TEXT
        Runtime(GlobalOptions(output=output, color=ColorMode.NEVER)).error(problem, ExitCode.USAGE)
        return int(ExitCode.USAGE)
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name="sagactl", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        if code == 1 and (
            isinstance(exc.__context__, BrokenPipeError)
            or type(sys.stdout).__name__ == "PacifyFlushWrapper"
        ):
            # Help or usage printed to a closed stdout: rich (Console.on_broken_pipe) or
            # click (typer's copy in recent versions) then exit 1. Quiet and 0 instead, as
            # for the output of every command (Runtime.run).
            return 0
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        # The interpreter's last collection at exit walks every object of SQLAlchemy,
        # pydantic and saga_core (a quarter of a second): they need no collecting.
        gc.freeze()
    return 0


if __name__ == "__main__":
    sys.exit(main())
