"""``--peers``: the burn-down's work on DBOS Transact and pgqueuer, side by side with ``sagad``.

The peers are installed (``pip install 'dbos>=3,<4' 'pgqueuer>=1,<2' asyncpg``) into a venv of
their own under the work dir, ``<work-dir>/peers``, never into the project's; it is reused by
later runs. Each peer gets a fresh scratch database (``<bench database>_dbos``,
``<bench database>_pgq``, dropped afterwards).

The workload is the burn-down's: N three-step trivial sagas pre-started in one transaction,
burned down by one worker process with the peer's default settings; PostgreSQL with
synchronous commit on; a durable checkpoint before each next step. The scripts are in
``benchmarks/peer_apps`` (see their docstrings for how each peer is used).

Measured like ``sagad``: seconds from the commit of the seeding transaction to the last
saga's third step, the worker's CPU from ``/proc`` (all its threads) and PostgreSQL's.
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.procs import PgCpu, ms_per, proc_cpu_seconds, proc_peak_rss_mb

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "peer_apps"
REQUIREMENTS = ["dbos>=3,<4", "pgqueuer>=1,<2", "asyncpg"]
PEERS = ("dbos", "pgqueuer")


class PeerError(RuntimeError):
    pass


def peers_python(work_dir: Path) -> str:
    """The peers' venv interpreter, created (once) with the peers installed."""
    venv = work_dir / "peers"
    marker = venv / ".complete"
    want = " ".join(REQUIREMENTS)
    if marker.exists() and marker.read_text().strip() == want:
        return str(venv / "bin" / "python")
    print(f"  installing the peers into {venv} ({want}) ...", flush=True)
    for cmd in (
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *REQUIREMENTS],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise PeerError(
                "--peers: cannot install the peers (" + want + ") into " + str(venv) + ": "
                f"{' '.join(cmd[:4])} ... failed. Without access to the package index for "
                "them the peer comparison cannot run; run without --peers.\n"
                + (out.stderr or out.stdout)[-1500:]
            )
    marker.write_text(want + "\n")
    return str(venv / "bin" / "python")


class _Lines:
    """A process's standard output, line by line, read by a thread of its own (so a wait
    for the next line can time out)."""

    def __init__(self, proc: subprocess.Popen[str], what: str) -> None:
        self.proc, self.what = proc, what
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def next_json(self, timeout: float) -> dict[str, Any]:
        """The next JSON line (other lines, e.g. warnings, are shown and skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise PeerError(f"{self.what}: no answer within {timeout:.0f}s") from None
            if not line:
                raise PeerError(f"{self.what}: exited (code {self.proc.wait()}) without answering")
            if line.startswith("{"):
                return dict(json.loads(line))
            print(f"  [{self.what}] {line.rstrip()}", flush=True)


def _spawn(python: str, script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [python, "-u", str(SCRIPTS / script), *args],
        cwd=SCRIPTS,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> None:
    try:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_peer(
    python: str, script: str, name: str, url: str, database: str, n: int, extra: list[str]
) -> dict[str, Any]:
    """One burn-down of ``n`` sagas on a peer (blocking; run it in a thread)."""
    worker = _spawn(python, script, "work", "--url", url, "--sagas", str(n), *extra)
    seeder: subprocess.Popen[str] | None = None
    try:
        worker_out = _Lines(worker, f"{name} worker")
        ready = worker_out.next_json(120)
        pg = PgCpu(database)
        pg.start()
        cpu0 = proc_cpu_seconds(worker.pid)
        seeder = _spawn(python, script, "seed", "--url", url, "--sagas", str(n), *extra)
        commit = _Lines(seeder, f"{name} seeder").next_json(600)["commit_time"]
        done = worker_out.next_json(max(600, n / 5))
        cpu = proc_cpu_seconds(worker.pid) - cpu0
        pg.stop()
        rss = proc_peak_rss_mb(worker.pid)
    finally:
        if seeder is not None:
            _finish(seeder)
        _finish(worker)
    seconds = done["last_done"] - commit
    return {
        "scenario": "peers",
        "system": name,
        "sagas": done["done"],
        "seconds": round(seconds, 3),
        "sagas_per_s": round(n / seconds, 1),
        "first_step_after_s": round(done["first_step"] - commit, 3),
        "sagas_per_s_from_first_step": round(n / (done["last_done"] - done["first_step"]), 1),
        "worker_cpu_ms_per_saga": ms_per(cpu, n),
        "db_cpu_ms_per_saga": ms_per(pg.own, n),
        "db_cpu_all_ms_per_saga": ms_per(pg.total, n),
        "peak_rss_mb": round(rss, 1),
        "settings": "default",
        "notes": ", ".join(f"{k} {v}" for k, v in ready.items() if k != "ready"),
    }


async def peer_burn_down(
    peer: str, python: str, fresh_db: Any, base_url: str, n: int
) -> list[dict[str, Any]]:
    """Burn-downs on ``peer``: DBOS in both of its modes (sync and async), pgqueuer once."""
    from sqlalchemy.engine import make_url

    runs = [("dbos sync", ["--mode", "sync"]), ("dbos async", ["--mode", "async"])]
    if peer == "pgqueuer":
        runs = [("pgqueuer", [])]
    script = f"{peer}_bench.py"
    suffix = "dbos" if peer == "dbos" else "pgq"
    name = f"{make_url(base_url).database or 'saga_bench'}_{suffix}"
    results = []
    for label, extra in runs:
        url = await fresh_db(make_url(base_url).set(database=name).render_as_string(False))
        plain = url.replace("postgresql+asyncpg://", "postgresql://")
        try:
            r = await asyncio.to_thread(run_peer, python, script, label, plain, name, n, extra)
        except PeerError as exc:
            r = {"scenario": "peers", "system": label, "sagas": n, "error": str(exc)}
        results.append(r)
        print(json.dumps(r), flush=True)
    return results
