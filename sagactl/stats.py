"""Gathering the figures of ``stats`` and ``watch`` (one read each; no locks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from saga_core import SagaAdmin, SagaStatus
from saga_core.snapshot import OrphanGroup, SagaSnapshot, WorkerRow
from sagactl.errors import classify
from sagactl.exitcodes import ExitCode
from sagactl.runtime import Session

__all__ = ["Dashboard", "Stats", "WorkerView", "gather_dashboard", "gather_stats", "workers_view"]


@dataclass(frozen=True)
class Stats:
    at: datetime
    """The database clock when read."""
    counts: list[tuple[str, str, int]]
    """(saga_name, status, count) for every pair present."""
    due_now: int
    oldest_due: datetime | None
    window: timedelta
    finished: list[tuple[str, str, int]]
    """(saga_name, status, count) of sagas that finished within ``window``."""
    orphans: list[OrphanGroup] | None = None
    """Active sagas of a (name, version) no live worker runs, when live workers are
    registered at all (``None``: none are, or the registry could not be read)."""

    @property
    def orphaned(self) -> int:
        return sum(g.count for g in self.orphans or [])

    @property
    def names(self) -> list[str]:
        return sorted({n for n, _, _ in self.counts})

    def count(self, name: str | None, status: str | None) -> int:
        return sum(
            c
            for n, s, c in self.counts
            if (name is None or n == name) and (status is None or s == status)
        )

    @property
    def finished_total(self) -> int:
        return sum(c for _, _, c in self.finished)

    @property
    def per_minute(self) -> float:
        minutes = self.window.total_seconds() / 60
        return self.finished_total / minutes if minutes > 0 else 0.0


@dataclass(frozen=True)
class WorkerView:
    row: WorkerRow
    state: str
    """``live``, ``stale`` (no heartbeat for ``worker_stale_after``) or ``stopped``."""
    heartbeat_age: timedelta


@dataclass(frozen=True)
class Dashboard:
    stats: Stats
    workers: list[WorkerView]
    failures: list[SagaSnapshot]
    notes: list[str] = field(default_factory=list)


async def gather_stats(
    admin: SagaAdmin[Any], now: datetime, window: timedelta, stale_after: float | None = None
) -> Stats:
    counts = await admin.stats()
    due, oldest = await admin.due_summary()
    finished = await admin.finished_since(now - window)
    orphans = None if stale_after is None else await _orphans(admin, now, stale_after)
    return Stats(now, counts, due, oldest, window, sorted(finished), orphans)


async def _orphans(
    admin: SagaAdmin[Any], now: datetime, stale_after: float
) -> list[OrphanGroup] | None:
    """The orphan groups when at least one live worker is registered: without any (sagas run
    by in-process orchestrators, or no sagad yet) every active saga would be listed."""
    try:
        live = [
            v.row
            for v in workers_view(await admin.workers(), now, stale_after)
            if v.state == "live"
        ]
    except Exception as exc:  # a schema without the registry still shows the rest
        code, _ = classify(exc)
        if code is ExitCode.UNREACHABLE:
            raise
        return None
    if not live:
        return None
    return await admin.orphans(stale_after=stale_after)


def workers_view(rows: list[WorkerRow], now: datetime, stale_after: float) -> list[WorkerView]:
    out = []
    for w in rows:
        age = now - w.heartbeat_at
        if w.stopped_at is not None:
            state = "stopped"
        elif age.total_seconds() > stale_after:
            state = "stale"
        else:
            state = "live"
        out.append(WorkerView(w, state, age))
    order = {"live": 0, "stale": 1, "stopped": 2}
    return sorted(out, key=lambda v: (order[v.state], v.row.id))


async def gather_dashboard(s: Session, window: timedelta, failures: int = 8) -> Dashboard:
    now = await s.now()
    stats = await gather_stats(s.admin, now, window, s.settings.worker_stale_after)
    notes: list[str] = []
    try:
        workers = workers_view(await s.admin.workers(), now, s.settings.worker_stale_after)
    except Exception as exc:  # a schema without the registry still shows the rest
        code, message = classify(exc)
        if code is ExitCode.UNREACHABLE:
            raise
        workers = []
        notes.append(f"workers unavailable: {message}")
    # The newest failures by last update: sample the newest FAILED sagas, then sort.
    sample = await s.admin.list_sagas(status=[SagaStatus.FAILED], limit=max(50, failures))
    latest = sorted(sample, key=lambda x: x.updated_at, reverse=True)[:failures]
    return Dashboard(stats, workers, latest, notes)
