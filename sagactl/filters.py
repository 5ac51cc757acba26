"""The saga filters shared by ``list`` and the bulk actions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from saga_core import SagaStatus
from sagactl.errors import CliError
from sagactl.exitcodes import ExitCode
from sagactl.timeparse import TimeArgError, parse_when, resolve_when

__all__ = ["SagaFilters"]


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [part.strip() for v in values for part in v.split(",") if part.strip()]
    return out or None


@dataclass(frozen=True)
class SagaFilters:
    """``--status``, ``--name``, ``--aggregation-id``, ``--since``, ``--until`` (by creation
    time; a duration counts back from the database clock)."""

    statuses: list[str] | None = None
    names: list[str] | None = None
    aggregation_id: str | None = None
    since: timedelta | datetime | None = None
    until: timedelta | datetime | None = None

    @classmethod
    def parse(
        cls,
        *,
        status: list[str] | None,
        name: list[str] | None,
        aggregation_id: str | None,
        since: str | None,
        until: str | None,
    ) -> SagaFilters:
        """Validate the raw options (bad values: a usage error, exit 2)."""
        statuses = _split(status)
        if statuses:
            known = {s.value for s in SagaStatus}
            bad = [s for s in statuses if s.upper() not in known]
            if bad:
                raise CliError(
                    f"unknown status {bad[0]!r}; use one of {', '.join(s.value for s in SagaStatus)}",
                    ExitCode.USAGE,
                )
            statuses = [s.upper() for s in statuses]
        return cls(
            statuses=statuses,
            names=_split(name),
            aggregation_id=aggregation_id,
            since=_when_arg("--since", since),
            until=_when_arg("--until", until),
        )

    @property
    def empty(self) -> bool:
        return not (self.statuses or self.names or self.aggregation_id or self.since or self.until)

    def query(self, now: datetime) -> dict[str, Any]:
        """Keyword arguments for ``SagaAdmin.list_sagas`` / ``count_sagas``."""
        return {
            "status": self.statuses,
            "saga_name": self.names,
            "aggregation_id": self.aggregation_id,
            "created_after": resolve_when(self.since, now),
            "created_before": resolve_when(self.until, now),
        }

    def describe(self) -> str:
        parts = []
        if self.statuses:
            parts.append("status " + "|".join(self.statuses))
        if self.names:
            parts.append("name " + "|".join(self.names))
        if self.aggregation_id:
            parts.append(f"aggregation id {self.aggregation_id}")
        if self.since:
            parts.append(f"since {_when(self.since)}")
        if self.until:
            parts.append(f"until {_when(self.until)}")
        return ", ".join(parts) or "no filter"


def _when_arg(option: str, text: str | None) -> timedelta | datetime | None:
    if not text:
        return None
    try:
        return parse_when(text)
    except TimeArgError as exc:
        raise TimeArgError(f"{option}: {exc}") from None


def _when(value: timedelta | datetime) -> str:
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s ago"
    return value.isoformat()
