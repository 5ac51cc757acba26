"""Text output for people: the saga list and the cells it shares with ``show`` and ``watch``
(rich). Every piece of stored text goes into a ``Text`` through ``fmt.lit``/``fmt.clean``,
never into markup."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich import box
from rich.table import Table
from rich.text import Text

from saga_core import SagaStatus
from saga_core.snapshot import SagaSnapshot
from sagactl.fmt import age, lit, relative, short_id, shorten, status_text

__all__ = [
    "ACTIVE_LEASE",
    "attempt_cell",
    "lease_live",
    "saga_table",
    "scheduled",
    "step_cell",
    "worker_cell",
]

ACTIVE_LEASE = (SagaStatus.RUNNING, SagaStatus.COMPENSATING)


def step_cell(s: SagaSnapshot) -> str:
    """``i/n step_id``; ``↩`` marks a step being compensated (the step id made safe)."""
    n = s.total_steps
    if s.current_step_id is None:
        return f"{n}/{n}" if s.status is SagaStatus.COMPLETED else "-"
    arrow = "↩ " if s.phase == "compensate" else ""
    return f"{arrow}{s.current_step_index + 1}/{n} {shorten(s.current_step_id, 40)}"


def attempt_cell(s: SagaSnapshot) -> str:
    """The current (or next) attempt of the current step; for FAILED, the attempts made."""
    if s.status.is_terminal:
        return "-"
    if s.status is SagaStatus.FAILED:
        return str(max(s.retry_counter, 1))
    return str(s.retry_counter + 1)


def lease_live(s: SagaSnapshot, now: datetime) -> bool:
    return (
        s.lease_owner is not None
        and s.status in ACTIVE_LEASE
        and s.deadline_at is not None
        and s.deadline_at > now
    )


def scheduled(s: SagaSnapshot, now: datetime) -> bool:
    """A RUNNING saga no worker holds whose due time is still ahead: a delayed start
    (``start(run_at=...)``), waiting to become due."""
    return (
        s.status is SagaStatus.RUNNING
        and s.lease_owner is None
        and s.deadline_at is not None
        and s.deadline_at > now
    )


def worker_cell(s: SagaSnapshot, now: datetime) -> Text:
    if s.lease_owner is None:
        if scheduled(s, now) and s.deadline_at is not None:
            return Text(f"starts {relative(s.deadline_at, now)}", style="dim")
        return Text("-", style="dim")
    if lease_live(s, now):
        return lit(s.lease_owner)
    return lit(f"{s.lease_owner} (expired)", "yellow")


OPTIONAL_COLUMNS = ("AGE", "WORKER", "ATT", "UPDATED")
"""Dropped in this order when the terminal is too narrow for them and a useful error."""


def saga_table(
    sagas: Sequence[SagaSnapshot], now: datetime, *, width: int = 160, title: str | None = None
) -> Table:
    """The saga list; the last error gets whatever width the other columns leave."""
    cells: dict[str, list[Text]] = {
        "ID": [Text(short_id(s.id)) for s in sagas],
        "NAME": [Text(shorten(s.saga_name, 40)) for s in sagas],
    }
    if any(s.definition_version != 1 for s in sagas):
        # Definition versions in use: the one each saga runs with (see `sagactl orphans`).
        cells["VER"] = [Text(f"v{s.definition_version}") for s in sagas]
    cells.update(
        {
            "STATUS": [status_text(s.status) for s in sagas],
            "STEP": [Text(step_cell(s)) for s in sagas],
            "ATT": [Text(attempt_cell(s)) for s in sagas],
            "AGE": [Text(age(s.created_at, now)) for s in sagas],
            "UPDATED": [Text(f"{age(s.updated_at, now)} ago") for s in sagas],
            "WORKER": [worker_cell(s, now) for s in sagas],
        }
    )

    def used() -> int:  # each column costs its text plus 3 (padding and separator)
        return sum(max([len(h), *(c.cell_len for c in col)]) + 3 for h, col in cells.items())

    for optional in OPTIONAL_COLUMNS:
        if width - used() >= 28:
            break
        del cells[optional]
    budget = max(12, width - used() - 4)
    table = Table(
        box=box.SIMPLE_HEAD,
        title=Text(title) if title else None,
        title_justify="left",
        pad_edge=False,
    )
    for h in cells:
        justify = "right" if h in ("ATT", "AGE", "UPDATED") else "left"
        table.add_column(h, no_wrap=True, justify=justify, style="bold" if h == "ID" else None)  # type: ignore[arg-type]
    table.add_column("LAST ERROR", style="red", no_wrap=True, overflow="ellipsis")
    for i, s in enumerate(sagas):
        table.add_row(*(col[i] for col in cells.values()), Text(shorten(s.last_error, budget)))
    return table
