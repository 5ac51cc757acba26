"""``sagactl db upgrade`` and ``sagactl db status``."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from sagactl.exitcodes import ExitCode
from sagactl.helpfmt import Command, Group
from sagactl.runtime import Runtime, Session

# saga_core and the rendering are imported when a command runs (see ``runtime``).

__all__ = ["db_app"]

db_app = typer.Typer(
    name="db",
    cls=Group,
    help="Create or upgrade the schema, or check it.",
    no_args_is_help=True,
)


def _orchestrators(s: Session) -> list[Any]:
    """The tables to manage: every ``--app`` orchestrator's, or the ``--table`` one."""
    return list(s.orchestrators) or [s.orchestrator]


async def _status(s: Session) -> dict[str, Any]:
    from saga_core import schema_status

    merged: dict[str, Any] = {"expected_version": None, "tables": {}, "up_to_date": True}
    for o in _orchestrators(s):
        report = await schema_status(o.engine.sql_engine, [o.engine.model_class])
        merged["expected_version"] = report["expected_version"]
        merged["tables"].update(report["tables"])
        merged["up_to_date"] = merged["up_to_date"] and report["up_to_date"]
    return merged


def _emit(rt: Runtime, s: Session, report: dict[str, Any], changes: list[str] | None) -> None:
    from saga_core.settings import mask_url
    from sagactl.render_dash import db_report

    if rt.text:
        rt.info(f"database {mask_url(s.settings.database_url)}")
        rt.out.print(db_report(report, changes=changes))
        return
    data: dict[str, Any] = {"database_url": mask_url(s.settings.database_url), **report}
    if changes is not None:
        data = {"changes": changes, **data}
    rt.emit(data)


async def _sql(s: Session) -> list[str]:
    """What an upgrade would run now, every orchestrator's table (the registry once)."""
    from saga_core import upgrade_schema_sql

    statements: list[str] = []
    for o in _orchestrators(s):
        for stmt in await upgrade_schema_sql(o.engine.sql_engine, [o.engine.model_class]):
            if stmt not in statements:
                statements.append(stmt)
    return statements


@db_app.command("upgrade", cls=Command)
def upgrade_cmd(
    ctx: typer.Context,
    sql: Annotated[
        bool,
        typer.Option(
            "--sql",
            help="Print the SQL the upgrade would run (one transaction, with its lock) "
            "instead of running it, for a DBA to review. Changes nothing.",
        ),
    ] = False,
) -> None:
    """Create or upgrade the saga table(s) and the worker registry (idempotent, safe to run concurrently; run it on every deploy). With --app: every table of the application's orchestrators."""
    rt: Runtime = ctx.obj

    async def work() -> int:
        from saga_core import upgrade_script
        from saga_core.settings import mask_url

        async with rt.connect() as s:
            if sql:
                statements = await _sql(s)
                if rt.text:
                    dialect = s.orchestrator.engine.sql_engine.dialect.name
                    sys.stdout.write(upgrade_script(dialect, statements))
                else:
                    rt.emit(
                        {
                            "database_url": mask_url(s.settings.database_url),
                            "statements": statements,
                        }
                    )
                return 0
            changes: list[str] = []
            for o in _orchestrators(s):
                changes.extend(c for c in await o.create_tables() if c not in changes)
            report = await _status(s)
            _emit(rt, s, report, changes)
        return 0 if report["up_to_date"] else int(ExitCode.ERROR)

    rt.run(work)


@db_app.command("status", cls=Command)
def status_cmd(ctx: typer.Context) -> None:
    """Report whether the database matches the installed schema version (exit 1 when it needs `sagactl db upgrade`)."""
    rt: Runtime = ctx.obj

    async def work() -> int:
        async with rt.connect() as s:
            report = await _status(s)
            _emit(rt, s, report, None)
        return 0 if report["up_to_date"] else int(ExitCode.ERROR)

    rt.run(work)
