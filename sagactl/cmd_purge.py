"""``sagactl purge``: delete finished sagas older than an age, in small batches."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from sagactl.errors import CliError
from sagactl.exitcodes import ExitCode
from sagactl.options import MAX_ROWS, DryRunOpt, ReasonOpt, YesOpt
from sagactl.runtime import Runtime
from sagactl.timeparse import TimeArgError, parse_duration

__all__ = ["purge_cmd"]

# saga_core is imported inside the command (see ``runtime``).
PURGE_BATCH = 500
"""``SagaAdmin.DEFAULT_PURGE_BATCH``, written out so --help needs no saga_core (a test checks
they agree)."""


def _final() -> list[str]:
    from saga_core import SagaStatus

    return [s.value for s in SagaStatus if s.is_terminal]


def _statuses(values: list[str] | None) -> list[str]:
    final = _final()
    chosen = [p.strip().upper() for v in values or [] for p in v.split(",") if p.strip()]
    bad = [s for s in chosen if s not in final]
    if bad:
        raise CliError(
            f"cannot purge status {bad[0]!r}: only finished sagas are deleted "
            f"({', '.join(final)}); active and FAILED sagas never are",
            ExitCode.USAGE,
        )
    return chosen or final


def purge_cmd(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="Delete sagas that finished longer ago than this (30s, 15m, 2h, 30d), by the "
            "database clock.",
        ),
    ],
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            "-s",
            help="Only these final statuses (repeat or comma-separate; default: COMPLETED, "
            "COMPENSATED, ABORTED).",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=MAX_ROWS, help="Rows deleted per transaction.")
    ] = PURGE_BATCH,
    reason: ReasonOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Delete finished sagas (COMPLETED, COMPENSATED, ABORTED) older than --older-than, in small batches. Active and FAILED sagas are never deleted."""
    rt: Runtime = ctx.obj

    async def work() -> int:
        from sagactl.actions import check_reason
        from sagactl.confirm import confirm

        try:
            age = parse_duration(older_than)
        except TimeArgError as exc:
            raise CliError(f"--older-than: {exc}", ExitCode.USAGE) from None
        statuses = _statuses(status)
        why = check_reason(reason, dry_run)
        async with rt.connect() as s:
            matched = await s.admin.purge(age, statuses=statuses, dry_run=True)
            result: dict[str, Any] = {
                "action": "purge",
                "dry_run": dry_run,
                "statuses": statuses,
                "older_than_s": age.total_seconds(),
                "matched": matched,
            }
            what = f"{'|'.join(statuses)} sagas finished more than {older_than} ago"
            if dry_run:
                if rt.text:
                    rt.out.print(f"dry run: would delete {matched} {what}; nothing changed")
                else:
                    rt.emit(result)
                return 0
            deleted = 0
            if matched:
                rt.info(f"purge: {matched} {what} in {s.orchestrator.engine.table_name}")
                confirm(rt, f"Delete {matched} saga(s) for good?", yes=yes)
                deleted = await s.admin.purge(age, statuses=statuses, batch_size=batch_size)
            if rt.text:
                rt.out.print(Text.assemble(("✔", "green"), f" deleted {deleted} {what}"))
            else:
                rt.emit({**result, "deleted": deleted, "actor": s.admin.actor, "reason": why})
        return 0

    rt.run(work)
