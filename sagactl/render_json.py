"""The JSON shapes of ``-o json`` / ``-o jsonl`` (documented in docs/sagactl.md; keep them
stable: add fields, never rename or remove). Times are ISO-8601 UTC strings ending in ``Z``."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from saga_core.snapshot import OrphanGroup, SagaSnapshot
from sagactl.runtime import iso, to_json

if TYPE_CHECKING:
    from sagactl.stats import Dashboard, Stats, WorkerView

__all__ = [
    "dashboard_json",
    "history_json",
    "json_text",
    "orphan_json",
    "saga_json",
    "stats_json",
    "worker_json",
]

_TIME_KEY = re.compile(r"(?:^at|_at|since)$")
"""History fields holding a time: ``at``, ``last_at``, ``waiting_since``, ..."""


def _iso_text(value: Any) -> Any:
    """A stored ISO-8601 time string in sagactl's form (UTC, ``Z``); anything else as is."""
    if not isinstance(value, str) or len(value) < 19 or value[10:11] != "T":
        return value
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return value
    return iso(when) if when.tzinfo is not None else value


def history_json(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History entries with their time fields written like every JSON time of sagactl
    (saga_core stores ``+00:00``); payloads (input, output, event) are left alone."""
    return [
        {k: _iso_text(v) if _TIME_KEY.search(k) else v for k, v in e.items()}
        if isinstance(e, dict)
        else e
        for e in history
    ]


def json_text(value: Any, *, indent: int | None = None) -> str:
    """``value`` as sagactl writes JSON (see ``runtime.to_json``)."""
    return to_json(value, indent=indent)


def saga_json(s: SagaSnapshot) -> dict[str, Any]:
    """Every field of the snapshot (``SagaAdminSnapshot`` adds context, steps_state and
    step_history). Times are ISO-8601 UTC ending in ``Z``, in the history too."""
    data = s.model_dump(mode="json")
    for key in ("deadline_at", "created_at", "updated_at", "finished_at"):
        data[key] = iso(getattr(s, key))
    if isinstance(data.get("step_history"), list):
        data["step_history"] = history_json(data["step_history"])
    return data


def _triples(rows: list[tuple[str, str, int]]) -> list[dict[str, Any]]:
    return [{"saga_name": n, "status": s, "count": c} for n, s, c in rows]


def stats_json(st: Stats) -> dict[str, Any]:
    totals: dict[str, int] = {}
    for _, s, c in st.counts:
        totals[s] = totals.get(s, 0) + c
    finished: dict[str, int] = {}
    for _, s, c in st.finished:
        finished[s] = finished.get(s, 0) + c
    return {
        "at": iso(st.at),
        "counts": _triples(st.counts),
        "totals": totals,
        "total": sum(totals.values()),
        "due_now": st.due_now,
        "oldest_due_at": iso(st.oldest_due),
        "oldest_due_wait_s": (
            round((st.at - st.oldest_due).total_seconds(), 3) if st.oldest_due else None
        ),
        "throughput": {
            "window_s": st.window.total_seconds(),
            "finished": _triples(st.finished),
            "finished_by_status": finished,
            "finished_total": st.finished_total,
            "per_minute": round(st.per_minute, 3),
        },
        "orphaned": None if st.orphans is None else st.orphaned,
        "orphans": None if st.orphans is None else [orphan_json(g) for g in st.orphans],
    }


def orphan_json(g: OrphanGroup, ids: list[str] | None = None) -> dict[str, Any]:
    """One (name, version) group of ``sagactl orphans``; ``ids`` only with ``--ids``."""
    data: dict[str, Any] = {
        "saga_name": g.saga_name,
        "definition_version": g.definition_version,
        "count": g.count,
        "oldest_created_at": iso(g.oldest_created_at),
        "live_versions": list(g.live_versions),
    }
    if ids is not None:
        data["ids"] = ids
    return data


def worker_json(v: WorkerView) -> dict[str, Any]:
    w = v.row
    return {
        "id": w.id,
        "host": w.host,
        "pid": w.pid,
        "version": w.version,
        "state": v.state,
        "started_at": iso(w.started_at),
        "heartbeat_at": iso(w.heartbeat_at),
        "heartbeat_age_s": round(v.heartbeat_age.total_seconds(), 3),
        "stopped_at": iso(w.stopped_at),
        "in_flight": w.in_flight,
        "concurrency": w.concurrency,
        "saga_names": list(w.saga_names),
        "saga_versions": w.saga_versions,
        "info": w.info,
    }


def dashboard_json(d: Dashboard) -> dict[str, Any]:
    return {
        "stats": stats_json(d.stats),
        "workers": [worker_json(w) for w in d.workers],
        "failures": [saga_json(s) for s in d.failures],
        "notes": d.notes,
    }
