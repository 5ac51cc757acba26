"""The benchmark suite: ``python -m benchmarks --help``.

Scenarios (each sets up its own database and tables):

- burn-down: N three-step sagas pre-started in one transaction, drained by W ``sagad``
  processes (W = 1, 2, 4), each with sagad's default settings (no tuning flag) and with the
  tuned ``--concurrency``/``--batch-size``: sagas/s, steps/s, database commits per saga,
  p50/p99 start-to-completion latency, CPU per saga of the workers and of PostgreSQL (the
  part serving the benchmark's database; ``db_cpu_all``: the whole server), peak RSS;
- open loop: sagas started at fractions of the burn-down peak by a separate, niced starter
  process on a pre-computed schedule: p50/p99 from ``start`` to the first step and to
  completion, and how late the starter itself was;
- table size: the cost of a claim with 1,000,000 finished sagas in the table versus none;
- memory: 10,000 sagas in flight (steps awaiting a sleep) in one worker: peak RSS;
- sqlite: the embedded default, one process;
- baseline (``--baseline REV``): the burn-down of one sagad with the code of git revision
  REV and with the current code, back to back, and the ratios;
- peers (``--peers``): the burn-down's work on DBOS Transact and pgqueuer (installed into a
  venv of their own under ``--work-dir``), side by side with one sagad with default settings.

Figures are printed as a table and written as JSON. Nothing here is a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.compare import baseline_comparison, peer_comparison
from benchmarks.harness import fresh_pg_database, sagad_flags
from benchmarks.peers import PEERS, PeerError, peers_python
from benchmarks.revisions import ROOT, CodeError, current_code, resolve
from benchmarks.scenarios import burn_down, claim_cost, memory, open_loop, sqlite_burn_down

SCENARIOS = ("burn-down", "open-loop", "table-size", "memory", "sqlite", "baseline", "peers")
SETTINGS = ("default", "tuned")


def _show(r: dict[str, Any]) -> None:
    print(json.dumps(r), flush=True)


def render(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 160))
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_kind.setdefault(r["scenario"], []).append(r)
    for kind, rows in by_kind.items():
        table = Table(title=kind)
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k != "scenario" and k not in keys]
        for k in keys:
            table.add_column(k, justify="right")
        for r in rows:
            table.add_row(*(str(r.get(k, "")) for k in keys))
        console.print(table)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    want = set(args.only)
    work_dir: Path = args.work_dir
    current = current_code(work_dir)

    def keep(r: dict[str, Any]) -> None:
        results.append(r)
        _show(r)

    if "baseline" in want:
        resolve(args.baseline)  # a wrong revision fails now, not after the other scenarios
    peers_py = peers_python(work_dir) if "peers" in want else ""
    url = args.database_url
    if want - {"sqlite"}:
        url = await fresh_pg_database(url)
    peak = args.peak
    if "burn-down" in want:
        for w in args.workers:
            for settings in args.settings:
                flags = sagad_flags(settings, args.concurrency, args.batch_size)
                r = await burn_down(url, current, args.sagas, w, settings, flags)
                keep(r)
                peak = max(peak, r["sagas_per_s"])
    if "baseline" in want:
        results += await baseline_comparison(
            url,
            args.baseline,
            work_dir,
            current,
            args.sagas,
            args.settings,
            args.concurrency,
            args.batch_size,
            args.baseline_rounds,
        )
    if "peers" in want:
        results += await peer_comparison(url, peers_py, current, args.peer_sagas, args.peers)
    if "open-loop" in want:
        if not peak:
            raise SystemExit("the open loop needs a peak: run the burn-down too, or give --peak")
        settings = args.open_loop_settings
        flags = sagad_flags(settings, args.concurrency, args.batch_size)
        for frac in args.open_loop_fractions:
            r = await open_loop(
                url,
                current,
                round(peak * frac),
                args.open_loop_seconds,
                settings,
                flags,
                args.starter_nice,
                args.pin,
            )
            r["fraction_of_peak"] = frac
            keep(r)
    if "table-size" in want:
        await fresh_pg_database(url)
        for rows in (0, args.finished_rows):
            keep(await claim_cost(url, rows))
    if "memory" in want:
        await fresh_pg_database(url)
        keep(await memory(url, current, args.memory_sagas))
    if "sqlite" in want:
        for settings in args.settings:
            flags = sagad_flags(settings, args.concurrency, args.batch_size)
            keep(await sqlite_burn_down(current, args.sqlite_sagas, settings, flags))
    return results


def _list(kind: type, allowed: tuple[str, ...] = ()) -> Any:
    def parse(s: str) -> list[Any]:
        items = [kind(x.strip()) for x in s.split(",") if x.strip()]
        bad = [x for x in items if allowed and x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(allowed) or kind.__name__}"
            )
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/saga_bench"
        ),
        help="PostgreSQL URL; its database is DROPPED and re-created (the peers use "
        "<database>_dbos and <database>_pgq the same way)",
    )
    p.add_argument("--sagas", type=int, default=20000, help="sagas per burn-down")
    p.add_argument("--workers", type=_list(int), default=[1, 2, 4], help="e.g. 1,2,4")
    p.add_argument(
        "--settings",
        type=_list(str, SETTINGS),
        default=list(SETTINGS),
        help="sagad settings to burn down with: default (no tuning flag), tuned "
        "(--concurrency/--batch-size below), or both (the default)",
    )
    p.add_argument("--concurrency", type=int, default=1024, help="the tuned --concurrency")
    p.add_argument("--batch-size", type=int, default=256, help="the tuned --batch-size")
    p.add_argument(
        "--only",
        type=_list(str, SCENARIOS),
        help=f"run only these scenarios ({', '.join(SCENARIOS)})",
    )
    p.add_argument("--baseline", metavar="REV", help="compare with git revision REV (e.g. ed38817)")
    p.add_argument("--baseline-rounds", type=int, default=1, help="baseline/current pairs")
    p.add_argument(
        "--peers",
        nargs="?",
        const=",".join(PEERS),
        type=_list(str, PEERS),
        help="compare with DBOS Transact and pgqueuer (or a comma-separated subset)",
    )
    p.add_argument(
        "--peer-sagas", type=int, default=2000, help="sagas per peer burn-down (default 2000)"
    )
    p.add_argument("--open-loop-seconds", type=float, default=10.0)
    p.add_argument("--open-loop-fractions", type=_list(float), default=[0.25, 0.5, 0.75, 0.9])
    p.add_argument("--open-loop-settings", choices=SETTINGS, default="tuned")
    p.add_argument("--starter-nice", type=int, default=10, help="niceness of the starter")
    p.add_argument(
        "--pin",
        action="store_true",
        help="open loop: pin the worker to CPU 0 and the starter to the last CPU",
    )
    p.add_argument(
        "--peak",
        type=float,
        default=0.0,
        help="burn-down peak (sagas/s) for the open loop when burn-down is skipped",
    )
    p.add_argument("--finished-rows", type=int, default=1_000_000)
    p.add_argument("--memory-sagas", type=int, default=10_000)
    p.add_argument("--sqlite-sagas", type=int, default=5000)
    p.add_argument("--sqlite-only", action="store_true")
    for name in ("burn-down", "open-loop", "table-size", "memory", "sqlite"):
        p.add_argument(f"--skip-{name}", action="store_true")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=ROOT / ".bench",
        help="cached venvs (baseline revisions, peers) and app copies (default .bench/)",
    )
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = p.parse_args(argv)
    classic = ["burn-down", "open-loop", "table-size", "memory", "sqlite"]
    if args.only is None:
        args.only = [s for s in classic if not getattr(args, f"skip_{s.replace('-', '_')}")]
        args.only += ["baseline"] if args.baseline else []
        args.only += ["peers"] if args.peers else []
    if args.sqlite_only:
        args.only = ["sqlite"]
    if "baseline" in args.only and not args.baseline:
        p.error("--only baseline needs --baseline REV")
    if "peers" in args.only and not args.peers:
        args.peers = list(PEERS)
    for name in ("sagas", "peer_sagas", "baseline_rounds", "sqlite_sagas"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        results = asyncio.run(main_async(args))
    except (PeerError, CodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    render(results)
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
