"""Comparisons run back to back in one invocation: the current code against a git revision
(``--baseline REV``), and ``sagad`` against DBOS Transact and pgqueuer (``--peers``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from benchmarks.harness import database_name, drop_pg_database, fresh_pg_database, sagad_flags
from benchmarks.peers import peer_burn_down
from benchmarks.revisions import Code, revision_code
from benchmarks.scenarios import burn_down

# Figures compared, with the name they get in the summary.
COMPARED = {
    "sagas_per_s": "sagas_per_s",
    "worker_cpu_ms_per_saga": "worker_cpu_ms",
    "db_cpu_ms_per_saga": "db_cpu_ms",
}


def _show(r: dict[str, Any]) -> None:
    print(json.dumps(r), flush=True)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


async def baseline_comparison(
    url: str,
    rev: str,
    work_dir: Path,
    current: Code,
    n: int,
    settings_list: list[str],
    concurrency: int,
    batch_size: int,
    rounds: int,
) -> list[dict[str, Any]]:
    """Burn-downs of one sagad, the revision's and the current one back to back (per round
    the order alternates, the baseline first in the first), for each of ``settings_list``.
    Returns the runs and, per settings, the medians and the ratios current / baseline."""
    results: list[dict[str, Any]] = []
    with revision_code(rev, work_dir) as base:
        for code in (base, current):
            _show({"code": code.label, **code.describe()})
        for settings in settings_list:
            flags = sagad_flags(settings, concurrency, batch_size)
            runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "current": []}
            for r in range(rounds):
                order = [("baseline", base), ("current", current)]
                for side, code in order if r % 2 == 0 else order[::-1]:
                    x = await burn_down(url, code, n, 1, settings, flags)
                    x.update(scenario="baseline runs", round=r + 1)
                    _show(x)
                    results.append(x)
                    runs[side].append(x)
            summary: dict[str, Any] = {
                "scenario": "baseline",
                "baseline": f"{rev} ({base.commit[:9]})",
                "current": current.label,
                "settings": settings,
                "sagas": n,
                "rounds": rounds,
            }
            for key, name in COMPARED.items():
                b = statistics.median(x[key] for x in runs["baseline"])
                c = statistics.median(x[key] for x in runs["current"])
                summary[f"baseline_{name}"] = b
                summary[f"current_{name}"] = c
                summary[f"{name}_ratio"] = _ratio(c, b)
            _show(summary)
            results.append(summary)
    return results


async def peer_comparison(
    url: str, peers_python: str, current: Code, n: int, peers: list[str]
) -> list[dict[str, Any]]:
    """One sagad with default settings, then each peer, on the same burn-down of ``n``."""
    sagad = await burn_down(url, current, n, 1, "default", [])
    rows = [
        {
            "scenario": "peers",
            "system": "sagad (default settings)",
            **{k: sagad[k] for k in ("sagas", "seconds", "sagas_per_s")},
            "first_step_after_s": None,
            "sagas_per_s_from_first_step": None,
            **{
                k: sagad[k]
                for k in (
                    "worker_cpu_ms_per_saga",
                    "db_cpu_ms_per_saga",
                    "db_cpu_all_ms_per_saga",
                    "peak_rss_mb",
                )
            },
        }
    ]
    _show(rows[0])
    base = database_name(url) or "saga_bench"
    for peer in peers:
        rows += await peer_burn_down(peer, peers_python, fresh_pg_database, url, n)
        suffix = "dbos" if peer == "dbos" else "pgq"
        await drop_pg_database(
            make_url(url).set(database=f"{base}_{suffix}").render_as_string(hide_password=False)
        )
    ours = rows[0]["sagas_per_s"]
    for r in rows:
        r["sagad_speedup"] = _ratio(ours, r.get("sagas_per_s"))
    for prefix in ("dbos",):
        done = [r for r in rows if r["system"].startswith(prefix) and "sagas_per_s" in r]
        if done:
            best = max(done, key=lambda r: r["sagas_per_s"])
            rows.append({**best, "system": f"{prefix} (best of sync/async: {best['system']})"})
    return rows
