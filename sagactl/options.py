"""Option declarations shared by several commands (typer ``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = [
    "MAX_OFFSET",
    "MAX_ROWS",
    "AggregationOpt",
    "DryRunOpt",
    "LimitOpt",
    "NameOpt",
    "ReasonOpt",
    "SinceOpt",
    "StatusOpt",
    "UntilOpt",
    "YesOpt",
]

FILTERS = "Filters"

MAX_ROWS = 1_000_000
"""The most rows one command lists or acts on: beyond it, a typo (and beyond 2**63 the
database would refuse the number anyway)."""
MAX_OFFSET = 10**12

StatusOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        "-s",
        help="Only sagas in this status (repeat or comma-separate: FAILED,SUSPENDED).",
        rich_help_panel=FILTERS,
    ),
]
NameOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--name", "-n", help="Only sagas of this saga name (repeatable).", rich_help_panel=FILTERS
    ),
]
AggregationOpt = Annotated[
    str | None,
    typer.Option(
        "--aggregation-id", "-a", help="Only this aggregation id.", rich_help_panel=FILTERS
    ),
]
SinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Created at or after: a duration back from now (30s, 15m, 2h, 7d) or an ISO-8601 "
        "timestamp (UTC unless it has a zone).",
        rich_help_panel=FILTERS,
    ),
]
UntilOpt = Annotated[
    str | None,
    typer.Option(
        "--until",
        help="Created before: a duration back from now or an ISO-8601 timestamp.",
        rich_help_panel=FILTERS,
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit",
        min=1,
        max=MAX_ROWS,
        help="Act on at most this many matching sagas, oldest first (bulk; default 1000).",
        rich_help_panel=FILTERS,
    ),
]
ReasonOpt = Annotated[
    str | None,
    typer.Option(
        "--reason",
        "-r",
        help="Why (required; recorded in the saga's history with your OS user).",
    ),
]
YesOpt = Annotated[
    bool,
    typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a terminal)."),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be acted on; change nothing.")
]
