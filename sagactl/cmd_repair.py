"""Repair commands: retry, skip, compensate, abort (one saga by id, or in bulk by filters)
and notify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sagactl.errors import CliError
from sagactl.exitcodes import ExitCode
from sagactl.options import (
    AggregationOpt,
    DryRunOpt,
    LimitOpt,
    NameOpt,
    ReasonOpt,
    SinceOpt,
    StatusOpt,
    UntilOpt,
    YesOpt,
)
from sagactl.runtime import Runtime

# The actions and saga_core are imported inside the commands (see ``runtime``).

__all__ = ["abort_cmd", "compensate_cmd", "notify_cmd", "retry_cmd", "skip_cmd"]

IdArg = Annotated[
    str | None,
    typer.Argument(
        help="Saga id or unambiguous prefix; omit it and give filters for a bulk action."
    ),
]


def _dispatch(
    ctx: typer.Context,
    action: str,
    saga_id: str | None,
    raw_filters: dict[str, Any],
    *,
    reason: str | None,
    yes: bool,
    dry_run: bool,
    limit: int | None,
    mock: tuple[str | None, Path | None] = (None, None),
) -> None:
    rt: Runtime = ctx.obj

    async def work() -> int:
        from sagactl.actions import act_one, check_reason, read_json_arg
        from sagactl.bulk import run_bulk
        from sagactl.filters import SagaFilters

        flt = SagaFilters.parse(**raw_filters)
        if saga_id is not None and not flt.empty:
            raise CliError("give a saga ID or filters, not both", ExitCode.USAGE)
        if saga_id is None and flt.empty:
            raise CliError(
                f"give a saga ID, or filters (--status, --name, --aggregation-id, --since, "
                f"--until) to {action} sagas in bulk",
                ExitCode.USAGE,
            )
        why = check_reason(reason, dry_run)
        mock_output = read_json_arg(mock[0], mock[1], "--output") if action == "skip" else None
        async with rt.connect() as s:
            if saga_id is not None:
                return await act_one(
                    rt,
                    s,
                    action,
                    saga_id,
                    reason=why,
                    yes=yes,
                    dry_run=dry_run,
                    mock_output=mock_output,
                )
            return await run_bulk(
                rt,
                s,
                action,
                flt,
                reason=why,
                yes=yes,
                dry_run=dry_run,
                limit=limit,
                mock_output=mock_output,
            )

    rt.run(work)


def retry_cmd(
    ctx: typer.Context,
    saga_id: IdArg = None,
    reason: ReasonOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    status: StatusOpt = None,
    name: NameOpt = None,
    aggregation_id: AggregationOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: LimitOpt = None,
) -> None:
    """Run the failed step (or failed compensation) again now, retry counter reset. Allowed from SUSPENDED and FAILED."""
    f = dict(status=status, name=name, aggregation_id=aggregation_id, since=since, until=until)
    _dispatch(ctx, "retry", saga_id, f, reason=reason, yes=yes, dry_run=dry_run, limit=limit)


def skip_cmd(
    ctx: typer.Context,
    saga_id: IdArg = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            help="The skipped step's output as JSON, validated against its output model "
            "(needs --app). Use -o for the output format after `skip`.",
        ),
    ] = None,
    output_file: Annotated[
        Path | None,
        typer.Option(
            "--output-file", help="Read the step's output JSON from a file (- for stdin)."
        ),
    ] = None,
    reason: ReasonOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    status: StatusOpt = None,
    name: NameOpt = None,
    aggregation_id: AggregationOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: LimitOpt = None,
) -> None:
    """Mark the current step (or compensation) done and continue; a skipped forward step stores the given output and is not compensated later. Allowed from SUSPENDED and FAILED."""
    f = dict(status=status, name=name, aggregation_id=aggregation_id, since=since, until=until)
    _dispatch(
        ctx,
        "skip",
        saga_id,
        f,
        reason=reason,
        yes=yes,
        dry_run=dry_run,
        limit=limit,
        mock=(output, output_file),
    )


def compensate_cmd(
    ctx: typer.Context,
    saga_id: IdArg = None,
    reason: ReasonOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    status: StatusOpt = None,
    name: NameOpt = None,
    aggregation_id: AggregationOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: LimitOpt = None,
) -> None:
    """Start (or resume) the rollback from the newest completed step. Allowed from SUSPENDED, FAILED, and RUNNING when no worker holds it."""
    f = dict(status=status, name=name, aggregation_id=aggregation_id, since=since, until=until)
    _dispatch(ctx, "compensate", saga_id, f, reason=reason, yes=yes, dry_run=dry_run, limit=limit)


def abort_cmd(
    ctx: typer.Context,
    saga_id: IdArg = None,
    reason: ReasonOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    status: StatusOpt = None,
    name: NameOpt = None,
    aggregation_id: AggregationOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: LimitOpt = None,
) -> None:
    """Stop now without rollback (ABORTED); a step still running has its result rejected. Allowed from any status that is not final."""
    f = dict(status=status, name=name, aggregation_id=aggregation_id, since=since, until=until)
    _dispatch(ctx, "abort", saga_id, f, reason=reason, yes=yes, dry_run=dry_run, limit=limit)


def notify_cmd(
    ctx: typer.Context,
    saga_id: Annotated[
        str | None, typer.Argument(help="Saga id or unambiguous prefix (with --token).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", "-t", help="The saga's current token (see `show`)."),
    ] = None,
    aggregation_id: Annotated[
        str | None,
        typer.Option(
            "--aggregation-id",
            "-a",
            help="Deliver by correlation, without SAGA_ID and --token: to the active saga "
            "of this aggregation id (with --event-name).",
        ),
    ] = None,
    event_name: Annotated[
        str | None,
        typer.Option(
            "--event-name",
            help="The name the step waits for (wait_for_event(name=...)); with --aggregation-id.",
        ),
    ] = None,
    event: Annotated[
        str | None, typer.Option("--event", "-e", help="The event, a JSON object.")
    ] = None,
    event_file: Annotated[
        Path | None,
        typer.Option("--event-file", help="Read the event JSON from a file (- for stdin)."),
    ] = None,
    reason: ReasonOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Deliver an event to a SUSPENDED saga: it runs its current step again, seeing the event. By SAGA_ID and --token, or by --aggregation-id and --event-name when the step waits for a named event. Refused (exit 4, recorded in the saga's history) when the token is stale or the saga does not wait for that event."""
    rt: Runtime = ctx.obj

    async def work() -> int:
        from sagactl.actions import (
            check_reason,
            notify_by_correlation,
            notify_one,
            read_json_arg,
        )

        by_token = saga_id is not None or token is not None
        by_name = aggregation_id is not None or event_name is not None
        if by_token == by_name:
            raise CliError(
                "give SAGA_ID with --token, or --aggregation-id with --event-name "
                "(delivery by correlation to a named wait): one of the two",
                ExitCode.USAGE,
            )
        if by_token and (saga_id is None or token is None):
            raise CliError("SAGA_ID and --token go together", ExitCode.USAGE)
        if by_name and (aggregation_id is None or event_name is None):
            raise CliError("--aggregation-id and --event-name go together", ExitCode.USAGE)
        why = check_reason(reason, dry_run)
        data = read_json_arg(event, event_file, "--event")
        async with rt.connect() as s:
            if aggregation_id is not None and event_name is not None:
                return await notify_by_correlation(
                    rt,
                    s,
                    aggregation_id,
                    event_name,
                    event=data,
                    reason=why,
                    yes=yes,
                    dry_run=dry_run,
                )
            assert saga_id is not None and token is not None
            return await notify_one(
                rt, s, saga_id, token=token, event=data, reason=why, yes=yes, dry_run=dry_run
            )

    rt.run(work)
